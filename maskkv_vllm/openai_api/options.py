"""The OpenAI request options both servers accept: one table, torch- and vLLM-free.

``maskkv serve`` (``protocol.sampling_params``) and ``maskkv vllm-serve`` / ``vllm
serve`` with the plugin (``vllm_adapter/entrypoints/http_options.py``) run
the same ``check_fields`` on the request body as the client sent it, so an option
is either honoured by both engines or refused by both, by name (HTTP 400 whose
``param`` is the field), never silently ignored:

- honoured: ``HONOURED`` (``temperature``, ``seed``, ``top_p``, ``top_k``), the
  diffusion options
  ``EXTRA_FIELDS`` and the length ``GEN_FIELDS``;
- refused unless neutral: ``NEUTRAL`` (a value besides null that asks for nothing);
- typed: ``TYPES``, checked before any value is used.

The sampling fields, their types and defaults come from ``SamplingParams``
(``SAMPLING_OPTIONS``): a new field there is a new body field here.

Fields outside these tables (``user``, ``model``, vLLM's ``return_token_ids``, ...)
do not change what is generated.
"""

from __future__ import annotations

from typing import Any

from maskkv_vllm.sampling_params import SAMPLING_OPTIONS

HONOURED = ("temperature", "seed", "top_p", "top_k")
"""OpenAI sampling options both engines honour (the diffusion sampler's own)."""
EXTRA_FIELDS = tuple(name for name in SAMPLING_OPTIONS if name not in HONOURED)
"""Diffusion options, as top-level body fields (the openai client's extra_body):
every other ``SamplingParams`` field."""
GEN_FIELDS = ("gen_length", "max_tokens", "max_completion_tokens")
"""The canvas length, by precedence."""
NEUTRAL: dict[str, tuple] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "suffix": ("",),
    "stop": ("", []),
    "stop_token_ids": ([],),
    "tools": ([],),
    "tool_choice": ("none",),
    "min_p": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "repetition_penalty": (1,),
    "logit_bias": ({},),
    "min_tokens": (0,),
    "response_format": ({"type": "text"},),
    # vLLM's sampling extensions (its server reads them; the embedded one must not
    # ignore them either)
    "prompt_logprobs": (),
    "use_beam_search": (False,),
    "length_penalty": (1,),
    "ignore_eos": (False,),
    "include_stop_str_in_output": (False,),
    "allowed_token_ids": ([],),
    "bad_words": ([],),
    "structured_outputs": (),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
}
"""Options neither engine can honour, with the values (besides null) that ask for
nothing; anything else is refused."""
TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "stream_options": ((dict,), "an object"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    **{name: (o.kinds, o.what) for name, o in SAMPLING_OPTIONS.items()},
}
"""Field -> (accepted types, what to call them)."""


class APIError(Exception):
    """An error answered with an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            405: "invalid_request_error",
            413: "invalid_request_error",
            415: "invalid_request_error",
            503: "service_unavailable",
        }.get(self.status, "server_error")
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.status,
            }
        }


def check_fields(body: dict[str, Any]) -> None:
    """Refuse wrong types and unsupported options, naming the field (``param``).

    Raises:
        APIError: 400, ``"<field>=<value> must be ..."`` or ``"... is not
            supported"``.
    """
    for name, (kinds, what) in TYPES.items():
        value = body.get(name)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (not isinstance(value, kinds) or wrong_bool):
            raise APIError(400, f"{name}={value!r:.80} must be {what}", name)
    check_neutral(body)
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        raise APIError(400, "stream_options needs stream=true", "stream_options")


def check_neutral(values: dict[str, Any]) -> None:
    """Refuse the first ``NEUTRAL`` field of ``values`` that asks for something."""
    for name, neutral in NEUTRAL.items():
        value = values.get(name)
        if value is not None and not any(_same(value, n) for n in neutral):
            raise APIError(400, f"{name}={value!r:.80} is not supported", name)


def _same(value: Any, neutral: Any) -> bool:
    """Equal and of the same JSON kind: ``true`` is not the count 1."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return value == neutral
