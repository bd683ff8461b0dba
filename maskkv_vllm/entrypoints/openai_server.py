"""OpenAI-compatible HTTP server over the embedded engine (FastAPI + uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from maskkv_vllm.engine.async_engine import AsyncLLMEngine
from maskkv_vllm.engine.llm_engine import LLMEngine, QueueFullError
from maskkv_vllm.engine.metrics import STEP_BUCKETS
from maskkv_vllm.engine.request import RequestOutput
from maskkv_vllm.entrypoints.protocol import (
    APIError,
    chat_messages,
    completion_prompt,
    sampling_params,
)


def build_app(
    engine: LLMEngine,
    model_name: str,
    api_key: str | None = None,
    replica_id: str | None = None,
) -> FastAPI:
    """The FastAPI app; the engine thread starts and stops with the app.

    ``replica_id`` (Ray Serve) is returned in an ``x-maskkv-replica`` header.
    """
    runner = AsyncLLMEngine(engine)
    registry = CollectorRegistry()
    registry.register(_EngineCollector(engine))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        yield
        runner.shutdown()

    app = FastAPI(title="maskkv-vllm", lifespan=lifespan)
    app.state.runner = runner

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                err = APIError(401, "invalid or missing API key")
                return JSONResponse(err.body(), status_code=401)
        response = await call_next(request)
        if replica_id:
            response.headers["x-maskkv-replica"] = replica_id
        return response

    @app.get("/health")
    async def health() -> PlainTextResponse:
        if not runner.is_alive:
            raise APIError(503, "engine thread is not running")
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "maskkv"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        prompt = completion_prompt(body)
        return await _serve(request, body, prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _json_body(request)
        messages = chat_messages(body)
        try:
            prompt = engine.tokenizer.encode_chat(messages)
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e), "messages") from e
        return await _serve(request, body, prompt, chat=True)

    async def _serve(request: Request, body: dict, prompt, chat: bool):
        params = sampling_params(body)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            req = engine.make_request(prompt, params, request_id=rid)
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e)) from e
        fmt = _ChatFormat(rid, model_name) if chat else _TextFormat(rid, model_name)
        try:
            outputs = runner.submit(req)
        except QueueFullError as e:
            raise APIError(503, f"server is busy: {e}") from e
        if body.get("stream"):
            return StreamingResponse(_sse(outputs, fmt), media_type="text/event-stream")
        return await _until_done(request, outputs, fmt)

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    return body


async def _until_done(
    request: Request, outputs: AsyncIterator[RequestOutput], fmt
) -> JSONResponse:
    """Run a non-streaming request; a client that disconnects aborts it."""

    async def consume() -> RequestOutput:
        last = None
        async for out in outputs:
            last = out
        return last

    task = asyncio.ensure_future(consume())
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if not task.done() and await request.is_disconnected():
            task.cancel()  # closing the stream aborts the request
            raise APIError(499, "client disconnected")
    out = task.result()
    if out.finish_reason == "error":
        raise APIError(500, out.error or "generation failed")
    return JSONResponse(fmt.final(out))


async def _sse(outputs: AsyncIterator[RequestOutput], fmt) -> AsyncIterator[str]:
    """Server-sent events: one chunk per committed block, then the finish chunk.
    A client that disconnects cancels this generator, which aborts the request."""
    try:
        async for out in outputs:
            if out.finish_reason == "error":
                yield _event(APIError(500, out.error or "generation failed").body())
                break
            if out.delta_text or out.finished:
                yield _event(fmt.chunk(out))
        yield "data: [DONE]\n\n"
    finally:
        await outputs.aclose()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(out: RequestOutput) -> dict[str, Any]:
    prompt, completion = len(out.prompt_token_ids), len(out.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(out: RequestOutput) -> str | None:
    return {"stop": "stop", "length": "length", "abort": "abort"}.get(
        out.finish_reason or ""
    )


def _maskkv_stats(out: RequestOutput) -> dict[str, Any]:
    s = out.stats
    return {
        "kept_kv_entries": s.kept_kv_entries,
        "evicted_kv_entries": s.evicted_kv_entries,
        "num_pages": s.num_pages,
        "num_steps": s.num_steps,
        "time_to_first_block": s.time_to_first_block,
        "total_time": s.total_time,
    }


class _TextFormat:
    def __init__(self, rid: str, model: str) -> None:
        self.rid, self.model, self.created = rid, model, int(time.time())

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
        }

    def final(self, out: RequestOutput) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": out.text,
            "finish_reason": _finish_reason(out),
            "logprobs": None,
        }
        return {
            **self._base(),
            "choices": [choice],
            "usage": _usage(out),
            "maskkv": _maskkv_stats(out),
        }

    def chunk(self, out: RequestOutput) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": out.delta_text,
            "finish_reason": _finish_reason(out) if out.finished else None,
            "logprobs": None,
        }
        return {**self._base(), "choices": [choice]}


class _ChatFormat(_TextFormat):
    def __init__(self, rid: str, model: str) -> None:
        super().__init__(rid, model)
        self.sent_role = False

    def _base(self) -> dict[str, Any]:
        return {**super()._base(), "object": "chat.completion"}

    def final(self, out: RequestOutput) -> dict[str, Any]:
        message = {"role": "assistant", "content": out.text}
        choice = {"index": 0, "message": message, "finish_reason": _finish_reason(out)}
        return {
            **self._base(),
            "choices": [choice],
            "usage": _usage(out),
            "maskkv": _maskkv_stats(out),
        }

    def chunk(self, out: RequestOutput) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": out.delta_text}
        if not self.sent_role:
            delta["role"] = "assistant"
            self.sent_role = True
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": _finish_reason(out) if out.finished else None,
        }
        return {**self._base(), "object": "chat.completion.chunk", "choices": [choice]}


class _EngineCollector:
    """Prometheus metrics read from the engine at scrape time."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    def collect(self):
        e, m = self.engine, self.engine.metrics
        sched = e.scheduler
        yield _gauge("maskkv_requests_running", "Requests running", len(sched.running))
        yield _gauge("maskkv_requests_waiting", "Requests waiting", len(sched.waiting))
        pool = e.pool
        if pool is not None:
            yield _gauge("maskkv_kv_pages_free", "Free KV pages", pool.num_free_blocks)
            yield _gauge("maskkv_kv_pages_total", "KV pages", pool.num_usable_blocks)
        for name, doc, value in (
            ("maskkv_requests_finished", "Requests finished", m.num_requests_finished),
            ("maskkv_requests_aborted", "Requests aborted", m.num_requests_aborted),
            ("maskkv_requests_failed", "Requests failed", m.num_requests_failed),
            ("maskkv_preemptions", "Preemptions", m.num_preemptions),
            (
                "maskkv_evicted_kv_entries",
                "Prompt KV entries evicted",
                m.evicted_kv_entries,
            ),
            ("maskkv_generated_tokens", "Tokens generated", m.generated_tokens),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        counts = list(m.step_bucket_counts)
        cumulative, buckets = 0, []
        for bound, n in zip((*STEP_BUCKETS, float("inf")), counts, strict=True):
            cumulative += n
            buckets.append(
                ("+Inf" if bound == float("inf") else str(bound), cumulative)
            )
        yield HistogramMetricFamily(
            "maskkv_step_latency_seconds",
            "Engine step latency",
            buckets=buckets,
            sum_value=m.step_seconds_sum,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g
