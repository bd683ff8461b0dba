"""OpenAI request bodies -> prompts and SamplingParams; errors in OpenAI's shape."""

from __future__ import annotations

import re
from typing import Any

from maskkv_vllm.openai_api.options import (
    EXTRA_FIELDS,
    GEN_FIELDS,
    HONOURED,
    TYPES,
    APIError,
    check_fields,
)
from maskkv_vllm.sampling_params import SamplingParams, length_defaults


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
        kwargs = {**length_defaults(gen), **kwargs, "gen_length": gen}
    for name in HONOURED:
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
