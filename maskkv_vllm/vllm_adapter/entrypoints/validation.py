"""Front-end check of per-request MaskKV params: HTTP 400 instead of a dead engine.

vLLM 0.32.0 runs every custom logits processor's ``validate_params`` classmethod
on each request in the front end (``InputProcessor._validate_params`` ->
``validate_logits_processors_parameters``) and turns a ``VLLMValidationError``
(or a bare ``ValueError``) into HTTP 400. ``MaskKVParamsValidator`` is such a
processor; it never changes logits (our runner samples diffusion requests
itself). ``api.make_llm`` and ``serve.main`` add it with
``logits_processors=[VALIDATOR_CLS]`` / ``--logits-processors``.

What it cannot check: the engine's default ``kv_policy``/``kv_budget``
(``--additional-config``) are not visible to a classmethod, so "an evicting
policy with no budget anywhere" is still refused in the engine core. The
engine's tensor-parallel size it reads from ``params.ENGINE``, which the config
hook (``engine_config.note_engine``) fills in the process that validates.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from maskkv_vllm.openai_api.options import APIError, check_neutral
from maskkv_vllm.vllm_adapter.params import (
    ENGINE,
    FLAT_PREFIX,
    check_engine_fit,
    request_only_params,
)
from maskkv_vllm.vllm_adapter.qualnames import VALIDATOR_CLS as VALIDATOR_CLS

SAMPLING_FIELDS = (
    "n",
    "logprobs",
    "prompt_logprobs",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "min_tokens",
    "bad_words",
    "allowed_token_ids",
    "structured_outputs",
)
"""vLLM ``SamplingParams`` fields of ``options.NEUTRAL`` that vLLM never fills from
the model's generation config: refused here too, for the offline ``LLM`` and a
server without the HTTP check (``http_options``). Temperature, top-p/k, min-p and
the repetition penalty may come from the generation config, so only the HTTP
check, which sees what the client sent, can judge them."""


def check_request(sampling_params: Any) -> None:
    """Refuse a request whose MaskKV params our runner would reject.

    Args:
        sampling_params: the request's vLLM ``SamplingParams``.

    Raises:
        VLLMValidationError: naming the bad key and value, or an option of
            ``SAMPLING_FIELDS`` that asks for what LLaDA's sampler does not do.
    """
    values = {name: getattr(sampling_params, name, None) for name in SAMPLING_FIELDS}
    try:
        check_neutral(values)
    except APIError as err:
        raise VLLMValidationError(err.message, parameter=err.param) from err
    extra = sampling_params.extra_args
    try:
        params = request_only_params(extra, sampling_params.max_tokens)
        check_engine_fit(params, ENGINE["tensor_parallel_size"])
    except (ValueError, TypeError) as err:
        given = {k: v for k, v in (extra or {}).items() if k.startswith(FLAT_PREFIX)}
        named = ", ".join(f"{k}={v!r}" for k, v in sorted(given.items()))
        raise VLLMValidationError(
            f"invalid maskkv request params ({named or extra!r}): {err}",
            parameter="vllm_xargs",
        ) from err


class MaskKVParamsValidator(LogitsProcessor):
    """A logits processor that only validates (``validate_params``)."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        check_request(sampling_params)

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        pass

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits
