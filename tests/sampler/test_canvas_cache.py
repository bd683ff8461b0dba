"""The dual canvas cache: a block's later steps forward only its rows.

Oracle: with ONE layer, a canvas position's K/V depend only on its token and
position, so the cached K/V of the canvas outside the block are exactly what a
full recomputation gives, and ``dual`` must reproduce ``none`` token for token.
"""

from __future__ import annotations

import dataclasses

import pytest

from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.kv_cache_manager import KVCacheManager
from maskkv_vllm.eviction.budget import fewest_pages, reserved_pages
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny import write_tiny_checkpoint
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner
from tests.sampler.conftest import CASES, GREEDY, PROMPTS


@pytest.fixture(scope="module", params=[1, 2], ids=["mha", "gqa"])
def one_layer(request, tmp_path_factory):
    kv = {1: 4, 2: 2}[request.param]
    out = tmp_path_factory.mktemp("one_layer")
    return load_checkpoint(
        write_tiny_checkpoint(out, seed=3, n_layers=1, n_kv_heads=kv)
    )


def runner(model_tok, page_size=5, num_pages=3000):
    model, tok = model_tok
    cache = CacheConfig("paged", page_size=page_size, num_pages=num_pages)
    return ModelRunner(model, tok, cache)


def kinds_of(r, monkeypatch):
    """Record the kind of every forward the runner makes."""
    seen, run = [], r._forward_and_commit

    def spy(seqs, kind):
        seen.append(kind)
        return run(seqs, kind)

    monkeypatch.setattr(r, "_forward_and_commit", spy)
    return seen


def tokens(outputs):
    return [o.token_ids for o in outputs]


@pytest.mark.parametrize("case", list(CASES))
def test_one_layer_dual_equals_none_and_runs_block_forwards(
    one_layer, case, monkeypatch
):
    params = CASES[case]
    r = runner(one_layer)
    none = tokens(r.generate(PROMPTS, params))
    seen = kinds_of(r, monkeypatch)
    dual = r.generate(PROMPTS, dataclasses.replace(params, canvas_cache="dual"))
    assert tokens(dual) == none
    assert "block" in seen and seen[0] == "full"
    assert r.prompt_cache.page_pool.num_free_pages == 2999  # every page went back


def test_a_block_forward_computes_only_the_block(one_layer, monkeypatch):
    r = runner(one_layer)
    widths, forward = [], r.model.forward

    def spy(ids, pos, attn):
        widths.append(ids.shape[1])
        return forward(ids, pos, attn)

    monkeypatch.setattr(r.model, "forward", spy)
    params = dataclasses.replace(GREEDY, canvas_cache="dual")
    r.generate([[5]], params)  # M = 1
    # gen 16 in blocks of 4, one token a step: per block one forward of the
    # canvas (step 0: prompt + canvas) and three of the block's 4 rows.
    assert widths == [17] + [4] * 3 + ([16] + [4] * 3) * 3


def test_dual_refresh_recomputes_the_prompt_at_every_block_boundary(
    one_layer, monkeypatch
):
    r = runner(one_layer)
    seen = kinds_of(r, monkeypatch)
    params = dataclasses.replace(GREEDY, canvas_cache="dual_refresh")
    got = tokens(r.generate([[5]], params))
    # gen 16 in blocks of 4: each block opens with a forward over prompt and
    # canvas (Fast-dLLM's generate_with_dual_cache), then 3 block forwards.
    assert seen == (["full"] + ["block"] * 3) * 4
    assert got == tokens(r.generate([[5]], GREEDY))  # exact with one layer
    assert r.prompt_cache.page_pool.num_free_pages == 2999
    with pytest.raises(ValueError, match="kv_policy='snapkv' evicts"):
        dataclasses.replace(params, kv_policy="snapkv", kv_budget=4)


def test_one_block_is_exactly_none_on_a_deeper_model(tiny):
    r = runner(tiny)
    params = SamplingParams(gen_length=8, block_length=8, steps=8)
    dual = dataclasses.replace(params, canvas_cache="dual")
    assert tokens(r.generate(PROMPTS, dual)) == tokens(r.generate(PROMPTS, params))


