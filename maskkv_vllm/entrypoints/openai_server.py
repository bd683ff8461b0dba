"""OpenAI-compatible HTTP server over the embedded engine (FastAPI + uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
from starlette.exceptions import HTTPException as StarletteHTTPException

from maskkv_vllm.engine.async_engine import AsyncLLMEngine
from maskkv_vllm.engine.llm_engine import LLMEngine, QueueFullError
from maskkv_vllm.engine.metrics import STEP_BUCKETS
from maskkv_vllm.engine.request import RequestOutput
from maskkv_vllm.entrypoints.guard import FrontDoor
from maskkv_vllm.entrypoints.server_config import ServerConfig
from maskkv_vllm.openai_api.protocol import (
    APIError,
    chat_messages,
    completion_prompts,
    engine_error,
    requested_model,
    sampling_params,
)

logger = logging.getLogger("maskkv_vllm.server")


def build_app(engine: LLMEngine, server: ServerConfig) -> FastAPI:
    """The FastAPI app; the engine thread starts and stops with the app."""
    runner = AsyncLLMEngine(engine, server.stats_interval)
    registry = CollectorRegistry()
    registry.register(_EngineCollector(engine))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("serving %s: %s", server.model_name, engine.summary())
        runner.start()
        yield
        runner.shutdown()

    app = FastAPI(title="maskkv-vllm", lifespan=lifespan)
    app.state.runner = runner
    app.add_middleware(FrontDoor, config=server)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        err = APIError(exc.status_code, str(exc.detail))
        return JSONResponse(err.body(), status_code=exc.status_code)

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
        card = {
            "id": server.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "maskkv",
            "max_model_len": engine.model_runner.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        requested_model(body, server.model_name)
        prompts = completion_prompts(body)
        return await _serve(request, body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _json_body(request)
        requested_model(body, server.model_name)
        return await _serve(request, body, [chat_messages(body)], chat=True)

    async def _serve(request: Request, body: dict, prompts: list, chat: bool):
        params = sampling_params(body)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        # Tokenizing a long prompt takes a while: off the event loop, so /health
        # and every other request keep being answered.
        reqs = await asyncio.to_thread(
            _make_requests, engine, prompts, params, rid, body, chat
        )
        streams = []
        try:
            for req in reqs:
                streams.append(runner.submit(req))
        except QueueFullError as e:
            for stream in streams:
                await stream.aclose()
            raise APIError(503, f"server is busy: {e}") from e
        fmt = (_ChatFormat if chat else _TextFormat)(rid, server.model_name)
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _sse(_merged(streams), fmt, len(streams), usage)
            return StreamingResponse(events, media_type="text/event-stream")
        return await _until_done(request, streams, fmt)

    return app


def _make_requests(
    engine: LLMEngine, prompts: list, params, rid: str, body: dict, chat: bool
):
    """Validated engine requests, one per prompt (a worker thread runs this);
    an error names the body field at fault."""
    reqs = []
    for i, prompt in enumerate(prompts):
        try:
            if chat:
                prompt = engine.tokenizer.encode_chat(prompt)
            suffix = f"-{i}" if len(prompts) > 1 else ""
            reqs.append(engine.make_request(prompt, params, request_id=rid + suffix))
        except (ValueError, TypeError) as e:
            raise engine_error(e, body, chat) from e
    return reqs


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        # NaN and Infinity are not JSON; deep nesting is refused, not a 500.
        body = await asyncio.to_thread(json.loads, raw, parse_constant=_not_json)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise APIError(400, "request body is nested too deeply") from e
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    return body


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value")


async def _merged(
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(choice index, output) from every stream as they come; closing this closes
    (and so aborts) every stream still running."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        finally:
            await stream.aclose()  # a cancelled pump closes its stream here
            queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, out = await queue.get()
            if out is None:
                left -= 1
            else:
                yield i, out
    finally:
        for t in tasks:
            t.cancel()
        # A stream cannot be closed while its pump is inside it: let each
        # cancelled pump leave (and close its stream) first.
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_done(
    request: Request, streams: list[AsyncIterator[RequestOutput]], fmt
) -> JSONResponse:
    """Run non-streaming requests; a client that disconnects aborts them."""

    async def consume() -> list[RequestOutput]:
        last: list[RequestOutput | None] = [None] * len(streams)
        async for i, out in _merged(streams):
            last[i] = out
        return last

    task = asyncio.ensure_future(consume())
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if not task.done() and await request.is_disconnected():
            task.cancel()  # closing the streams aborts the requests
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise APIError(499, "client disconnected")
    outs = task.result()
    failed = next((o for o in outs if o.finish_reason == "error"), None)
    if failed is not None:
        status = 400 if failed.error_is_request else 500
        raise APIError(status, failed.error or "generation failed")
    return JSONResponse(fmt.final(outs))


async def _sse(
    outputs: AsyncIterator[tuple[int, RequestOutput]], fmt, n: int, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per committed block, then the finish chunk,
    then (``include_usage``) a usage chunk. A client that disconnects cancels this
    generator, which aborts the requests."""
    finals: list[RequestOutput] = []
    try:
        async for i, out in outputs:
            if out.finish_reason == "error":
                status = 400 if out.error_is_request else 500
                yield _event(APIError(status, out.error or "generation failed").body())
                break
            if out.delta_text or out.finished:
                yield _event(fmt.chunk(out, i))
            if out.finished:
                finals.append(out)
        else:
            if usage:
                yield _event(fmt.usage_chunk(finals))
        yield "data: [DONE]\n\n"
    finally:
        await outputs.aclose()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(outs: list[RequestOutput]) -> dict[str, Any]:
    prompt = sum(len(o.prompt_token_ids) for o in outs)
    completion = sum(len(o.token_ids) for o in outs)
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
    """OpenAI completion bodies: one choice per prompt, in prompt order. Each
    choice carries its request's ``maskkv`` stats; a one-prompt body has them at
    the top level too."""

    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, rid: str, model: str) -> None:
        self.rid, self.model, self.created = rid, model, int(time.time())

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.rid, "object": kind, "created": self.created,
                "model": self.model}  # fmt: skip

    def _final_choice(self, out: RequestOutput) -> dict[str, Any]:
        return {"text": out.text, "logprobs": None}

    def _delta(self, out: RequestOutput, index: int) -> dict[str, Any]:
        return {"text": out.delta_text, "logprobs": None}

    def final(self, outs: list[RequestOutput]) -> dict[str, Any]:
        choices = [
            {"index": i, **self._final_choice(o), "finish_reason": _finish_reason(o),
             "maskkv": _maskkv_stats(o)}
            for i, o in enumerate(outs)
        ]  # fmt: skip
        body = {**self._base(self.object), "choices": choices, "usage": _usage(outs)}
        if len(outs) == 1:
            body["maskkv"] = _maskkv_stats(outs[0])
        return body

    def chunk(self, out: RequestOutput, index: int) -> dict[str, Any]:
        choice = {
            "index": index,
            **self._delta(out, index),
            "finish_reason": _finish_reason(out) if out.finished else None,
        }
        return {**self._base(self.chunk_object), "choices": [choice]}

    def usage_chunk(self, outs: list[RequestOutput]) -> dict[str, Any]:
        """``stream_options.include_usage``: the last chunk, no choices."""
        return {**self._base(self.chunk_object), "choices": [], "usage": _usage(outs)}


class _ChatFormat(_TextFormat):
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, rid: str, model: str) -> None:
        super().__init__(rid, model)
        self.sent_role: set[int] = set()

    def _final_choice(self, out: RequestOutput) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": out.text}}

    def _delta(self, out: RequestOutput, index: int) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": out.delta_text}
        if index not in self.sent_role:
            delta["role"] = "assistant"
            self.sent_role.add(index)
        return {"delta": delta}


class _EngineCollector:
    """Prometheus metrics read from the engine at scrape time."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    def collect(self):
        e, m = self.engine, self.engine.metrics
        sched = e.scheduler
        yield _gauge("maskkv_requests_running", "Requests running", len(sched.running))
        yield _gauge("maskkv_requests_waiting", "Requests waiting", len(sched.waiting))
        pool = e.kv_cache_manager.pool
        if pool is not None:
            yield _gauge("maskkv_kv_pages_free", "Free KV pages", pool.num_free_pages)
            yield _gauge("maskkv_kv_pages_total", "KV pages", pool.num_usable_pages)
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
