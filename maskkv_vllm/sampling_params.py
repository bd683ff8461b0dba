"""Per-request diffusion sampling parameters (frozen, validated at construction).

``SamplingParams`` is the one table of sampling options: ``SAMPLING_OPTIONS`` reads
its fields (name, default, type, docstring) and the front ends are built from it:
the ``maskkv generate`` flags (``cli.sampling.add_sampling_args``), the OpenAI body
fields (``openai_api.options``) and vLLM's ``maskkv_*`` request keys
(``vllm_adapter.params``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

REMASKING = (
    "low_confidence",
    "random",
    "maskgit_plus",
    "topk_margin",
    "entropy",
    "origin",
    "fast_dllm_block",
)
"""LLaDA's rules, then Dream's (``sampler.dream_rules``: its confidences and
step schedule), then Fast-dLLM's block-wise variant of Dream's sampler."""
CANVAS_CACHES = ("none", "dual", "dual_refresh", "adaptive")


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
    remasking: str = field(default="low_confidence", metadata={"choices": REMASKING})
    """What ranks positions: "low_confidence" (model probability) or "random"
    (LLaDA's, with its even schedule), or Dream's "maskgit_plus" (the candidate's
    probability), "topk_margin" (top-1 minus top-2) or "entropy" (negative
    entropy), which commit on Dream's schedule (``int(masked * (1 - s / t))`` a
    step), or Dream's "origin" (each masked position with probability
    ``1 - s / t``, drawn from the request's seeded stream), or
    "fast_dllm_block" (Fast-dLLM's block-wise Dream sampler: a block's first
    step commits its first slot, the others "entropy" on Dream's schedule from
    its second timestep; at least 2 steps per block)."""
    top_p: float = 1.0
    """Nucleus sampling: a slot's candidate comes from its most probable tokens
    up to cumulative probability top_p (1 is off); Dream's rules read their
    confidences from that filtered distribution, as Dream does."""
    top_k: int = 0
    """A slot's candidate comes from its top_k most probable tokens (0 or -1 is
    off), applied after top_p, as Dream does."""
    alg_temp: float = 0.0
    """Dream's rules: > 0 draws the positions to commit from
    softmax(confidence / alg_temp) instead of taking the most confident."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding: commit every masked block position whose confidence
    exceeds this (at least one per step); the step schedule is then not used."""
    logits_eos_inf: bool = False
    """Forbid EOS as a candidate (upstream's HumanEval setting)."""
    seed: int = 0
    """Seed of this request's own random stream (Gumbel noise, random remasking)."""
    kv_policy: str | None = field(default=None, metadata={"cli": False})
    """Prompt-KV eviction policy ("full", "maskkv", "snapkv", ...; see
    ``maskkv_vllm.eviction.registry``); None takes the engine's default ("full" in
    the bare sampler). Anything but "full" needs the paged cache."""
    kv_budget: int | None = field(default=None, metadata={"cli": False})
    """Average prompt KV entries kept per head per layer (the paper's B); every
    evicting policy needs one (None takes the engine's default); "full" ignores it."""
    canvas_cache: str | None = field(
        default=None, metadata={"choices": CANVAS_CACHES, "cli": False}
    )
    """"none": every step recomputes the whole canvas (exact, LLaDA's generate.py);
    "dual": Fast-dLLM's DualCache - at each block boundary one forward over the
    canvas stores the K/V of the canvas outside the block, and the block's other
    steps compute only its own rows; "dual_refresh": the same, with the boundary
    forward over prompt and canvas (Fast-dLLM's generate_with_dual_cache; full
    cache only); "adaptive": dLLM-Cache's answer-feature cache - every
    ``canvas_refresh_interval`` steps one forward over the canvas stores each
    layer's canvas K/V and attention and MLP outputs, and the steps between
    recompute, per layer, only the ``canvas_refresh_ratio`` of canvas rows whose
    value vectors moved most (the rest reuse their cached outputs). None takes
    the engine's default. Needs the paged cache."""
    canvas_refresh_interval: int = 5
    """``canvas_cache="adaptive"``: steps between full canvas refreshes (the
    first canvas step is one), dLLM-Cache's response interval (MaskKV's
    setting: 5)."""
    canvas_refresh_ratio: float = 0.25
    """``canvas_cache="adaptive"``: share of canvas rows a step between
    refreshes recomputes in each layer (at least one), those with the lowest
    cosine similarity between their new and cached value vectors (dLLM-Cache's
    rho; MaskKV's setting: 0.25)."""

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
        n = self.num_diffusion_blocks
        if self.steps % n:
            raise ValueError(
                f"steps={self.steps} is not divisible by the number of blocks "
                f"({n} = gen_length {self.gen_length} / block_length "
                f"{self.block_length})"
            )
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature={self.temperature} must be >= 0 and finite")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 0")
        if self.canvas_cache is not None and self.canvas_cache not in CANVAS_CACHES:
            raise ValueError(
                f"canvas_cache={self.canvas_cache!r} is not one of {CANVAS_CACHES}"
            )
        if (
            not isinstance(self.canvas_refresh_interval, int)
            or isinstance(self.canvas_refresh_interval, bool)
            or self.canvas_refresh_interval <= 0
        ):
            raise ValueError(
                f"canvas_refresh_interval={self.canvas_refresh_interval!r} must be "
                "a positive integer"
            )
        if not 0 < self.canvas_refresh_ratio <= 1:
            raise ValueError(
                f"canvas_refresh_ratio={self.canvas_refresh_ratio} must be in (0, 1]"
            )
        if self.canvas_cache == "dual_refresh" and _evicts(self.kv_policy):
            raise ValueError(
                f"canvas_cache='dual_refresh' recomputes the full prompt at every "
                f"block boundary: kv_policy={self.kv_policy!r} evicts (use 'dual')"
            )
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} is not one of {REMASKING}")
        if self.remasking == "fast_dllm_block" and self.steps_per_block < 2:
            raise ValueError(
                f"remasking='fast_dllm_block' needs at least 2 steps per block "
                f"(steps={self.steps} over {self.num_diffusion_blocks} blocks): its "
                "first step commits only the block's first slot"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError(f"top_k={self.top_k!r} must be an integer")
        if self.top_k < -1:
            raise ValueError(f"top_k={self.top_k} must be >= -1 (0 and -1 are off)")
        if not 0 <= self.alg_temp < math.inf:
            raise ValueError(f"alg_temp={self.alg_temp} must be >= 0 and finite")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1]")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed={self.seed} must lie in [0, 2**64)")
        self._check_kv()

    def _check_types(self) -> None:
        """A wrong type is named with its field, before any comparison trips on it
        (integers are named by the range checks, with their range)."""
        for opt in SAMPLING_OPTIONS.values():
            value = getattr(self, opt.name)
            if opt.kinds == (int,) or (value is None and opt.nullable):
                continue
            if not opt.accepts(value):
                null = " or null" if opt.nullable else ""
                raise ValueError(f"{opt.name}={value!r:.80} must be {opt.what}{null}")

    def _check_kv(self) -> None:
        from maskkv_vllm.eviction.registry import check_kv_budget, check_policy_name

        if self.kv_policy is not None:
            check_policy_name(self.kv_policy)
        check_kv_budget(self.kv_budget)

    def with_kv_defaults(
        self, policy: str | None, budget: int | None, canvas_cache: str | None = None
    ) -> SamplingParams:
        """These params with the engine's policy/budget/canvas cache where they
        leave them unset (the engine's budget only where the policy evicts: it is
        the default of requests that choose an evicting policy)."""
        chosen = self.kv_policy or policy
        if self.kv_budget is not None:
            budget = self.kv_budget
        elif not _evicts(chosen):
            budget = None
        canvas = self.canvas_cache or canvas_cache
        return dataclasses.replace(
            self, kv_policy=chosen, kv_budget=budget, canvas_cache=canvas
        )

    @property
    def evicts(self) -> bool:
        return _evicts(self.kv_policy)

    @property
    def num_rows(self) -> int:
        """Forward rows of the request: 2 with classifier-free guidance (the
        prompt-masked branch beside the prompted one), else 1."""
        return 2 if self.cfg_scale > 0 else 1

    @property
    def canvas_cached(self) -> int:
        """Canvas positions whose K/V a row keeps outside its current diffusion
        block (the dual canvas cache), else 0."""
        if self.canvas_cache in ("dual", "dual_refresh"):
            return self.gen_length - self.block_length
        return 0

    def canvas_entries(self, group: int) -> int:
        """Entries each KV head of a layer keeps after its prompt entries for the
        canvas cache: the cached canvas K/V, and with "adaptive" also the canvas
        rows' attention and MLP outputs, ``group`` entries a row (a row's
        outputs are Hq x head_dim each; a KV head stores its group's slices).

        Args:
            group: query heads per KV head (Hq / Hkv).
        """
        if self.canvas_cache == "adaptive":
            return self.gen_length * (1 + group)
        return self.canvas_cached

    @property
    def caches_canvas(self) -> bool:
        """Whether a row keeps canvas state in its pages between steps."""
        return self.canvas_cache not in (None, "none")

    @property
    def canvas_selected(self) -> int:
        """Canvas rows an "adaptive" step between refreshes recomputes."""
        return max(1, math.ceil(self.canvas_refresh_ratio * self.gen_length))

    @property
    def num_diffusion_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_diffusion_blocks


