"""The offline API, shaped like vLLM's ``LLM``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tqdm.auto import tqdm

from maskkv_vllm.config import MaskKVConfig
from maskkv_vllm.engine.engine_args import EngineArgs
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.engine.request import RequestOutput
from maskkv_vllm.sampler.diffusion_sampler import Prompt
from maskkv_vllm.sampling_params import SamplingParams


class LLM:
    """Generate with a diffusion LLM and the paged, evicting KV cache.

    Args:
        model: checkpoint directory, or "tiny" (the built-in random tiny model).
        kv_policy, kv_budget: eviction of requests that do not choose their own.
        kv_cache_memory: page-pool size ("4GiB", bytes); or ``num_blocks`` pages.
        block_size: token slots per page.
        dtype, device, rope_scaling, max_model_len: how the model runs.
        max_num_seqs, max_num_batched_tokens: scheduling limits.
        cache_mode: "paged" (default), or "prefix"/"none" without a pool.
        prompt_refresh_interval: recompute (and re-vote) the prompt KV every this
            many steps; None never.
        maskkv: MaskKV and baseline hyper-parameters (alpha, beta, profile, ...).
    """

    def __init__(
        self,
        model: str = "tiny",
        *,
        kv_policy: str = "full",
        kv_budget: int | None = None,
        kv_cache_memory: int | str | None = "1GiB",
        num_blocks: int | None = None,
        block_size: int = 16,
        dtype: str = "float32",
        device: str = "cpu",
        rope_scaling: float = 1.0,
        max_model_len: int | None = None,
        max_num_seqs: int = 16,
        max_num_batched_tokens: int = 65536,
        cache_mode: str = "paged",
        prompt_refresh_interval: int | None = None,
        maskkv: MaskKVConfig | None = None,
    ) -> None:
        m = maskkv or MaskKVConfig()
        config = EngineArgs(
            model=str(model),
            dtype=dtype,
            device=device,
            rope_scaling=rope_scaling,
            max_model_len=max_model_len,
            kv_policy=kv_policy,
            kv_budget=kv_budget,
            cache_mode=cache_mode,
            prompt_refresh_interval=prompt_refresh_interval,
            kv_cache_memory=None if num_blocks else kv_cache_memory,
            num_blocks=num_blocks,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        ).create_engine_config()
        # MaskKVConfig carries more than the three CLI knobs: keep all of it.
        config = dataclasses.replace(config, maskkv=m)
        self.engine = LLMEngine(config)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in prompt order."""
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        if not prompts:
            raise ValueError("prompts must not be empty")
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(
                    f"got {len(params)} SamplingParams for {len(prompts)} prompts"
                )
        requests = [
            self.engine.make_request(p, sp)
            for p, sp in zip(prompts, params, strict=True)
        ]
        for r in requests:
            self.engine.add_request(r)
        done: dict[str, RequestOutput] = {}
        # Steps, not requests: a single long request shows progress too.
        total = sum(r.params.steps for r in requests)
        bar = tqdm(total=total, disable=not use_tqdm, desc="denoising", unit="step")
        with bar:
            try:
                while len(done) < len(requests):
                    before = self._steps_run(requests, done)
                    for out in self.engine.step():
                        if out.finished:
                            done[out.request_id] = out
                    bar.update(self._steps_run(requests, done) - before)
                    bar.set_postfix(finished=f"{len(done)}/{len(requests)}")
            finally:
                for r in requests:
                    if r.request_id not in done:
                        self.engine.abort_request(r.request_id)
        return [done[r.request_id] for r in requests]

    @staticmethod
    def _steps_run(requests, done: dict[str, RequestOutput]) -> int:
        """Steps the bar has to show: all of a finished request's (an early stop
        skips some), the sequence's own count for a running one."""
        return sum(
            r.params.steps
            if r.request_id in done
            else (r.seq.num_steps if r.seq is not None else 0)
            for r in requests
        )

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLM:
        """An ``LLM`` of parsed command-line options (``EngineArgs.from_cli_args``)."""
        return cls.from_engine(LLMEngine(args.create_engine_config()))

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> LLM:
        """An ``LLM`` over an engine built by hand (a preloaded model, a sized pool)."""
        llm = cls.__new__(cls)
        llm.engine = engine
        return llm

    def chat(
        self,
        conversations: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to chat conversations (LLaDA's pinned template)."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        prompts = [self.tokenizer.encode_chat(c) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)
