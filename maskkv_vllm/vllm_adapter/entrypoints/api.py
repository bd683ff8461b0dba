"""Offline helper: LLaDA + MaskKV through vLLM's ``LLM`` in two calls.

    from maskkv_vllm.sampling_params import SamplingParams
    from maskkv_vllm.vllm_adapter.entrypoints.api import generate, make_llm

    llm = make_llm("path/to/llada", maskkv={"kv_policy": "maskkv", "kv_budget": 64})
    outs = generate(llm, ["Hello"], SamplingParams(gen_length=64, steps=64))
    print(outs[0].text)

``make_llm`` builds ``vllm.LLM`` with our scheduler, the worker for the current
platform (CPU or CUDA, ``selection.worker_cls_for``) and the front-end params
check (``validation.MaskKVParamsValidator``), and calls ``register()``, which
the entry point also does in every vLLM process;
``generate`` turns prompts + our ``SamplingParams`` into vLLM requests
(``extra_args["maskkv"]``) and returns our-style outputs (token ids without the
stop id, as the embedded engine reports them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from maskkv_vllm.models.continuation import continuation_text
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.vllm_adapter.params import CONFIG_KEY, AdapterConfig

Prompt = str | list[int]

LLM_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "enforce_eager": True,
    "block_size": 32,
    "seed": 0,
}
"""vLLM engine arguments that differ from vLLM's defaults on CPU."""


@dataclass(frozen=True)
class VllmOutput:
    """One finished request, shaped like the embedded engine's output.

    Attributes:
        prompt_token_ids: the prompt without its canvas.
        token_ids: the answer, cut before the first stop id.
        text: ``token_ids`` decoded (special tokens skipped).
        finish_reason: "stop" or "length" (a request the engine refused raises
            in ``generate`` instead).
    """

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str


def make_llm(model: str, maskkv: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """``vllm.LLM`` running LLaDA's denoising loop with MaskKV.

    Args:
        model: checkpoint directory.
        maskkv: ``additional_config["maskkv"]``: ``MaskKVConfig`` fields plus
            ``kv_policy``, ``kv_budget`` (engine defaults) and ``free_blocks``.
        **kwargs: any other ``vllm.LLM`` argument (overrides ``LLM_DEFAULTS``).

    Every LLaDA engine setting (V1 runner, no async scheduling, eager mode, ...)
    is the plugin's config hook's (``engine_config``), as for ``vllm serve``.

    Raises:
        ValueError: invalid ``maskkv`` settings (checked before vLLM starts).
        NotImplementedError: a platform other than CPU or CUDA.
    """
    from vllm import LLM
    from vllm.platforms import current_platform

    from maskkv_vllm.vllm_adapter.core.scheduler import SCHEDULER_CLS
    from maskkv_vllm.vllm_adapter.plugin import register
    from maskkv_vllm.vllm_adapter.worker.selection import worker_cls_for

    register()
    additional = dict(kwargs.pop("additional_config", None) or {})
    additional[CONFIG_KEY] = dict(maskkv or {})
    AdapterConfig.from_additional_config(additional)
    args = {**LLM_DEFAULTS, **kwargs}
    args.setdefault("scheduler_cls", SCHEDULER_CLS)
    args.setdefault("worker_cls", worker_cls_for(current_platform))
    args["logits_processors"] = _with_validator(args.get("logits_processors"))
    return LLM(model=model, additional_config=additional, **args)


def _with_validator(processors: Sequence[Any] | None) -> list[Any]:
    """``logits_processors`` plus our front-end params check (once)."""
    from maskkv_vllm.vllm_adapter.entrypoints.validation import VALIDATOR_CLS

    processors = list(processors or [])
    return processors if VALIDATOR_CLS in processors else [*processors, VALIDATOR_CLS]


def vllm_sampling_params(params: SamplingParams, stop_token_ids: Sequence[int] = ()):
    """Our params as a vLLM ``SamplingParams`` (``max_tokens`` = gen_length)."""
    from vllm import SamplingParams as VllmSamplingParams

    if params.cfg_scale > 0:
        raise ValueError(f"cfg_scale={params.cfg_scale}: CFG is not supported in vLLM")
    return VllmSamplingParams(
        max_tokens=params.gen_length,
        temperature=0.0,
        stop_token_ids=list(stop_token_ids),
        extra_args={CONFIG_KEY: dataclasses.asdict(params)},
    )


def generate(
    llm: Any,
    prompts: Sequence[Prompt],
    params: SamplingParams | None = None,
    use_tqdm: bool = False,
) -> list[VllmOutput]:
    """Denoise every prompt through vLLM; outputs in prompt order.

    Args:
        llm: from ``make_llm``.
        prompts: texts (tokenized by vLLM) or token-id lists.
        params: our validated sampling params (default ``SamplingParams()``).
    """
    params = params or SamplingParams()
    stops = _tokenizer_stop_ids(llm)
    vllm_params = vllm_sampling_params(params, stops)
    tokenizer = llm.get_tokenizer()
    ids = [list(p) if not isinstance(p, str) else tokenizer.encode(p) for p in prompts]
    check_lengths([len(p) for p in ids], params.gen_length, llm)
    inputs = [{"prompt_token_ids": p} for p in ids]
    outs = llm.generate(inputs, vllm_params, use_tqdm=use_tqdm)
    for i, out in enumerate(outs):
        if out.outputs[0].finish_reason == "error":
            raise ValueError(f"prompt {i} was refused: {out.outputs[0].stop_reason}")
    return [_to_output(o, stops, llm) for o in outs]


def check_lengths(prompt_lens: Sequence[int], gen_length: int, llm: Any) -> None:
    """Refuse prompts whose canvas would not fit: ``M + L <= max_model_len``."""
    max_len = llm.llm_engine.model_config.max_model_len
    for m in prompt_lens:
        if m + gen_length > max_len:
            raise ValueError(
                f"prompt of {m} tokens + gen_length {gen_length} exceeds "
                f"max_model_len={max_len}"
            )


def _tokenizer_stop_ids(llm: Any) -> tuple[int, ...]:
    """EOS, and LLaDA's EOT or ChatML's end of turn where the vocabulary has
    them (the embedded engine's stop set, ``Tokenizer.stop_token_ids``)."""
    from maskkv_vllm.models.tokenizer import EOT, IM_END

    hf = llm.llm_engine.model_config.hf_config
    tokenizer = llm.get_tokenizer()
    ids = {hf.eos_token_id}
    for token in (EOT, IM_END):
        found = tokenizer.convert_tokens_to_ids(token)
        ids.add(found if isinstance(found, int) else None)
    unk = getattr(tokenizer, "unk_token_id", None)
    return tuple(sorted(i for i in ids if i is not None and i != unk))


def _to_output(out: Any, stops: Sequence[int], llm: Any) -> VllmOutput:
    completion = out.outputs[0]
    ids = list(completion.token_ids)
    if ids and ids[-1] in stops:
        ids = ids[:-1]
    tokenizer = llm.get_tokenizer()
    text = continuation_text(
        lambda t: tokenizer.decode(t, skip_special_tokens=True),
        list(out.prompt_token_ids),
        ids,
    )
    reason = "stop" if completion.finish_reason == "stop" else "length"
    return VllmOutput(list(out.prompt_token_ids), ids, text, reason)
