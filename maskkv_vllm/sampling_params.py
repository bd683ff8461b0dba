"""Per-request diffusion sampling parameters (frozen, validated at construction)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class SamplingParams:
    """How one request is denoised (LLaDA ``generate.py`` semantics)."""

    gen_length: int = 128
    """Canvas length: number of ``[MASK]`` slots after the prompt."""
    block_length: int = 32
    """Semi-autoregressive block size; ``gen_length`` must be a multiple of it."""
    steps: int = 128
    """Denoising steps over the whole canvas, split evenly over the blocks."""
    temperature: float = 0.0
    """0 is greedy; > 0 samples with float64 Gumbel noise."""
    cfg_scale: float = 0.0
    """Classifier-free guidance scale; > 0 runs a prompt-masked branch too."""
    remasking: str = "low_confidence"
    """What ranks positions: "low_confidence" (model probability) or "random"."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding: commit every masked block position whose confidence
    exceeds this (at least one per step); the step schedule is then not used."""
    logits_eos_inf: bool = False
    """Forbid EOS as a candidate (upstream's HumanEval setting)."""
    seed: int = 0
    """Seed of this request's own random stream (Gumbel noise, random remasking)."""
    kv_policy: str | None = None
    """Prompt-KV eviction policy ("full", "maskkv", "snapkv", ...; see
    ``maskkv_vllm.eviction.registry``); None takes the engine's default ("full" in
    the bare sampler). Anything but "full" needs the paged cache."""
    kv_budget: int | None = None
    """Average prompt KV entries kept per head per layer (the paper's B); every
    evicting policy needs one (None takes the engine's default); "full" ignores it."""

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("gen_length", "block_length", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.gen_length % self.block_length:
            raise ValueError(
                f"gen_length={self.gen_length} is not a multiple of "
                f"block_length={self.block_length}"
            )
        if self.steps > self.gen_length:
            raise ValueError(
                f"steps={self.steps} exceeds gen_length={self.gen_length}: each "
                "step unmasks at least one token"
            )
        if self.steps % self.num_blocks:
            raise ValueError(
                f"steps={self.steps} is not divisible by the number of blocks "
                f"({self.num_blocks} = gen_length {self.gen_length} / block_length "
                f"{self.block_length})"
            )
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature={self.temperature} must be >= 0 and finite")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 0")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} is not one of {REMASKING}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1]")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed={self.seed} must lie in [0, 2**64)")
        self._check_kv()

    def _check_types(self) -> None:
        """A wrong type is named with its field, before any comparison trips on it."""
        number = (int, float)
        for name, kinds, what in (
            ("temperature", number, "a number"),
            ("cfg_scale", number, "a number"),
            ("threshold", (*number, type(None)), "a number or null"),
            ("remasking", str, "a string"),
            ("logits_eos_inf", bool, "a boolean"),
            ("kv_policy", (str, type(None)), "a string or null"),
        ):
            value = getattr(self, name)
            is_bool = isinstance(value, bool) and kinds is not bool
            if not isinstance(value, kinds) or is_bool:
                raise ValueError(f"{name}={value!r:.80} must be {what}")

    def _check_kv(self) -> None:
        from maskkv_vllm.eviction.registry import check_policy_name

        if self.kv_policy is not None:
            check_policy_name(self.kv_policy)
        budget = self.kv_budget
        if budget is not None and (
            not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0
        ):
            raise ValueError(f"kv_budget={budget!r} must be a positive integer")

    def with_kv_defaults(
        self, policy: str | None, budget: int | None
    ) -> SamplingParams:
        """These params with the engine's policy/budget where they leave them unset
        (the engine's budget only where the policy evicts: it is the default of
        requests that choose an evicting policy)."""
        chosen = self.kv_policy or policy
        if self.kv_budget is not None:
            budget = self.kv_budget
        elif not _evicts(chosen):
            budget = None
        return dataclasses.replace(self, kv_policy=chosen, kv_budget=budget)

    @property
    def evicts(self) -> bool:
        return _evicts(self.kv_policy)

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


def _evicts(name: str | None) -> bool:
    # Lazy: the policies import torch, SamplingParams need not.
    from maskkv_vllm.eviction.registry import policy_evicts

    return policy_evicts(name)
