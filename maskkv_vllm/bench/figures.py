"""The individual measurements of ``maskkv bench``."""

from __future__ import annotations

import time

from maskkv_vllm.bench.common import (
    english_ids,
    lockstep_times,
    median_ms,
    step_times,
    sync,
)
from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

MODES = (
    ("none", "none", "full"),
    ("prefix", "prefix", "full"),
    ("paged", "paged", "full"),
    ("maskkv", "paged", "maskkv"),
)
"""(label, cache mode, policy) of the step-time curves."""


def params(
    gen: int,
    policy: str = "full",
    budget: int | None = None,
    block: int = 8,
    canvas_cache: str = "none",
) -> SamplingParams:
    return SamplingParams(
        gen_length=gen, block_length=min(block, gen), steps=gen,
        kv_policy=policy, kv_budget=budget, canvas_cache=canvas_cache,
    )  # fmt: skip


def sampler_for(model, tok, mode: str, pool: str) -> ModelRunner:
    cache = CacheConfig(mode, kv_cache_memory=pool if mode == "paged" else None)
    # early_stop off: every run does the same number of steps.
    return ModelRunner(model, tok, cache, early_stop=False)


def page_bytes(model, dtype=None) -> int:
    """Bytes of one 16-slot page of this model (K and V), in ``dtype`` (default:
    the model's own)."""
    from maskkv_vllm.kv_cache.page_store import PageStore

    dtype = dtype or next(model.parameters()).dtype
    return PageStore.bytes_per_page(16, model.config.head_dim, dtype)


def time_summary(times: list[float]) -> dict[str, float]:
    """ms of the median step after the first, of the first step, and in all."""
    return {"step_ms": median_ms(times[1:]), "first_ms": 1e3 * times[0],
            "total_ms": 1e3 * sum(times)}  # fmt: skip


def step_time_curve(
    model, tok, lengths, gen, budget, device, pool, bar=None, none_max_len=None,
    repeats=1, repeat_max_len=None, modes=MODES,
):  # fmt: skip
    """Median ms of a denoising step after the first, per prompt length and mode;
    also the first step (prefill) and the end-to-end time of the generation.

    The modes of one length run in lockstep (``lockstep_times``); lengths up to
    ``repeat_max_len`` run ``repeats`` such rounds and each mode keeps its best
    step median, best first step and best total (the vanilla mode runs once: it
    is no target's operand and costs a prefill per step). The vanilla mode runs
    only up to ``none_max_len``; longer rows hold None for it (not run).
    ``modes``: the (label, cache mode, policy) triples to run, ``MODES`` by
    default; a row has keys for these labels only."""
    rows = []
    samplers = {label: sampler_for(model, tok, mode, pool) for label, mode, _ in modes}
    policies = {label: policy for label, _, policy in modes}
    for m in lengths:
        prompt = english_ids(tok, m)
        too_long = none_max_len is not None and m > none_max_len
        labels = [label for label in samplers if not (label == "none" and too_long)]
        sp = {
            label: params(gen, policies[label], None if policies[label] == "full"
                          else budget)
            for label in labels
        }  # fmt: skip
        for label in labels:  # warm-up
            s = samplers[label]
            step_times(s, s.make_sequence(0, prompt[:16], sp[label]), device)
        best: dict[str, dict[str, float]] = {}
        rounds = repeats if repeat_max_len is None or m <= repeat_max_len else 1
        for r in range(rounds):
            run = [label for label in labels if r == 0 or label != "none"]
            seqs = {label: samplers[label].make_sequence(0, prompt, sp[label])
                    for label in run}  # fmt: skip
            for label, times in lockstep_times(samplers, seqs, device).items():
                got = time_summary(times)
                mine = best.setdefault(label, got)
                for key, value in got.items():
                    mine[key] = min(mine[key], value)
        row = {"prompt_len": m, "rounds": rounds}
        for label in samplers:
            for key in ("step_ms", "first_ms", "total_ms"):
                row[f"{label}_{key}"] = best.get(label, {}).get(key)
        rows.append(row)
        if bar is not None:
            bar.update(len(modes))
    return rows


