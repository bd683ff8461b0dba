"""OpenAI request bodies -> prompts and SamplingParams; errors in OpenAI's shape."""

from __future__ import annotations

import re
from typing import Any

from maskkv_vllm.sampling_params import SamplingParams

# Diffusion options that ride as extra body fields (the openai client's extra_body).
EXTRA_FIELDS = (
    "gen_length",
    "block_length",
    "steps",
    "remasking",
    "cfg_scale",
    "threshold",
    "kv_policy",
    "kv_budget",
    "logits_eos_inf",
)
# The canvas length, by precedence.
GEN_FIELDS = ("gen_length", "max_tokens", "max_completion_tokens")
# OpenAI fields this engine cannot honour, with the values (besides null) that
# ask for nothing; anything else is refused, never silently ignored.
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
    "top_p": (1,),
    "top_k": (-1, 0),
    "min_p": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "repetition_penalty": (1,),
    "logit_bias": ({},),
    "min_tokens": (0,),
    "response_format": ({"type": "text"},),
}
# Field -> (accepted types, what to call them): checked before any value is used.
TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "stream_options": ((dict,), "an object"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "gen_length": ((int,), "an integer"),
    "block_length": ((int,), "an integer"),
    "steps": ((int,), "an integer"),
    "seed": ((int,), "an integer"),
    "kv_budget": ((int,), "an integer"),
    "temperature": ((int, float), "a number"),
    "cfg_scale": ((int, float), "a number"),
    "threshold": ((int, float), "a number"),
    "remasking": ((str,), "a string"),
    "kv_policy": ((str,), "a string"),
    "logits_eos_inf": ((bool,), "a boolean"),
}


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
    """Refuse wrong types and unsupported options, naming the field (``param``)."""
    for name, (kinds, what) in TYPES.items():
        value = body.get(name)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (not isinstance(value, kinds) or wrong_bool):
            raise APIError(400, f"{name}={value!r:.80} must be {what}", name)
    for name, neutral in NEUTRAL.items():
        value = body.get(name)
        if value is not None and not any(_same(value, n) for n in neutral):
            raise APIError(400, f"{name}={value!r:.80} is not supported", name)
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        raise APIError(400, "stream_options needs stream=true", "stream_options")


def _same(value: Any, neutral: Any) -> bool:
    """Equal and of the same JSON kind: ``true`` is not the count 1."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return value == neutral


def sampling_params(body: dict[str, Any]) -> SamplingParams:
    """Map an OpenAI body (plus the extra diffusion fields) to SamplingParams."""
    check_fields(body)
    length_field = next((k for k in GEN_FIELDS if body.get(k) is not None), None)
    kwargs: dict[str, Any] = {
        k: body[k] for k in EXTRA_FIELDS if body.get(k) is not None
    }
    if length_field is not None:
        gen = body[length_field]
        if gen <= 0:
            raise APIError(
                400, f"{length_field}={gen} must be at least 1", length_field
            )
        kwargs["gen_length"] = gen
        if "block_length" not in kwargs:
            kwargs["block_length"] = 32 if gen % 32 == 0 else gen
        if "steps" not in kwargs:
            kwargs["steps"] = gen
    for name in ("temperature", "seed"):
        if body.get(name) is not None:
            kwargs[name] = body[name]
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError) as e:
        raise engine_error(e, body, chat=False) from e


def named_field(message: str, body: dict[str, Any], chat: bool) -> str | None:
    """The body field an engine error is about, from the name it starts with:
    ``gen_length`` is whichever length field the body set (``max_tokens``, ...),
    a prompt or chat error is ``prompt`` or ``messages``."""
    match = re.match(r"\w+", message)
    name = match.group(0) if match else None
    if name == "gen_length":
        return next((k for k in GEN_FIELDS if body.get(k) is not None), name)
    if name in ("prompt", "chat"):
        return "messages" if chat else "prompt"
    return name if name in (*TYPES, *EXTRA_FIELDS) else None


def engine_error(err: Exception, body: dict[str, Any], chat: bool) -> APIError:
    """An engine's ValueError/TypeError as a 400 naming the body field at fault
    (its message too, when the engine called it ``gen_length``)."""
    message = str(err)
    param = named_field(message, body, chat)
    if param in GEN_FIELDS and message.startswith("gen_length"):
        message = param + message.removeprefix("gen_length")
    return APIError(400, message, param)


def requested_model(body: dict[str, Any], served: str) -> None:
    """vLLM's answer to another model name: 404."""
    model = body.get("model")
    if model is not None and model != served:
        raise APIError(404, f"The model `{model:.80}` does not exist.", "model")


def completion_prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """The prompts of a completion body: a string, token ids, or a list of either."""
    prompt = body.get("prompt")
    if prompt == "" or (isinstance(prompt, list) and "" in prompt):
        raise APIError(400, "prompt is empty: give at least one token", "prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        return [prompt]
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, str) or _is_ids(p) for p in prompt)
    ):
        return list(prompt)
    raise APIError(
        400,
        "prompt must be a string, a list of token ids, or a non-empty list of those",
        "prompt",
    )


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "messages")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise APIError(400, f"message {m!r} is not an object", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = [c.get("text", "") for c in content if isinstance(c, dict)]
            content = "".join(parts)
        out.append({"role": m.get("role"), "content": content})
    return out
