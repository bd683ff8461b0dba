"""What a running server says in its log: a line per finished request, and the
engine's state every few seconds while it works (as vLLM's LoggingStatLogger)."""

from __future__ import annotations

import logging
import time

from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.engine.request import RequestOutput

logger = logging.getLogger("maskkv_vllm.engine")


def log_finished(out: RequestOutput) -> None:
    s = out.stats
    logger.info(
        "request %s %s: %d prompt + %d answer tokens, %d prompt KV entries kept, "
        "%d evicted, %d pages, %d steps, %.2f s%s",
        out.request_id, out.finish_reason, s.prompt_tokens, len(out.token_ids),
        s.kept_kv_entries, s.evicted_kv_entries, s.num_pages, s.num_steps,
        s.total_time or 0.0, f" ({out.error})" if out.error else "",
    )  # fmt: skip


class StatsLog:
    """Logs running/waiting requests, pool use and throughput every ``interval``
    seconds, and only while there is something to say."""

    def __init__(self, engine: LLMEngine, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"stats interval={interval} must be positive")
        self.engine, self.interval = engine, interval
        self.last = time.monotonic()
        self.tokens = engine.metrics.generated_tokens
        self.steps = engine.metrics.num_steps

    def maybe_log(self) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        e, m = self.engine, self.engine.metrics
        elapsed, self.last = now - self.last, now
        tokens, self.tokens = m.generated_tokens - self.tokens, m.generated_tokens
        steps, self.steps = m.num_steps - self.steps, m.num_steps
        sched = e.scheduler
        if not (steps or sched.running or sched.waiting):
            return
        pool = e.kv_cache_manager.pool
        usage = (
            f"{pool.num_used_pages}/{pool.num_usable_pages} KV pages used"
            if pool is not None
            else "no page pool"
        )
        logger.info(
            "engine: %d running, %d waiting, %s, %.1f answer tokens/s, "
            "%.1f steps/s, %d preemptions so far",
            len(sched.running), len(sched.waiting), usage, tokens / elapsed,
            steps / elapsed, m.num_preemptions,
        )  # fmt: skip
