"""The engine on a background thread, with asyncio streams per request (server side)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator

from maskkv_vllm.engine.llm_engine import LLMEngine, QueueFullError
from maskkv_vllm.engine.request import Request, RequestOutput
from maskkv_vllm.engine.stats_log import StatsLog, log_finished

logger = logging.getLogger(__name__)


class AsyncLLMEngine:
    """Runs ``LLMEngine.step`` in one thread; coroutines submit and stream.

    All engine state is touched by the engine thread only: submissions and aborts
    travel through a queue, outputs come back through ``call_soon_threadsafe``.
    """

    def __init__(self, engine: LLMEngine, stats_interval: float = 10.0) -> None:
        self.engine = engine
        self.stats = StatsLog(engine, stats_interval)
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="maskkv-engine", daemon=True
        )
        self._pending = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the engine thread (a second call does nothing)."""
        with self._lock:
            if not self._thread.is_alive() and not self._stop.is_set():
                self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: Request) -> AsyncIterator[RequestOutput]:
        """Queue a validated request; iterate the result for its outputs until it
        finishes. Closing the iterator early aborts the request.

        Must be called from the event loop's thread.

        Raises:
            QueueFullError: too many requests are waiting.
        """
        sched = self.engine.scheduler
        with self._lock:
            if len(sched.waiting) + self._pending >= sched.max_queue_len:
                raise QueueFullError(f"{sched.max_queue_len} requests already waiting")
            self._pending += 1
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = (asyncio.get_running_loop(), stream)
        self._commands.put(("add", request))
        self._wake.set()
        return self._outputs(request, stream)

    async def _outputs(
        self, request: Request, stream: asyncio.Queue
    ) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # the consumer went away (client disconnect)
                self.abort(request.request_id)
            self._streams.pop(request.request_id, None)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake.set()

    # -- engine thread -----------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain_commands()
            if not self.engine.has_unfinished:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:  # noqa: BLE001 (fail the requests, keep serving)
                logger.exception("engine step failed")
                outputs = self.engine.fail_all(f"engine step failed: {e}")
            for out in outputs:
                if out.finished:
                    log_finished(out)
                self._deliver(out.request_id, out)
            self.stats.maybe_log()

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                with self._lock:
                    self._pending -= 1
                try:
                    self.engine.add_request(arg)
                except (ValueError, QueueFullError) as e:
                    self._deliver(arg.request_id, e)
            else:
                out = self.engine.abort_request(arg)
                if out is not None:
                    self._deliver(arg, out)

    def _deliver(self, request_id: str, item: RequestOutput | Exception) -> None:
        target = self._streams.get(request_id)
        if target is None:
            return
        loop, stream = target
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(stream.put_nowait, item)
