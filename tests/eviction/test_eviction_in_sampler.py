"""Eviction during the first step, through the sampler and the page pool."""

from __future__ import annotations

import json

import pytest
import torch

from maskkv_vllm.calibration import compute_profile
from maskkv_vllm.cli import main
from maskkv_vllm.config import CacheConfig, MaskKVConfig
from maskkv_vllm.eviction.profile import LayerProfile
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner

PROMPT = "Eviction keeps the prompt tokens that the mask queries vote for. " * 2


def params(policy="maskkv", budget=16, **kw):
    base = {"gen_length": 16, "block_length": 8, "steps": 16}
    return SamplingParams(**{**base, **kw}, kv_policy=policy, kv_budget=budget)


def paged(model_tok, num_pages=2000, **maskkv):
    model, tok = model_tok
    cache = CacheConfig("paged", num_pages=num_pages, page_size=4)
    return ModelRunner(model, tok, cache, maskkv_config=MaskKVConfig(**maskkv))


def pool(s):
    return s.prompt_cache.cache.pool


@pytest.mark.parametrize("fixture", ["tiny", "gqa"])
def test_uniform_maskkv_with_budget_above_the_prompt_equals_full(request, fixture):
    model_tok = request.getfixturevalue(fixture)
    s = paged(model_tok, alpha=1.0, beta=1.0)
    m = len(model_tok[1].encode(PROMPT))
    full = s.generate([PROMPT], params("full", None))[0]
    kept = s.generate([PROMPT], params("maskkv", m + 3))[0]
    assert kept.token_ids == full.token_ids
    assert kept.prompt_kv_entries == full.prompt_kv_entries


def test_a_budget_of_the_prompt_length_keeps_every_entry(tiny):
    # eq. 15 floors a low-preference head at alpha * k, which evicted from a
    # prompt that fits the budget; B >= M now keeps everything (issue 14 #10).
    s = paged(tiny)
    m = len(tiny[1].encode(PROMPT))
    seq = s.make_sequence(0, PROMPT, params("maskkv", m))
    s.step([seq])
    counts = s.prompt_cache.cache.request_stats(seq.cache_keys[0])["tokens_per_head"]
    assert counts == [[m] * len(counts[0])] * len(counts)
    s.free(seq)


def read_head(cache, key, layer, head):
    """(k (n, d), v (n, d)) a head holds, read through its pages in order."""
    h = cache.manager.head(key, layer, head)
    d = cache.store.head_dim
    k = cache.store.k_cache[h.page_ids].reshape(-1, d)[: h.num_tokens]
    return k, cache.store.v_cache[h.page_ids].reshape(-1, d)[: h.num_tokens]


def test_kept_keys_are_the_full_caches_keys_in_prompt_order(gqa):
    full_s, kv_s = paged(gqa), paged(gqa)
    full = full_s.make_sequence(0, PROMPT, params("full", None))
    kept = kv_s.make_sequence(0, PROMPT, params("maskkv", 6))
    full_s.step([full])
    kv_s.step([kept])
    # The first step's output uses the full context: the same tokens are committed.
    assert torch.equal(full.canvas, kept.canvas)
    fc, kc = full_s.prompt_cache.cache, kv_s.prompt_cache.cache
    for layer in range(2):
        for head in range(2):
            k_kept, v_kept = read_head(kc, kept.cache_keys[0], layer, head)
            k_all, v_all = read_head(fc, full.cache_keys[0], layer, head)
            assert len(k_all) == len(PROMPT) + 1 > len(k_kept)  # BOS + the prompt
            # Bit-identical post-RoPE keys of prompt tokens, in prompt order, so
            # every canvas query scores a kept key exactly as the full cache would.
            match = (k_kept[:, None] == k_all[None]).all(-1)  # (kept, all)
            assert bool(match.any(1).all())
            where = match.float().argmax(1)
            assert where.tolist() == sorted(set(where.tolist()))
            assert torch.equal(v_kept, v_all[where])
    full_s.free(full)
    kv_s.free(kept)


def test_canvas_is_never_evicted_and_heads_attend_their_kept_counts(tiny):
    s = paged(tiny)
    seq = s.make_sequence(0, PROMPT, params("snapkv", 8))
    s.step([seq])
    cache = s.prompt_cache.cache
    for layer in range(2):
        _, lens = cache.page_tables([seq.cache_keys[0]], layer)
        assert lens.tolist() == [[8] * 4]
    s.step([seq])  # later steps: kept prompt keys + all 16 canvas keys
    assert seq.num_steps == 2 and (seq.canvas != 261).sum() == 2
    s.free(seq)