def flat_step(model, tok, lengths, gen, budget, device, pool) -> list[dict]:
    """MaskKV's median step (after the first) at every prompt length, the
    lengths' sequences stepping in lockstep on one runner: whether the step is
    flat in the prompt length, measured side by side, so load drift between
    lengths (which separate runs suffer) falls on every length alike."""
    runner = sampler_for(model, tok, "paged", pool)
    sp = params(gen, "maskkv", budget)
    step_times(runner, runner.make_sequence(0, english_ids(tok, 16), sp), device)
    seqs = {m: runner.make_sequence(i, english_ids(tok, m), sp)
            for i, m in enumerate(lengths)}  # fmt: skip
    times = lockstep_times(dict.fromkeys(lengths, runner), seqs, device)
    return [{"prompt_len": m, **time_summary(times[m])} for m in lengths]


def capacity(model, tok, prompt_len, gen, budget, pool, limit=512):
    """How many long-prompt requests one pool holds at once, full vs MaskKV:
    requests are added one per engine step (each step prefills the newcomer) until
    one has to wait for pages; the canvas is long enough that none finishes."""
    out = {}
    for policy, b in (("full", None), ("maskkv", budget)):
        config = EngineConfig(
            max_num_seqs=limit, max_num_batched_tokens=1 << 30,
            cache=CacheConfig("paged", kv_cache_memory=pool),
        )  # fmt: skip
        engine = LLMEngine(config, model, tok)
        sp = params(gen, policy, b)
        for i in range(limit):
            engine.add_request(engine.make_request(english_ids(tok, prompt_len, i), sp))
            engine.step()
            if engine.scheduler.waiting:
                break
        pool_ = engine.kv_cache_manager.pool
        out[policy] = {
            "running": len(engine.scheduler.running),
            "pages_used": pool_.num_used_pages,
            "pages_total": pool_.num_usable_pages,
        }
        for r in list(engine.scheduler.running) + list(engine.scheduler.waiting):
            engine.abort_request(r.request_id)
        assert pool_.num_free_pages == pool_.num_usable_pages
    return out


