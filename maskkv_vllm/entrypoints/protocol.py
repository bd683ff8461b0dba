"""OpenAI request bodies -> prompts and SamplingParams; errors in OpenAI's shape."""

from __future__ import annotations

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
UNSUPPORTED = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "logprobs": None,
    "top_logprobs": None,
    "suffix": None,
    "stop": None,
    "tools": None,
    "tool_choice": None,
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


def sampling_params(body: dict[str, Any]) -> SamplingParams:
    """Map an OpenAI body (plus the extra diffusion fields) to SamplingParams."""
    for name, neutral in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value != neutral:
            raise APIError(400, f"{name}={value!r} is not supported", name)
    gen = body.get("gen_length", body.get("max_tokens")) or body.get(
        "max_completion_tokens"
    )
    kwargs: dict[str, Any] = {
        k: body[k] for k in EXTRA_FIELDS if body.get(k) is not None
    }
    if gen is not None:
        kwargs["gen_length"] = gen
        if isinstance(gen, int) and "block_length" not in kwargs:
            kwargs["block_length"] = 32 if gen % 32 == 0 else gen
        if isinstance(gen, int) and "steps" not in kwargs:
            kwargs["steps"] = gen
    for name in ("temperature", "seed"):
        if body.get(name) is not None:
            kwargs[name] = body[name]
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError) as e:
        raise APIError(400, str(e)) from e


def completion_prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt
    raise APIError(
        400, "prompt must be a string or a list of token ids (one prompt)", "prompt"
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