def test_pool_high_water_is_the_compressed_cache_not_the_full_prompt(tiny):
    long_prompt = "0123456789abcdef" * 24  # 385 tokens
    s = paged(tiny, num_pages=5000)
    seq = s.make_sequence(0, long_prompt, params("maskkv", 16))
    s.step([seq])
    held = pool(s).num_used_pages
    m, heads, layers, page = 385, 4, 2, 4
    one_layer_full = heads * -(-m // page)
    assert pool(s).max_used_pages == held
    assert held <= layers * heads * -(-16 // page) + layers * heads + one_layer_full
    assert held < layers * one_layer_full / 4  # far below the full prompt's pages
    s.free(seq)
    assert pool(s).num_free_pages == pool(s).num_usable_pages


def test_mixed_policies_in_one_batch_equal_each_alone(tiny):
    s = paged(tiny)
    prompts = [PROMPT, "short one", PROMPT[:50], "x" * 30]
    chosen = [
        params("maskkv", 8),
        params("full", None),
        params("streaming", 6, temperature=0.5, seed=2),
        params("adakv", 4, cfg_scale=0.5),
    ]
    batched = s.generate(prompts, chosen)
    alone = [s.generate([p], sp)[0] for p, sp in zip(prompts, chosen, strict=True)]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert [o.prompt_kv_entries for o in batched] == [
        o.prompt_kv_entries for o in alone
    ]
    assert pool(s).num_free_pages == pool(s).num_usable_pages


def test_cfg_branches_evict_on_their_own(tiny):
    s = paged(tiny)
    out = s.generate([PROMPT], params("snapkv", 5, cfg_scale=1.0))[0]
    assert out.prompt_kv_entries == 2 * 2 * 4 * 5  # 2 branches x 2 layers x 4 heads


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kv_policy": "h3o", "kv_budget": 8}, "kv_policy='h3o' is not one of"),
        ({"kv_policy": "maskkv", "kv_budget": 0}, "kv_budget=0 must be a positive"),
        ({"kv_policy": "snapkv", "kv_budget": -4}, "kv_budget=-4 must be a positive"),
    ],
)
def test_bad_kv_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_evicting_policy_needs_a_budget(tiny):
    s = paged(tiny)
    with pytest.raises(ValueError, match="kv_policy='maskkv' needs a kv_budget"):
        s.generate(
            ["hi"],
            SamplingParams(gen_length=8, block_length=8, steps=8, kv_policy="maskkv"),
        )
    defaults = SamplingParams(kv_budget=4).with_kv_defaults("snapkv", 99)
    assert (defaults.kv_policy, defaults.kv_budget) == ("snapkv", 4)


def test_eviction_needs_the_paged_cache(tiny):
    model, tok = tiny
    s = ModelRunner(model, tok, CacheConfig("prefix"))
    with pytest.raises(ValueError, match="needs cache_mode='paged' \\(got 'prefix'\\)"):
        s.generate(["hi"], params("maskkv", 4))


def test_profile_round_trip_and_layer_check(tiny, tmp_path):
    model, tok = tiny
    prompts = [tok.encode("calibration text number one"), tok.encode("and two")]
    profile = compute_profile(model, prompts, gen_length=8)
    assert profile.num_layers == 2
    assert all(0 <= x <= 2 for x in profile.importance)
    assert profile.meta["num_samples"] == 2
    path = tmp_path / "p.json"
    profile.save(path)
    assert LayerProfile.load(path, 2).importance == profile.importance
    with pytest.raises(ValueError, match="2 layers but the model has 32"):
        LayerProfile.load(path, 32)
    s = paged(tiny, profile=str(path))
    assert s.profile.importance == profile.importance
    bad = tmp_path / "bad.json"
    LayerProfile((0.1, 0.2, 0.3)).save(bad)
    with pytest.raises(ValueError, match="3 layers but the model has 2"):
        paged(tiny, profile=str(bad))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a layer profile"):
        LayerProfile.load(tmp_path / "junk.json")


def test_profile_of_a_dream_model_reads_its_attention_output(tmp_path):
    # It failed with AttributeError: Dream names the projection self_attn.o_proj.
    # A layer whose projection is zero leaves its input unchanged: importance 0.
    model, _ = load_checkpoint(write_tiny_dream_checkpoint(tmp_path, seed=2))
    torch.nn.init.zeros_(model.blocks[1].self_attn.o_proj.weight)
    profile = compute_profile(model, [[5, 17, 99, 3], [200, 7]], gen_length=4)
    assert profile.importance[1] == 0.0
    assert 0 < profile.importance[0] <= 2


def test_profile_cli(tiny_dir, tmp_path, capsys):
    data = tmp_path / "cal.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": f"sample {i} " * 5}) for i in range(3))
    )
    out = tmp_path / "profile.json"
    argv = ["profile", "--model", str(tiny_dir), "--data", str(data), "-o", str(out)]
    assert main(argv) == 0
    profile = LayerProfile.load(out, 2)
    assert profile.meta["num_samples"] == 3
    rc = main(
        ["generate", "hello", "--model", str(tiny_dir), "--cache-mode", "paged",
         "--kv-cache-memory", "8MiB", "--kv-policy", "maskkv", "--kv-budget", "2",
         "--maskkv-profile", str(out), "--gen-length", "8", "--block-length", "8",
         "--steps", "8"]
    )  # fmt: skip
    assert rc == 0
    assert "(paged, maskkv)" in capsys.readouterr().out
