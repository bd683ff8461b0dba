"""``paged`` mode: the prompt KV lives in the page pool and always goes back to it."""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.paging.page_pool import NoFreePagesError
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

PROMPTS = ["The quick brown fox jumps", "x", "Paged KV for a diffusion LLM, " * 3]
GREEDY = SamplingParams(gen_length=16, block_length=8, steps=16)
SAMPLED = SamplingParams(
    gen_length=16, block_length=4, steps=8, temperature=0.7, seed=5
)
CFG = SamplingParams(gen_length=8, block_length=8, steps=8, cfg_scale=0.5)
THRESHOLD = SamplingParams(gen_length=16, block_length=8, steps=16, threshold=0.05)
ALL = [GREEDY, SAMPLED, CFG, THRESHOLD]


def paged(model_tok, **kw):
    model, tok = model_tok
    cfg = CacheConfig("paged", page_size=kw.pop("page_size", 16), **kw)
    return ModelRunner(model, tok, cfg)


def pool(sampler):
    return sampler.prompt_cache.cache.pool


@pytest.mark.parametrize("params", ALL, ids=["greedy", "sampled", "cfg", "threshold"])
@pytest.mark.parametrize("fixture", ["tiny", "gqa"])
@pytest.mark.parametrize("page_size", [16, 5])
def test_paged_produces_exactly_the_prefix_tokens(request, fixture, params, page_size):
    model_tok = request.getfixturevalue(fixture)
    model, tok = model_tok
    prefix = ModelRunner(model, tok, CacheConfig("prefix")).generate(PROMPTS, params)
    s = paged(model_tok, page_size=page_size, num_pages=1000)
    out = s.generate(PROMPTS, params)
    assert [o.token_ids for o in out] == [o.token_ids for o in prefix]
    assert pool(s).num_free_pages == pool(s).num_usable_pages


def test_paged_with_refresh_every_step_equals_none(tiny):
    model, tok = tiny
    none = ModelRunner(model, tok, CacheConfig("none")).generate(PROMPTS, SAMPLED)
    s = paged(tiny, num_pages=400, prompt_refresh_interval=1)
    out = s.generate(PROMPTS, SAMPLED)
    assert [o.token_ids for o in out] == [o.token_ids for o in none]
    assert pool(s).num_free_pages == pool(s).num_usable_pages


def test_pages_held_match_the_prompt_and_are_reported(tiny):
    model, tok = tiny
    s = paged(tiny, num_pages=100)
    seq = s.make_sequence(0, "hello world!", GREEDY)  # 13 tokens -> 1 page of 16
    s.step([seq])
    c = model.config
    assert pool(s).num_used_pages == c.n_layers * c.n_kv_heads == 8
    stats = s.prompt_cache.cache.request_stats(seq.cache_keys[0])
    assert stats["tokens_per_head"] == [[13] * 4, [13] * 4]
    assert stats["bytes"] == 8 * 16 * (2 * 32 * 4)
    s.free(seq)
    assert pool(s).num_used_pages == 0


def test_each_request_frees_its_pages_when_it_finishes(tiny):
    s = paged(tiny, num_pages=100)
    short = s.make_sequence(
        0, "a", SamplingParams(gen_length=8, block_length=8, steps=2)
    )
    long = s.make_sequence(
        1, "b", SamplingParams(gen_length=8, block_length=8, steps=8)
    )
    s.step([short, long])
    assert pool(s).num_used_pages == 16
    s.step([short, long])
    assert short.is_finished and not long.is_finished
    assert pool(s).num_used_pages == 8  # the finished request's pages are back
    while not long.is_finished:
        s.step([long])
    assert pool(s).num_used_pages == 0


def test_cancelled_request_frees_its_pages(tiny):
    s = paged(tiny, num_pages=100)
    seq = s.make_sequence(0, "cancel me", GREEDY)
    s.step([seq])
    s.step([seq])
    assert pool(s).num_used_pages > 0
    s.free(seq)  # what an abort does
    s.free(seq)  # idempotent
    assert pool(s).num_free_pages == pool(s).num_usable_pages


def test_failure_mid_generation_frees_every_page(tiny, monkeypatch):
    s = paged(tiny, num_pages=100)
    calls = {"n": 0}
    real = s.model.forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fell over")
        return real(*args, **kwargs)

    monkeypatch.setattr(s.model, "forward", flaky)
    with pytest.raises(RuntimeError, match="device fell over"):
        s.generate(PROMPTS, GREEDY)
    assert pool(s).num_free_pages == pool(s).num_usable_pages


def test_running_out_of_pages_is_a_clear_error_and_leaks_nothing(tiny):
    # 9 pages: the first request fills 8, the second cannot get its first layer.
    s = paged(tiny, num_pages=10)
    with pytest.raises(NoFreePagesError, match="need 4 KV pages but only 1 of 9"):
        s.generate(["first prompt", "second prompt"], GREEDY)
    assert pool(s).num_free_pages == 9
    # The same pool serves them one at a time.
    narrow = ModelRunner(s.model, s.tokenizer, s.cache_config, max_num_seqs=1)
    outs = narrow.generate(["first prompt", "second prompt"], GREEDY)
    assert len(outs) == 2 and pool(narrow).num_free_pages == 9


def test_output_bytes_are_the_peak_page_bytes(tiny):
    s = paged(tiny, num_pages=100)
    (out,) = s.generate(["0123456789" * 2], GREEDY)  # 21 tokens -> 2 pages per head
    assert out.prompt_kv_bytes == 2 * 8 * 16 * (2 * 32 * 4)


def test_bf16_paged_matches_prefix(tiny_dir):
    from maskkv_vllm.models.loader import load_checkpoint

    model, tok = load_checkpoint(tiny_dir, dtype="bfloat16")
    prefix = ModelRunner(model, tok, CacheConfig("prefix")).generate(PROMPTS, GREEDY)
    s = ModelRunner(model, tok, CacheConfig("paged", num_pages=200))
    out = s.generate(PROMPTS, GREEDY)
    assert s.prompt_cache.cache.store.k_cache.dtype == torch.bfloat16
    # Both run their attention in bf16 (issue 18: paged ran it in fp32, so bf16
    # paged and prefix outputs differed).
    assert [o.token_ids for o in out] == [p.token_ids for p in prefix]
