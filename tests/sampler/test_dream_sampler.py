"""Dream's sampler: shifted logits, its confidence rules and its schedule.

The rules against Dream's loop are in ``test_dream_options.py`` (one oracle
for the rules and the options); here the schedule, the shift, the cached modes
and MaskKV on Dream.
"""

from __future__ import annotations

import dataclasses

import pytest

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint
from maskkv_vllm.sampler.dream_rules import dream_transfer_count
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

PROMPTS = [[5, 17, 99, 3, 42, 8], [200, 7]]


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    ckpt = write_tiny_dream_checkpoint(tmp_path_factory.mktemp("dream"), seed=2)
    return load_checkpoint(ckpt)


def test_the_schedule_commits_the_masked_share_and_the_rest_at_the_end():
    # 12 masked over 4 steps, t = linspace(1, 0.001, 5) = 1, 0.75025, 0.5005,
    # 0.25075, 0.001: int(12 x 0.24975) = 2, int(10 x 0.3329) = 3,
    # int(7 x 0.4990) = 3, and the last step takes the 4 that remain.
    left, counts = 12, []
    for i in range(4):
        k = dream_transfer_count(left, i, 4)
        counts.append(k)
        left -= k
    assert counts == [2, 3, 3, 4] and left == 0


def test_without_the_shift_the_tokens_differ(dream, monkeypatch):
    # The shift matters: reading slot i from output i is another model.
    model, tok = dream
    runner = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
    params = SamplingParams(gen_length=8, block_length=8, steps=8, remasking="entropy")
    shifted = [o.token_ids for o in runner.generate(PROMPTS, params)]
    monkeypatch.setattr(runner, "shift", 0)
    assert [o.token_ids for o in runner.generate(PROMPTS, params)] != shifted


@pytest.fixture(scope="module")
def one_layer_dream(tmp_path_factory):
    out = tmp_path_factory.mktemp("dream1")
    return load_checkpoint(write_tiny_dream_checkpoint(out, seed=4, n_layers=1))


def _tokens(runner, params):
    return [o.token_ids for o in runner.generate(PROMPTS, params)]


CACHED = {
    "prefix": (CacheConfig("prefix"), None),
    "paged": (CacheConfig("paged", page_size=4, num_pages=400), None),
    "paged+dual": (CacheConfig("paged", page_size=4, num_pages=400), "dual"),
    "paged+dual_refresh": (
        CacheConfig("paged", page_size=4, num_pages=400),
        "dual_refresh",
    ),
}


@pytest.mark.parametrize("mode", list(CACHED))
@pytest.mark.parametrize(
    "alg", ["maskgit_plus", "entropy", "low_confidence", "fast_dllm_block"]
)
def test_one_layer_dream_is_exact_in_every_cached_mode(one_layer_dream, mode, alg):
    # With one layer the prompt's cached K/V are exactly a full forward's, so a
    # cached step must give none's tokens: the slot before each forwarded span
    # runs as a query only (its output reads the span's first slot).
    model, tok = one_layer_dream
    cache, canvas = CACHED[mode]
    params = SamplingParams(
        gen_length=12, block_length=4, steps=12, remasking=alg, canvas_cache=canvas
    )
    none = ModelRunner(model, tok, CacheConfig("none"), early_stop=False)
    cached = ModelRunner(model, tok, cache, early_stop=False)
    plain = dataclasses.replace(params, canvas_cache=None)
    assert _tokens(cached, params) == _tokens(none, plain)


def test_paged_dream_equals_the_dense_prefix_cache(dream):
    model, tok = dream
    params = SamplingParams(
        gen_length=12, block_length=4, steps=12, remasking="entropy"
    )
    prefix = ModelRunner(model, tok, CacheConfig("prefix"), early_stop=False)
    paged = ModelRunner(model, tok, CACHED["paged"][0], early_stop=False)
    assert _tokens(paged, params) == _tokens(prefix, params)


def test_maskkv_evicts_dream_s_prompt_per_kv_head_and_returns_every_page(dream):
    model, tok = dream
    runner = ModelRunner(model, tok, CACHED["paged"][0], early_stop=False)
    params = SamplingParams(
        gen_length=8, block_length=8, steps=8, remasking="maskgit_plus",
        kv_policy="maskkv", kv_budget=3,
    )  # fmt: skip
    prompt = list(range(40, 72))  # M = 32
    seq = runner.make_sequence(0, prompt, params)
    runner.step([seq])
    held = runner.prompt_cache.cache.manager.tables[seq.cache_keys[0]]
    kept = held.tokens_per_head()  # (layers, KV heads)
    assert len(kept[0]) == model.config.n_kv_heads == 2
    assert all(n < 32 for layer in kept for n in layer)  # evicted per KV head
    while not seq.is_finished:
        runner.step([seq])
    assert runner.prompt_cache.page_pool.num_used_pages == 0