def prefill_peak(model, tok, prompt_len, gen, budget, pool):
    """Pool high-water mark while one long prompt is prefilled with MaskKV, against
    its compressed size and the bound compressed + one layer of full prompt KV."""
    s = sampler_for(model, tok, "paged", pool)
    pool = s.prompt_cache.page_pool
    seq = s.make_sequence(
        0, english_ids(tok, prompt_len), params(gen, "maskkv", budget)
    )
    s.step([seq])
    compressed = pool.num_used_pages
    peak = pool.max_used_pages
    c = model.config
    one_layer = c.n_kv_heads * -(-prompt_len // pool.page_size)
    s.free(seq)
    return {
        "peak_pages": peak,
        "compressed_pages": compressed,
        "one_layer_full_pages": one_layer,
        "bound_pages": compressed + one_layer,
        "full_prompt_pages": c.n_layers * one_layer,
    }


def long_capacity(model, tok, prompt_len, gen, budget, pool):
    """Requests of ``prompt_len`` tokens one pool holds, full vs MaskKV, from one
    real request each: its admission bound (what the engine reserves, so how many
    it admits at once) and the pages it holds after its prefill. Prefilling
    enough 32k-token requests to fill a pool would take an hour on a CPU."""
    out = {}
    for policy, b in (("full", None), ("maskkv", budget)):
        config = EngineConfig(cache=CacheConfig("paged", kv_cache_memory=pool))
        engine = LLMEngine(config, model, tok)
        r = engine.make_request(english_ids(tok, prompt_len), params(gen, policy, b))
        engine.add_request(r)
        engine.step()  # the prefill
        usable = engine.kv_cache_manager.pool.num_usable_pages
        held = r.stats.num_pages
        out[policy] = {
            "pool_pages": usable,
            "bound_pages": r.predicted_pages,
            "held_pages": held,
            "admitted": usable // r.predicted_pages,
            "fit_by_held": usable // max(1, held),
        }
        engine.abort_request(r.request_id)
        assert engine.kv_cache_manager.pool.num_free_pages == usable
    return out


def throughput(
    model, tok, num_requests, prompt_len, gen, budget, pool, block=8, dual=False
):
    """Requests/s and tokens/s of the engine on the same concurrent workload:
    "full" and "maskkv" with ``canvas_cache`` none, and with ``dual`` also
    "maskkv_dual" (MaskKV with the dual canvas cache).

    Each label also gets ``prompt_step_seconds``, the time of the engine steps that
    forwarded some prompt, and ``decode_tokens_per_s``, its tokens over the rest of
    the time: the denoising throughput once the prompts are in (exact where every
    request starts in the first step, as in the decode-heavy workload's MaskKV
    labels)."""
    out = {}
    variants = [("full", "full", None, "none"), ("maskkv", "maskkv", budget, "none")]
    if dual:
        variants.append(("maskkv_dual", "maskkv", budget, "dual"))
    for label, policy, b, canvas in variants:
        config = EngineConfig(
            max_num_seqs=64, cache=CacheConfig("paged", kv_cache_memory=pool)
        )
        engine = LLMEngine(config, model, tok)
        sp = params(gen, policy, b, block, canvas)
        start = time.perf_counter()
        for i in range(num_requests):
            prompt = english_ids(tok, prompt_len - (i % 4) * prompt_len // 16, 97 * i)
            engine.add_request(engine.make_request(prompt, sp))
        tokens = done = 0
        while engine.has_unfinished:
            for o in engine.step():
                if o.finished:
                    done += 1
                    tokens += len(o.token_ids)
        sync("cpu")
        seconds = time.perf_counter() - start
        prompt_s = engine.metrics.prompt_step_seconds_sum
        out[label] = {
            "seconds": seconds,
            "requests_per_s": done / seconds,
            "tokens_per_s": tokens / seconds,
            "peak_running": engine.scheduler.max_running,
            "prompt_step_seconds": prompt_s,
            "decode_tokens_per_s": tokens / max(seconds - prompt_s, 1e-9),
        }
    return out


def peer_fast_dllm(model, tok, checkpoint, path, lengths, gen, budget, device, pool):
    """Fast-dLLM's prefix and dual cache (their code, from the checkout at ``path``,
    on the same ``checkpoint``) beside our prefix and MaskKV modes: per prompt
    length one generation each, in turn (ours, theirs, theirs, ours), gen ``gen``
    in blocks of 8, one token per step, greedy.

    Ours also run with the canvas cache: "dual_refresh" (full cache, the prompt
    recomputed at each block boundary: Fast-dLLM's dual cache, whose tokens
    theirs must equal) and "maskkv_dual" (MaskKV + dual).

    Returns:
        per length, {"prompt_len", "ours_prefix", "ours_maskkv", "peer_prefix",
        "peer_dual", "ours_dual_refresh", "ours_maskkv_dual"}, each with
        first_ms, step_ms, total_ms and tokens.
    """
    from maskkv_vllm.bench.peer_fast_dllm import PEER_MODES, PeerCode, peer_run

    code = PeerCode(path)
    theirs = code.load(checkpoint, device)
    paged = sampler_for(model, tok, "paged", pool)
    ours = {"prefix": (sampler_for(model, tok, "prefix", pool), params(gen)),
            "maskkv": (paged, params(gen, "maskkv", budget)),
            "dual_refresh": (paged, params(gen, canvas_cache="dual_refresh")),
            "maskkv_dual": (paged, params(gen, "maskkv", budget,
                                          canvas_cache="dual"))}  # fmt: skip
    mask_id = model.config.mask_token_id

    def run_ours(label: str, prompt: list[int]) -> dict:
        s, sp = ours[label]
        seq = s.make_sequence(0, prompt, sp)
        times = step_times(s, seq, device)
        # Mean, not median: a dual step is bimodal (boundary vs block forwards).
        mean_ms = 1e3 * sum(times[1:]) / max(1, len(times) - 1)
        return {**time_summary(times), "mean_step_ms": mean_ms,
                "tokens": seq.canvas.tolist()}  # fmt: skip

    def run_theirs(mode: str, prompt: list[int]) -> dict:
        return peer_run(code, theirs, mode, prompt, gen, min(8, gen), mask_id, device)

    warm = english_ids(tok, 16)
    for label in ours:
        run_ours(label, warm)
    for mode in PEER_MODES:
        run_theirs(mode, warm)
    rows = []
    for m in lengths:
        prompt = english_ids(tok, m)
        rows.append({
            "prompt_len": m,
            "ours_prefix": run_ours("prefix", prompt),
            "peer_prefix": run_theirs("prefix", prompt),
            "peer_dual": run_theirs("dual", prompt),
            "ours_maskkv": run_ours("maskkv", prompt),
            "ours_dual_refresh": run_ours("dual_refresh", prompt),
            "ours_maskkv_dual": run_ours("maskkv_dual", prompt),
        })  # fmt: skip
    return rows
