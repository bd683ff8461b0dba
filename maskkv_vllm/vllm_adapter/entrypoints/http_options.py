"""vLLM's OpenAI server takes the embedded server's options, under the same rules.

vLLM's request models accept unknown body fields and drop them (a debug log
line), and its sampling options mean nothing to LLaDA's denoising loop: without
this, ``kv_budget`` at the top level was dropped, ``n: 2`` returned two copies,
``temperature`` was ignored and ``logprobs`` failed with HTTP 500. Here, before
vLLM parses a ``/v1/completions`` or ``/v1/chat/completions`` body,
``vllm_body`` applies ``maskkv_vllm.openai_api.options`` (the embedded server's
table, the same code): an unsupported option is a 400 naming it; the diffusion
options and ``temperature``/``seed`` move into ``vllm_xargs`` as ``maskkv_*``
keys, which our runner reads; ``gen_length`` (or the embedded default, 128,
when no length is given) becomes ``max_tokens``.

``MaskKVEndpointPlugin`` is the ``vllm.endpoint_plugins`` entry point
``maskkv``: vLLM loads it in the API server when ``VLLM_PLUGINS`` names it
(``maskkv vllm-serve`` sets it; a plain ``vllm serve`` needs
``VLLM_PLUGINS=maskkv``), it adds ``OptionsMiddleware`` to the app, and
``init_state`` turns it on for an LLaDA model only. Pure ASGI, no vLLM import:
a ``BaseHTTPMiddleware`` would hide a client's disconnect from vLLM's handler.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from maskkv_vllm.openai_api.options import (
    EXTRA_FIELDS,
    GEN_FIELDS,
    HONOURED,
    APIError,
    check_fields,
)
from maskkv_vllm.openai_api.protocol import sampling_params
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.vllm_adapter.params import FLAT_PREFIX

# Under "vllm." so that vLLM's log handler and level apply to our lines too.
logger = logging.getLogger(f"vllm.maskkv.{__name__.rsplit('.', 1)[-1]}")

ROUTES = ("/v1/completions", "/v1/chat/completions")
"""Paths whose bodies are checked (a ``--root-path`` prefix is allowed)."""
DEFAULT_GEN_LENGTH = SamplingParams.gen_length
"""The embedded server's canvas when a request gives no length (vLLM would fill
the whole context)."""


def vllm_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body vLLM's server gets: checked as the embedded server checks it.

    Args:
        body: the request body, as the client sent it.

    Returns:
        ``body`` without the diffusion fields, which (with ``temperature`` and
        ``seed``) are in ``vllm_xargs`` as ``maskkv_<field>``, and with
        ``max_tokens`` set from ``gen_length`` (or to 128 when no length is given).

    Raises:
        APIError: 400 naming the field: an unsupported option, a wrong type, a
            bad diffusion value, or a field that ``vllm_xargs`` gives otherwise.
    """
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        check_fields(body)
        return body  # vLLM refuses the malformed vllm_xargs itself
    xargs = dict(xargs or {})
    if any(key.startswith(FLAT_PREFIX) for key in xargs):
        check_fields(body)  # the front-end validator checks the merged options
    else:
        sampling_params(body)  # the embedded server's checks, word for word
    own = {k: body[k] for k in (*EXTRA_FIELDS, *HONOURED) if body.get(k) is not None}
    for name, value in own.items():
        key = FLAT_PREFIX + name
        if key in xargs and xargs[key] != value:
            raise APIError(
                400,
                f"{name}={value!r:.80} but vllm_xargs has {key}={xargs[key]!r:.80}",
                name,
            )
        if name != "gen_length":
            xargs[key] = value
    out = {k: v for k, v in body.items() if k not in EXTRA_FIELDS}
    if "gen_length" in own:
        out.pop("max_completion_tokens", None)
        out["max_tokens"] = own["gen_length"]
    elif all(body.get(k) is None for k in GEN_FIELDS) and (
        FLAT_PREFIX + "gen_length" not in xargs
    ):
        out["max_tokens"] = DEFAULT_GEN_LENGTH
    if xargs:
        out["vllm_xargs"] = xargs
    return out


def rewrite(raw: bytes) -> bytes:
    """``vllm_body`` on a raw body; one that is not a JSON object is left to vLLM.

    Raises:
        APIError: from ``vllm_body``.
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if not isinstance(body, dict):
        return raw
    return json.dumps(vllm_body(body)).encode()


class OptionsMiddleware:
    """ASGI middleware: ``rewrite`` the body of a POST to ``ROUTES`` (when on)."""

    def __init__(self, app: Any, gate: Any = None) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before sending its body
        try:
            new = rewrite(raw)
        except APIError as err:
            await _answer(send, err)
            return
        await self.app(_with_length(scope, len(new)), _replay(new, receive), send)

    def _applies(self, scope: dict) -> bool:
        return (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path", "").endswith(ROUTES)
            and getattr(self.gate, "active", True)
        )


async def _read_body(receive: Any) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """``receive`` that gives ``body`` once, then the client's own messages (a
    disconnect reaches vLLM's handler, which aborts the request)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_length(scope: dict, length: int) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


async def _answer(send: Any, err: APIError) -> None:
    payload = json.dumps(err.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    start = {"type": "http.response.start", "status": err.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": payload})


class MaskKVEndpointPlugin:
    """The ``vllm.endpoint_plugins`` entry point (vLLM's ``EndpointPlugin``)."""

    name = "maskkv"
    required_tasks = None
    """Any server: ``init_state`` decides by the model."""

    def __init__(self) -> None:
        self.active = False

    def attach_router(self, app: Any) -> None:
        """Add ``OptionsMiddleware`` (innermost: vLLM adds auth and CORS after)."""
        app.add_middleware(OptionsMiddleware, gate=self)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        """On for a model of ours (LLaDA, Dream); others keep vLLM's own rules."""
        from maskkv_vllm.vllm_adapter.plugin import MODEL_CLASSES

        config = getattr(engine_client, "model_config", None)
        archs = getattr(config, "architectures", None) or []
        self.active = any(arch in MODEL_CLASSES for arch in archs)
        if self.active:
            logger.info("maskkv: OpenAI options checked as by maskkv serve (issue 25)")
