"""MaskKV's eviction as Prometheus metrics on vLLM's own ``/metrics``.

The scheduler runs in vLLM's engine-core process, the HTTP server in the API
process, so the metrics go through prometheus_client's multiprocess mode: both
processes write to ``$PROMETHEUS_MULTIPROC_DIR`` and vLLM's ``/metrics`` collects
that directory whenever the variable is set (``vllm.v1.metrics.prometheus``).
``maskkv vllm-serve`` sets it to a fresh temporary directory; under a plain
``vllm serve`` set it yourself (an empty directory) before starting, else these
metrics stay in the engine-core process and only the log line shows eviction.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Histogram

KEPT_FRACTION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@cache
def _metrics() -> dict:
    labels = ["model_name"]
    return {
        "freed": Counter(
            "maskkv:kv_blocks_freed",
            "KV blocks returned to vLLM's pool after a request's evicting first step.",
            labels,
        ),
        "kept": Counter(
            "maskkv:prompt_kv_entries_kept",
            "Prompt KV entries (layer, KV head, token) kept after eviction.",
            labels,
        ),
        "evicted": Counter(
            "maskkv:prompt_kv_entries_evicted",
            "Prompt KV entries (layer, KV head, token) evicted.",
            labels,
        ),
        "fraction": Histogram(
            "maskkv:prompt_kv_kept_fraction",
            "Per request: kept prompt KV entries / all prompt KV entries.",
            labels,
            buckets=KEPT_FRACTION_BUCKETS,
        ),
    }


def record_eviction(model: str, freed_blocks: int, kept: int, total: int) -> None:
    """One request's step-0 eviction: blocks freed, entries kept of ``total``."""
    m = _metrics()
    m["freed"].labels(model).inc(freed_blocks)
    m["kept"].labels(model).inc(kept)
    m["evicted"].labels(model).inc(total - kept)
    m["fraction"].labels(model).observe(kept / total if total else 1.0)