def _evicts(name: str | None) -> bool:
    # Lazy: the policies import torch, SamplingParams need not.
    from maskkv_vllm.eviction.registry import policy_evicts

    return policy_evicts(name)


def length_defaults(gen_length: int) -> dict[str, int]:
    """``block_length`` and ``steps`` of a request that gives only its canvas
    length (an OpenAI ``max_tokens``, vLLM's ``max_tokens``): one token per step,
    in blocks of 32 (the default) when 32 divides the canvas, else one block."""
    block = SamplingParams.block_length
    return {
        "block_length": block if gen_length % block == 0 else gen_length,
        "steps": gen_length,
    }


@dataclass(frozen=True)
class SamplingOption:
    """One ``SamplingParams`` field as the front ends show it: the flag
    ``--<name>``, the OpenAI body field ``<name>``, vLLM's ``maskkv_<name>``."""

    name: str
    default: Any
    kinds: tuple[type, ...]
    """Types a value may have (a bool only where the field is a bool)."""
    what: str
    """What an error calls them: "an integer", "a number", ..."""
    nullable: bool
    """None is a value (it takes the engine's default, or turns the option off)."""
    help: str
    """The field's docstring."""
    choices: tuple[str, ...] | None = None
    cli: bool = True
    """``maskkv generate`` has a flag for it (kv_policy and kv_budget are set
    there by the engine flags of the same names)."""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has one of ``kinds`` (``True`` is not the number 1)."""
        wrong_bool = isinstance(value, bool) and bool not in self.kinds
        return isinstance(value, self.kinds) and not wrong_bool


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "bool": ((bool,), "a boolean"),
}
"""Annotation -> (accepted types, what to call them)."""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string under it), whitespace folded: a
    dataclass field's one help text, for every front end."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        node.target.id: " ".join(str(nxt.value.value).split())
        for node, nxt in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
    }


def _sampling_options() -> dict[str, SamplingOption]:
    docs = field_docs(SamplingParams)
    options = {}
    for f in dataclasses.fields(SamplingParams):
        base = f.type.removesuffix(" | None")
        kinds, what = _KINDS[base]
        options[f.name] = SamplingOption(
            f.name, f.default, kinds, what, base != f.type, docs[f.name], **f.metadata
        )
    return options


SAMPLING_OPTIONS: dict[str, SamplingOption] = _sampling_options()
"""Every ``SamplingParams`` field, in declaration order: the one table of
sampling options (names, defaults, types, help)."""
