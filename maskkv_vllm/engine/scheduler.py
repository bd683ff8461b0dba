"""FCFS admission by free pages, with preemption of the newest request (no torch)."""

from __future__ import annotations

from collections import deque

from maskkv_vllm.engine.request import Request, RequestStatus


class Scheduler:
    """Moves requests waiting -> running -> finished.

    Args:
        max_num_seqs: running requests at most.
        max_num_batched_tokens: tokens one engine step may forward at most (each
            running request's canvas rows, plus prompt rows in its first step);
            a single request is always admitted when nothing runs.
        max_queue_len: waiting requests at most (``can_add`` turns False beyond).
    """

    def __init__(
        self, max_num_seqs: int, max_num_batched_tokens: int, max_queue_len: int
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
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.max_running = 0

    def can_add(self) -> bool:
        return len(self.waiting) < self.max_queue_len

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def schedule(self, num_free_pages: int) -> list[Request]:
        """Admit waiting requests in arrival order while the pool, the running limit
        and the token limit allow; returns the newly admitted ones."""
        admitted = []
        tokens = sum(r.step_tokens for r in self.running)
        while self.waiting and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            if (
                self.running
                and tokens + head.prefill_tokens > self.max_num_batched_tokens
            ):
                break
            if head.predicted_pages > num_free_pages:
                break  # FCFS: nobody jumps the queue
            self.waiting.popleft()
            head.status = RequestStatus.RUNNING
            self.running.append(head)
            admitted.append(head)
            num_free_pages -= head.predicted_pages
            tokens += head.prefill_tokens
        self.max_running = max(self.max_running, len(self.running))
        return admitted

    def preempt(self, requests: list[Request]) -> None:
        """Send running requests back to the front of the queue, oldest first."""
        for r in requests:
            self.running.remove(r)
            r.status = RequestStatus.WAITING
            r.stats.num_preemptions += 1
        for r in sorted(requests, key=lambda r: r.arrival_time, reverse=True):
            self.waiting.appendleft(r)

    def newest_running(self, exclude: list[Request]) -> Request | None:
        candidates = [r for r in self.running if r not in exclude]
        return max(candidates, key=lambda r: r.arrival_time, default=None)

    def finish(self, request: Request, status: RequestStatus) -> None:
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status

    def find(self, request_id: str) -> Request | None:
        for r in (*self.running, *self.waiting):
            if r.request_id == request_id:
                return r
        return None

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)
