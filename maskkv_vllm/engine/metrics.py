"""Counters the engine keeps for /metrics (plain numbers, exported by the server)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the step-latency histogram; +Inf is implied."""


@dataclass
class EngineMetrics:
    num_requests_finished: int = 0
    num_requests_aborted: int = 0
    num_requests_failed: int = 0
    num_preemptions: int = 0
    num_steps: int = 0
    evicted_kv_entries: int = 0
    """Prompt (layer, head, token) entries dropped by eviction, all requests."""
    generated_tokens: int = 0
    step_seconds_sum: float = 0.0
    prompt_step_seconds_sum: float = 0.0
    """Seconds of the steps that forwarded some request's prompt (its step 0 or a
    prompt refresh), whatever else they ran: a workload's prefill share."""
    step_bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1)
    )
    """Non-cumulative counts per bucket of STEP_BUCKETS, the last for +Inf."""

    def record_step(self, seconds: float, prompt_forward: bool = False) -> None:
        self.num_steps += 1
        self.step_seconds_sum += seconds
        self.prompt_step_seconds_sum += seconds if prompt_forward else 0.0
        self.step_bucket_counts[bisect.bisect_left(STEP_BUCKETS, seconds)] += 1
