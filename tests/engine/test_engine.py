"""The engine: scheduling by free pages, preemption, aborts, LLM.generate."""

from __future__ import annotations

import pytest

from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.engine.llm_engine import LLMEngine, QueueFullError
from maskkv_vllm.eviction import registry
from maskkv_vllm.eviction.policy import Policy
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

P = SamplingParams(gen_length=16, block_length=8, steps=16)
PROMPTS = [f"request number {i}: " + "abc " * i for i in range(10)]


def engine(tiny, num_pages=4000, **kw):
    model, tok = tiny
    cache = CacheConfig("paged", page_size=16, num_pages=num_pages)
    return LLMEngine(EngineConfig(cache=cache, **kw), model, tok)


def run_all(eng, prompts, params):
    reqs = [eng.make_request(p, params) for p in prompts]
    for r in reqs:
        eng.add_request(r)
    done = {}
    while eng.has_unfinished:
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    return [done[r.request_id] for r in reqs]


def optimistic(make_request):
    """``make_request`` whose requests claim 1 page: a wrong prediction."""

    def make(*args, **kwargs):
        r = make_request(*args, **kwargs)
        r.predicted_pages = 1
        return r

    return make


def all_pages_free(eng) -> bool:
    pool = eng.kv_cache_manager.pool
    return pool.num_free_pages == pool.num_usable_pages


@pytest.mark.parametrize("policy, budget", [("full", None), ("maskkv", 8)])
def test_engine_matches_the_sampler(tiny, policy, budget):
    params = SamplingParams(**{**P.__dict__, "kv_policy": policy, "kv_budget": budget})
    model, tok = tiny
    ref = ModelRunner(model, tok, CacheConfig("paged", num_pages=4000))
    want = [o.token_ids for o in ref.generate(PROMPTS, params)]
    got = run_all(engine(tiny, max_num_seqs=3), PROMPTS, params)
    assert [o.token_ids for o in got] == want
    assert all(o.finished and o.finish_reason in ("stop", "length") for o in got)


def test_small_pool_queues_and_finishes_everything_with_the_same_outputs(tiny):
    big = engine(tiny)
    want = run_all(big, PROMPTS, P)
    # Each prompt needs 8 pages (2 layers x 4 heads, < 16 tokens per head)
    # or 16; 40 pages hold only a few at a time.
    small = engine(tiny, num_pages=41)
    got = run_all(small, PROMPTS, P)
    assert [o.text for o in got] == [o.text for o in want]
    assert small.scheduler.max_running < len(PROMPTS)
    assert all_pages_free(small)


def test_preemption_when_pages_run_out_gives_the_same_outputs(tiny, monkeypatch):
    want = run_all(engine(tiny), PROMPTS, P)
    small = engine(tiny, num_pages=41)
    # Predict too few pages so that admission overshoots and prefill runs short.
    monkeypatch.setattr(small, "make_request", optimistic(small.make_request))
    got = run_all(small, PROMPTS, P)
    assert [o.text for o in got] == [o.text for o in want]
    assert small.metrics.num_preemptions > 0
    assert all_pages_free(small)


def test_request_larger_than_the_pool_is_refused(tiny):
    eng = engine(tiny, num_pages=5)
    with pytest.raises(ValueError, match="needs 8 KV pages but the pool holds 4"):
        eng.make_request("hello", P)


def test_abort_frees_pages_and_reports(tiny):
    eng = engine(tiny)
    r = eng.make_request("abort me please", P)
    eng.add_request(r)
    eng.step()
    eng.step()
    assert eng.kv_cache_manager.pool.num_used_pages == 8
    out = eng.abort_request(r.request_id)
    assert out.finished and out.finish_reason == "abort"
    assert eng.kv_cache_manager.pool.num_used_pages == 0 and not eng.has_unfinished
    assert eng.abort_request(r.request_id) is None


def test_queue_limit_and_duplicate_ids(tiny):
    eng = engine(tiny, max_queue_len=2)
    eng.add_request(eng.make_request("a", P, request_id="x"))
    with pytest.raises(ValueError, match="'x' is already in use"):
        eng.add_request(eng.make_request("b", P, request_id="x"))
    eng.add_request(eng.make_request("c", P))
    with pytest.raises(QueueFullError, match="2 requests are waiting"):
        eng.add_request(eng.make_request("d", P))


def test_stream_outputs_grow_block_by_block(tiny):
    eng = engine(tiny)
    r = eng.make_request(
        "stream", SamplingParams(gen_length=32, block_length=8, steps=32)
    )
    eng.add_request(r)
    texts, deltas = [], []
    while eng.has_unfinished:
        for out in eng.step():
            texts.append(out.text)
            deltas.append(out.delta_text)
    assert "".join(deltas) == texts[-1]
    assert len(texts) >= 2 and all(
        b.startswith(a) for a, b in zip(texts, texts[1:], strict=False)
    )
    stats = out.stats
    assert stats.time_to_first_block <= stats.total_time
    assert stats.prompt_tokens == len(r.prompt_token_ids) and stats.num_pages == 8