def test_canvas_entries_follow_the_prompt_in_each_heads_pages(tiny):
    r = runner(tiny, page_size=4)
    params = SamplingParams(
        gen_length=12, block_length=4, steps=12, canvas_cache="dual",
        kv_policy="maskkv", kv_budget=3,
    )  # fmt: skip
    cache = r.prompt_cache.cache
    held = {}
    for canvas in ("none", "dual"):
        p = dataclasses.replace(params, canvas_cache=canvas)
        seq = r.make_sequence(0, list(range(1, 11)), p)  # M = 10
        r.step([seq])
        key = seq.cache_keys[0]
        held[canvas] = cache.manager.tables[key].tokens_per_head()
        _, prompt_lens = cache.page_tables([key], 1, prompt_only=True)
        r.free(seq)
    assert cache.canvas_tokens == {} and r.prompt_cache.page_pool.num_used_pages == 0
    # The same prompt entries per head as without the canvas cache, then C =
    # 12 - the block's 4 = 8 canvas entries.
    assert held["dual"] == [[n + 8 for n in layer] for layer in held["none"]]
    assert prompt_lens[0].tolist() == held["none"][1]
    assert sum(map(sum, held["none"])) <= 2 * 4 * 3  # layers x heads x B


def test_the_admission_bound_counts_the_canvas_pages():
    # M = 10, P = 4, 2 KV heads, full cache: 2 x ceil(10 / 4) = 6 pages a layer;
    # with C = 8 canvas entries after it: 2 x ceil(18 / 4) = 10.
    assert reserved_pages([10, 10], 10, 2, 4) == 12
    assert reserved_pages([10, 10], 10, 2, 4, canvas_tokens=8) == 20
    # B = 3: ceil((2 x 3 + 2 x 8) / 4) + 2 = 8 a layer; at least ceil(2 x 11 / 4) = 6.
    assert reserved_pages([3, 3], 10, 2, 4, canvas_tokens=8) == 16
    assert fewest_pages([3, 3], 10, 2, 4, canvas_tokens=8) == 12
    assert fewest_pages([10, 10], 10, 2, 4, canvas_tokens=8) == 20


def test_the_engine_reserves_what_a_dual_row_takes(tiny):
    r = runner(tiny, page_size=4)
    kv = KVCacheManager(r.prompt_cache, r.policies, 2, 4)
    params = SamplingParams(gen_length=12, block_length=4, steps=12)
    dual = dataclasses.replace(params, canvas_cache="dual")
    assert kv.reserved_pages(params, 10) == 2 * 4 * 3
    assert kv.reserved_pages(dual, 10) == 2 * 4 * 5  # ceil((10 + 8) / 4) a head
    seq = r.make_sequence(0, list(range(1, 11)), dual)
    r.step([seq])
    assert r.prompt_cache.page_pool.num_used_pages == 2 * 4 * 5


def test_bad_canvas_cache_values_are_named(tiny):
    with pytest.raises(ValueError, match="canvas_cache='fast' is not one of"):
        SamplingParams(canvas_cache="fast")
    with pytest.raises(
        ValueError, match="canvas_cache='dual' needs cache_mode='paged'"
    ):
        EngineConfig(canvas_cache="dual", cache=CacheConfig("prefix"))
    model, tok = tiny
    prefix = ModelRunner(model, tok, CacheConfig("prefix"))
    with pytest.raises(
        ValueError, match="canvas_cache='dual' needs cache_mode='paged'"
    ):
        prefix.generate(["x"], dataclasses.replace(GREEDY, canvas_cache="dual"))


def test_the_engine_default_applies_to_requests_that_choose_none(tiny, tiny_dir):
    from maskkv_vllm.engine.llm import LLM

    llm = LLM(str(tiny_dir), canvas_cache="dual", num_pages=400, device="cpu")
    eng = llm.engine
    assert eng.make_request("x", GREEDY).params.canvas_cache == "dual"
    none = dataclasses.replace(GREEDY, canvas_cache="none")
    assert eng.make_request("x", none).params.canvas_cache == "none"
    got = tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    dual = dataclasses.replace(GREEDY, canvas_cache="dual")
    assert got == tokens(runner(tiny).generate(PROMPTS, dual))
    assert eng.kv_cache_manager.num_free_pages == 399
