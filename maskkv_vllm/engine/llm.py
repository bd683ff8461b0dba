"""The offline API, shaped like vLLM's ``LLM``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from maskkv_vllm.config import MaskKVConfig
from maskkv_vllm.engine.engine_args import EngineArgs, renamed_keywords
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.engine.request import RequestOutput
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import Prompt


class LLM:
    """Generate with a diffusion LLM and the paged, evicting KV cache.

    Takes ``EngineArgs``' fields as keywords, with ``EngineArgs``' defaults: the
    same ``auto`` device, dtype and pool as every ``maskkv`` command.

    Args:
        model: checkpoint directory, or a built-in name ("tiny", "retrieval").
        maskkv: every MaskKV and baseline hyper-parameter (window sizes, ...),
            beyond the ``maskkv_alpha``/``maskkv_beta``/``maskkv_profile`` fields.
        **kwargs: ``EngineArgs`` fields: ``kv_policy``, ``kv_budget``,
            ``kv_cache_memory`` or ``num_pages``, ``dtype``, ``device``,
            ``max_num_seqs``, ... (an unknown name is a TypeError naming it).
    """

    def __init__(
        self,
        model: str = EngineArgs.model,
        *,
        maskkv: MaskKVConfig | None = None,
        **kwargs: Any,
    ) -> None:
        config = _engine_args(model, kwargs).create_engine_config()
        if maskkv is not None:
            given = sorted(k for k in kwargs if k.startswith("maskkv_"))
            if given:
                raise ValueError(f"give maskkv or {', '.join(given)}, not both")
            config = dataclasses.replace(config, maskkv=maskkv)
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


def _engine_args(model: str, kwargs: dict[str, Any]) -> EngineArgs:
    """``EngineArgs`` of ``LLM(model, **kwargs)``; TypeError names a keyword that
    is not one of its fields (an old name of ``RENAMED`` is taken, with a warning)."""
    kwargs = renamed_keywords(kwargs)
    names = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(
            f"LLM() got unknown keyword arguments {unknown}: not EngineArgs fields"
        )
    return EngineArgs(model=str(model), **kwargs)
