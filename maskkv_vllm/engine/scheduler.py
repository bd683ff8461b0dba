"""FCFS admission by free pages, reservation and preemption of the newest (no torch).

The scheduler decides everything about pages: it admits while the pool holds
the newcomers' reservations, makes room before a step whose full forwards may
take more than is free, preempts when a step ran out anyway, and frees a
request's pages when it ends. It sees the cache only through
``KVCacheManager`` (counts and ``free``), as vLLM's scheduler sees its own.
"""

from __future__ import annotations

import logging
from collections import deque

from maskkv_vllm.engine.kv_cache_manager import KVCacheManager
from maskkv_vllm.engine.metrics import EngineMetrics
from maskkv_vllm.engine.request import Request, RequestStatus

logger = logging.getLogger(__name__)


class Scheduler:
    """Moves requests waiting -> running -> finished.

    Args:
        max_num_seqs: running requests at most.
        max_num_batched_tokens: tokens one engine step may forward at most (each
            running request's canvas rows, plus prompt rows in its first step);
            a single request is always admitted when nothing runs.
        max_queue_len: waiting requests at most (``can_add`` turns False beyond).
        kv_cache_manager: the pages (counts, reservations, ``free``).
        metrics: where preemptions are counted.
    """

    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_queue_len: int,
        kv_cache_manager: KVCacheManager,
        metrics: EngineMetrics | None = None,
    ) -> None:
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("max_queue_len", max_queue_len),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive int")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_queue_len = max_queue_len
        self.kv_cache_manager = kv_cache_manager
        self.metrics = metrics or EngineMetrics()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.max_running = 0

    # -- queue ---------------------------------------------------------------------

    def can_add(self) -> bool:
        return len(self.waiting) < self.max_queue_len

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def find(self, request_id: str) -> Request | None:
        for r in (*self.running, *self.waiting):
            if r.request_id == request_id:
                return r
        return None

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- a step ----------------------------------------------------------------------

    def schedule(self) -> list[Request]:
        """Admit waiting requests in arrival order while the pool (their
        reservations), the running limit and the token limit allow; returns the
        newly admitted ones."""
        admitted = []
        free = self.kv_cache_manager.num_free_pages
        tokens = sum(r.step_tokens for r in self.running)
        while self.waiting and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            if (
                self.running
                and tokens + head.prefill_tokens > self.max_num_batched_tokens
            ):
                break
            if head.predicted_pages > free:
                break  # FCFS: nobody jumps the queue
            self.waiting.popleft()
            head.status = RequestStatus.RUNNING
            self.running.append(head)
            admitted.append(head)
            free -= head.predicted_pages
            tokens += head.prefill_tokens
        self.max_running = max(self.max_running, len(self.running))
        return admitted

    def reserve(self, full_forwards: list[Request]) -> bool:
        """Make room before the forward, so no page runs short inside it: the
        pages this step's full forwards may take beyond what they hold must be
        free. Preempts the newest running requests until they are (never the
        last one); True if any was.

        Admission already counted a first step's bound; a refresh (re-voting
        every ``prompt_refresh_interval`` steps) may need more than it holds.
        """
        kv, preempted = self.kv_cache_manager, False
        while len(self.running) > 1:
            need = sum(
                max(0, r.predicted_pages - kv.held_pages(r))
                for r in full_forwards
                if r in self.running
            )
            if need <= kv.num_free_pages:
                break
            victim = self._newest_running(exclude=[])
            logger.info("reserving KV pages: preempting %s", victim.request_id)
            self.preempt([victim])
            preempted = True
        return preempted

    def recover(self, full_forwards: list[Request]) -> Request | None:
        """A step's full forwards ran out of pages although ``reserve`` made room
        (a page count predicted wrong): re-reserve their bound and preempt them,
        with the newest other request, to retry next step (``preempt`` frees
        what their step 0 wrote, once).

        Returns:
            the request to fail instead, when it ran alone and cannot fit (its
            pages go back when it is finished).
        """
        kv = self.kv_cache_manager
        for r in full_forwards:
            r.predicted_pages = kv.reserved_pages(r.params, len(r.prompt_token_ids))
        others = [r for r in self.running if r not in full_forwards]
        if not others and len(full_forwards) == 1:
            return full_forwards[0]
        victims = list(full_forwards)
        newest = self._newest_running(exclude=full_forwards)
        if newest is not None:
            victims.append(newest)
        logger.info("out of KV pages: preempting %d requests", len(victims))
        self.preempt(victims)
        return None

    def preempt(self, requests: list[Request]) -> None:
        """Free running requests' pages and send them back to the front of the
        queue, oldest first (a restart recomputes from the prompt)."""
        for r in requests:
            self.kv_cache_manager.free(r)
            self.running.remove(r)
            r.status = RequestStatus.WAITING
            r.stats.num_preemptions += 1
            self.metrics.num_preemptions += 1
        for r in sorted(requests, key=lambda r: r.arrival_time, reverse=True):
            self.waiting.appendleft(r)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """End a request wherever it is; its pages go back."""
        self.kv_cache_manager.free(request)
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status

    def _newest_running(self, exclude: list[Request]) -> Request | None:
        candidates = [r for r in self.running if r not in exclude]
        return max(candidates, key=lambda r: r.arrival_time, default=None)
