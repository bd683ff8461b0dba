"""Seeded random workloads on the embedded engine, with invariants checked after every
step: random arrivals, pool sizes, policies, budgets and canvas caches, optimistic
page guesses that force preemptions, and aborts at every point of a request's life."""

from __future__ import annotations

import random

import pytest

from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.engine.request import RequestStatus
from maskkv_vllm.sampling_params import SamplingParams

POLICIES = [("full", None), ("maskkv", 3), ("maskkv", 12), ("snapkv", 6),
            ("streaming", 4), ("adakv", 5), ("pyramidkv", 9)]  # fmt: skip
# Where a request is aborted: never, while waiting, right after admission (before
# its first step), after its evicting first step, after it streamed a block.
ABORT_POINTS = [None, None, None, "waiting", "admitted", "after_first_step", "streamed"]


def check_pages(eng: LLMEngine) -> None:
    """No page owned twice, none lost, owners are live requests."""
    cache = eng.model_runner.prompt_cache.cache
    pool, tables = eng.kv_cache_manager.pool, cache.manager.tables
    owned = [b for t in tables.values() for b in t.all_page_ids()]
    free = list(pool.free_page_queue)
    assert len(owned) == len(set(owned)), "a page is owned twice"
    assert len(free) == len(set(free)) and not set(free) & set(owned)
    assert len(owned) + len(free) == pool.num_usable_pages, "a page was lost"
    assert all(pool.ref_cnt[b] == 1 for b in owned)
    live = {k for r in eng.scheduler.running if r.seq for k in r.seq.cache_keys}
    assert set(tables) <= live, "a finished or waiting request holds pages"
    assert set(cache.canvas_tokens) <= set(tables), "a canvas record outlived its pages"


def random_request(rng: random.Random, eng: LLMEngine, i: int):
    policy, budget = rng.choice(POLICIES)
    gen = rng.choice([8, 16, 32])
    params = SamplingParams(
        gen_length=gen, block_length=8, steps=gen, kv_policy=policy,
        kv_budget=budget, cfg_scale=rng.choice([0.0, 0.0, 0.0, 0.5]),
        temperature=rng.choice([0.0, 0.0, 0.7]), seed=rng.randrange(1000),
        canvas_cache=rng.choice(["none", "dual", "adaptive"]),
    )  # fmt: skip
    prompt = f"r{i} " + "ab cd " * rng.randrange(0, 12)
    try:
        return eng.make_request(prompt, params, request_id=f"r{i}")
    except ValueError as e:  # larger than the whole pool: refused up front
        assert "KV pages but the pool holds" in str(e)
        return None


def run_workload(tiny, seed: int, monkeypatch) -> dict:
    rng = random.Random(seed)
    model, tok = tiny
    cache = CacheConfig("paged", page_size=16, num_pages=rng.randrange(10, 70))
    limits = {"max_num_seqs": rng.choice([2, 4, 8]),
              "max_num_batched_tokens": rng.choice([64, 256, 4096])}  # fmt: skip
    config = EngineConfig(cache=cache, **limits)
    eng = LLMEngine(config, model, tok)
    real = eng.make_request

    # Optimistic page counts (a page or two) on some requests overshoot admission
    # and the reservation, so first steps run short of pages and running requests
    # are preempted (the safety net behind ``_reserve``).
    def optimistic(*args, **kwargs):
        r = real(*args, **kwargs)
        if rng.random() < 0.5:
            r.predicted_pages = rng.choice([1, 2])
        return r

    monkeypatch.setattr(eng, "make_request", optimistic)
    arrivals = sorted(rng.randrange(0, 40) for _ in range(14))
    abort_at = {}
    outs: dict[str, list] = {}
    step = 0
    while step < 3000 and (arrivals or eng.has_unfinished):
        while arrivals and arrivals[0] <= step:
            arrivals.pop(0)
            r = random_request(rng, eng, len(outs) + len(abort_at))
            if r is None:
                continue
            eng.add_request(r)
            outs[r.request_id] = []
            abort_at[r.request_id] = (r, rng.choice(ABORT_POINTS))
        for rid, (r, point) in list(abort_at.items()):
            if r.status.is_finished or point is None:
                continue
            due = {
                "waiting": r.status == RequestStatus.WAITING,
                "admitted": r.seq is not None and r.seq.num_steps == 0,
                "after_first_step": r.seq is not None and r.seq.num_steps >= 1,
                "streamed": bool(outs[rid]),
            }[point]
            if due:
                out = eng.abort_request(rid)
                assert out is not None and out.finish_reason == "abort"
                outs[rid].append(out)
        for out in eng.step():
            outs[out.request_id].append(out)
        check_pages(eng)
        step += 1
    assert not eng.has_unfinished, f"seed {seed}: requests left after {step} steps"
    assert (
        eng.kv_cache_manager.num_free_pages
        == eng.kv_cache_manager.pool.num_usable_pages
    )
    for rid, seen in outs.items():
        finals = [o for o in seen if o.finished]
        assert len(finals) == 1, f"{rid} ended {len(finals)} times"
        assert seen[-1] is finals[0]
        final = finals[0]
        if final.finish_reason == "error":
            assert final.error_is_request, final.error  # only "too large even alone"
            continue
        # What was streamed is exactly what the request ended with.
        assert "".join(o.delta_text for o in seen) == final.text, rid
    return {"preemptions": eng.metrics.num_preemptions,
            "aborted": eng.metrics.num_requests_aborted}  # fmt: skip


@pytest.mark.parametrize("seed", range(8))
def test_random_workload_keeps_every_invariant(tiny, seed, monkeypatch):
    run_workload(tiny, seed, monkeypatch)


def test_the_random_workloads_reach_preemptions_and_every_abort_point(
    tiny, monkeypatch
):
    totals = [run_workload(tiny, seed, monkeypatch) for seed in range(8, 12)]
    assert sum(t["preemptions"] for t in totals) > 0
    assert sum(t["aborted"] for t in totals) > 0