def test_llm_generate_api(tiny_dir):
    llm = LLM(str(tiny_dir), kv_policy="maskkv", kv_budget=4, kv_cache_memory="8MiB")
    outs = llm.generate(PROMPTS[:4], P, use_tqdm=False)
    assert [o.request_id for o in outs] == ["req-0", "req-1", "req-2", "req-3"]
    for o in outs:
        assert o.finished and o.finish_reason in ("stop", "length")
        assert o.stats.kept_kv_entries <= 2 * 4 * 4 + 2 * 4  # ~B per head per layer
        assert o.stats.evicted_kv_entries > 0
    full = llm.generate("one prompt", SamplingParams(gen_length=8, block_length=8,
                                                     steps=8, kv_policy="full"),
                        use_tqdm=False)  # fmt: skip
    assert full[0].stats.evicted_kv_entries == 0
    chat = llm.chat([{"role": "user", "content": "hi"}], P, use_tqdm=False)
    assert chat[0].finished
    with pytest.raises(ValueError, match="got 1 SamplingParams for 2 prompts"):
        llm.generate(["a", "b"], [P])
    assert all_pages_free(llm.engine)


def test_a_request_whose_safe_bound_exceeds_the_pool_still_runs(tiny_dir):
    # 9 usable pages, maskkv B = 4: the safe bound of each request (10 pages) is
    # above the pool; once all three waited forever with 9/9 free (issue 14,
    # item 1). Capped at the pool, each runs with the pool to itself, and as the
    # bound is reserved before the forward nothing runs short or is preempted.
    llm = LLM(str(tiny_dir), kv_policy="maskkv", kv_budget=4, num_pages=10)
    eng = llm.engine
    params = SamplingParams(gen_length=8, block_length=8, steps=8)
    for i in range(3):
        eng.add_request(eng.make_request("x" * (20 + 7 * i), params))
    finished = []
    for _ in range(200):
        finished += [o.finish_reason for o in eng.step() if o.finished]
        if not eng.has_unfinished:
            break
    assert finished == ["length"] * 3
    assert eng.scheduler.max_running == 1
    assert eng.metrics.num_preemptions == 0
    assert eng.kv_cache_manager.num_free_pages == 9


def test_a_preempted_stream_sends_each_block_once(tiny, monkeypatch):
    # 12 pages: a streams with 8; b is admitted on an optimistic 1-page guess, its
    # prefill runs short and a (the newest other) is preempted mid-stream. The
    # restart resent a's whole text as a delta (issue 14, item 4).
    eng = engine(tiny, num_pages=13)
    params = SamplingParams(gen_length=32, block_length=8, steps=32)
    a = eng.make_request("first", params)
    eng.add_request(a)
    outs = []
    while len(outs) < 2:  # two blocks streamed
        outs += [o for o in eng.step() if o.request_id == a.request_id]
    monkeypatch.setattr(eng, "make_request", optimistic(eng.make_request))
    eng.add_request(eng.make_request("second", params))
    while eng.has_unfinished:
        outs += [o for o in eng.step() if o.request_id == a.request_id]
    assert eng.metrics.num_preemptions >= 2  # b and a
    assert outs[-1].finished and outs[-1].text
    assert "".join(o.delta_text for o in outs) == outs[-1].text
    assert eng.kv_cache_manager.num_free_pages == 12


class BrokenScorer(Policy):
    def scores(self, ctx):
        raise RuntimeError("broken scorer")


def test_a_request_that_raises_in_the_batched_step_fails_alone(tiny, monkeypatch):
    # A registered policy whose scorer raises ran inside the batched forward and
    # failed every request in flight (issue 14, item 3).
    monkeypatch.setitem(registry._POLICIES, "broken", lambda c, p: BrokenScorer())
    want = run_all(engine(tiny), PROMPTS[:3], P)
    eng = engine(tiny)
    bad = SamplingParams(gen_length=16, block_length=8, steps=16,
                         kv_policy="broken", kv_budget=4)  # fmt: skip
    reqs = [eng.make_request(p, P) for p in PROMPTS[:3]]
    reqs.insert(1, eng.make_request("a bad request " * 3, bad))
    for r in reqs:
        eng.add_request(r)
    done = {}
    while eng.has_unfinished:
        done.update({o.request_id: o for o in eng.step() if o.finished})
    outs = [done[r.request_id] for r in reqs]
    assert outs[1].finish_reason == "error" and "broken scorer" in outs[1].error
    assert [o.text for o in outs[:1] + outs[2:]] == [o.text for o in want]
    assert eng.metrics.num_requests_failed == 1
    assert all_pages_free(eng)


