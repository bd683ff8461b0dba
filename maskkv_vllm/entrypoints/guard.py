"""The front door as plain ASGI middleware: Host, API key, Content-Type, body size.

Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
wraps ``receive``, so an endpoint never saw its client disconnect and a
non-streaming request ran on after the client left.
"""

from __future__ import annotations

import json
import secrets

from maskkv_vllm.entrypoints.server_config import ServerConfig, host_name
from maskkv_vllm.openai_api.protocol import APIError


class RequestTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds max_request_bytes={limit}")


class FrontDoor:
    """Refuses what no endpoint should see; counts body bytes as they arrive."""

    def __init__(self, app, config: ServerConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}  # fmt: skip
        error = self._refusal(scope, headers)
        if error is not None:
            return await _answer(send, error)
        return await self.app(scope, self._limited(receive), self._tagged(send))

    def _refusal(self, scope, headers: dict[str, str]) -> APIError | None:
        c = self.config
        allowed = c.allowed_hosts or ("*",)
        host = host_name(headers.get("host", ""))
        if "*" not in allowed and host not in allowed:
            return APIError(400, f"Host {headers.get('host', '')!r:.80} is not allowed")
        if not scope["path"].startswith("/v1"):
            return None
        if c.api_key:
            given = headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, f"Bearer {c.api_key}".encode()):
                return APIError(401, "invalid or missing API key")
        if scope["method"] != "POST":
            return None
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return APIError(415, f"Content-Type {kind!r:.80} is not application/json")
        length = headers.get("content-length")
        if length is not None and (
            not length.isdigit() or int(length) > c.max_request_bytes
        ):
            return RequestTooLarge(c.max_request_bytes)
        return None

    def _limited(self, receive):
        limit, seen = self.config.max_request_bytes, 0

        async def receive_limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body without Content-Length
                    raise RequestTooLarge(limit)
            return message

        return receive_limited

    def _tagged(self, send):
        replica = self.config.replica_id
        if replica is None:
            return send

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                tag = (b"x-maskkv-replica", replica.encode())
                message = {**message, "headers": [*message.get("headers", []), tag]}
            await send(message)

        return send_tagged


async def _answer(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