def test_a_request_that_cannot_start_fails_alone(tiny, monkeypatch):
    eng = engine(tiny)
    reqs = [eng.make_request(p, P) for p in PROMPTS[:2]]
    real = eng.model_runner.new_sequence

    def new_sequence(rid, ids, params):
        if ids == reqs[0].prompt_token_ids:
            raise RuntimeError("no canvas for you")
        return real(rid, ids, params)

    monkeypatch.setattr(eng.model_runner, "new_sequence", new_sequence)
    for r in reqs:
        eng.add_request(r)
    done = {}
    while eng.has_unfinished:
        done.update({o.request_id: o for o in eng.step() if o.finished})
    assert done[reqs[0].request_id].finish_reason == "error"
    assert "no canvas for you" in done[reqs[0].request_id].error
    assert done[reqs[1].request_id].finish_reason in ("stop", "length")


def test_a_request_is_validated_once(tiny, monkeypatch):
    # make_request validated it, then the sampler again at each (re)start.
    eng = engine(tiny)
    calls, real = [], eng.model_runner.validate

    def validate(prompt, params):
        calls.append(prompt)
        return real(prompt, params)

    monkeypatch.setattr(eng.model_runner, "validate", validate)
    run_all(eng, PROMPTS[:3], P)
    assert calls == PROMPTS[:3]
    # The sampler's own entry (standalone use) validates each prompt once too.
    calls.clear()
    eng.model_runner.generate(PROMPTS[:2], P)
    assert calls == PROMPTS[:2]


@pytest.mark.parametrize("refresh", [None, 2])
def test_pages_are_reserved_before_the_forward(tiny, monkeypatch, refresh):
    # MaskKV requests on a tight pool (with re-voting refreshes too): admission and
    # ``_reserve`` count each request's bound, so no allocation inside a forward
    # runs short. They were admitted on an even head split and learned of a
    # shortage from NoFreePagesError mid-forward, then undid and preempted.
    kw = {"kv_policy": "maskkv", "kv_budget": 4}
    want = run_all(engine(tiny, **kw), PROMPTS, P)
    model, tok = tiny
    cache = CacheConfig(
        "paged", page_size=16, num_pages=25, prompt_refresh_interval=refresh
    )
    eng = LLMEngine(EngineConfig(cache=cache, **kw), model, tok)
    short, allocate = [], eng.kv_cache_manager.pool.allocate

    def counted(n):
        if not eng.kv_cache_manager.pool.can_allocate(n):
            short.append(n)
        return allocate(n)

    monkeypatch.setattr(eng.kv_cache_manager.pool, "allocate", counted)
    got = run_all(eng, PROMPTS, P)
    # The engine owns the pool and the policies; the sampler runs over them.
    assert eng.model_runner.prompt_cache is eng.kv_cache
    assert eng.model_runner.policies is eng.policies
    assert short == []
    assert eng.scheduler.max_running > 1
    assert all_pages_free(eng)
    if refresh is None:
        assert eng.metrics.num_preemptions == 0
        assert [o.text for o in got] == [o.text for o in want]


def test_kv_stats_of_a_request_that_finishes_in_its_first_step(tiny):
    # One step for the whole canvas: the request ends (and frees its pages) in
    # the step that wrote them. Its stats used to read the freed cache: kept 0,
    # every entry "evicted", 0 pages.
    eng = engine(tiny, kv_policy="maskkv", kv_budget=4)
    params = SamplingParams(gen_length=8, block_length=8, steps=1)
    r = eng.make_request("The quick brown fox jumps over", params)
    eng.add_request(r)
    while eng.has_unfinished:
        eng.step()
    m = len(r.prompt_token_ids)
    # 2 layers x 4 KV heads; every head keeps at least one entry and one page.
    assert 8 <= r.stats.kept_kv_entries <= 2 * 4 * m
    assert r.stats.evicted_kv_entries == 2 * 4 * m - r.stats.kept_kv_entries
    assert r.stats.num_pages >= 8
    assert eng.kv_cache_manager.num_free_pages == 4000 - 1


@pytest.mark.parametrize(("refresh", "prompt_steps"), [(None, 1), (4, 4)])
def test_metrics_time_the_steps_that_forward_a_prompt(
    tiny, monkeypatch, refresh, prompt_steps
):
    # Each step lasts one tick of a fake clock: the prompt's share is a step count.
    import itertools
    import types

    from maskkv_vllm.engine import llm_engine

    ticks = itertools.count()
    clock = types.SimpleNamespace(
        perf_counter=lambda: next(ticks) / 2, monotonic=llm_engine.time.monotonic
    )
    monkeypatch.setattr(llm_engine, "time", clock)
    model, tok = tiny
    cache = CacheConfig("paged", page_size=16, num_pages=4000,
                        prompt_refresh_interval=refresh)  # fmt: skip
    eng = LLMEngine(EngineConfig(cache=cache), model, tok)
    run_all(eng, ["The quick brown fox"], P)
    m = eng.metrics
    assert m.num_steps == 16
    assert m.step_seconds_sum == 8.0
    assert m.prompt_step_seconds_sum == prompt_steps / 2
