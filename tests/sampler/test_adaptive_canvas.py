"""The adaptive canvas cache: dLLM-Cache's answer features in a row's pages.

Oracles: a step that recomputes every canvas row (``canvas_refresh_ratio=1``)
is the plain canvas step, so tokens must equal ``none``; a partial step must
equal a dense re-implementation that keeps the refreshed K/V and outputs in
plain tensors (``_reference_step``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.engine.kv_cache_manager import KVCacheManager
from maskkv_vllm.kv_cache.adaptive_canvas import (
    entries_to_outputs,
    least_similar,
    outputs_to_entries,
)
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.rope import rope_cos_sin, rope_inv_freq
from maskkv_vllm.models.tiny import write_tiny_checkpoint
from maskkv_vllm.models.tiny_dream import write_tiny_dream_checkpoint
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner
from tests.sampler.conftest import CASES, PROMPTS

ADAPTIVE = {"canvas_cache": "adaptive"}


@pytest.fixture(scope="module", params=["llada-gqa", "dream"])
def model_tok(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "dream":
        return load_checkpoint(write_tiny_dream_checkpoint(out, seed=1))
    return load_checkpoint(write_tiny_checkpoint(out, seed=3, n_kv_heads=2))


def runner(model_tok, page_size=5, num_pages=4000):
    model, tok = model_tok
    cache = CacheConfig("paged", page_size=page_size, num_pages=num_pages)
    return ModelRunner(model, tok, cache)


def test_entries_hold_each_kv_head_s_group_slices_row_by_row():
    # Hkv = 2, g = 2 (Hq = 4), d = 1: row r's output is [10r, 10r+1, 10r+2, 10r+3].
    x = torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13]])
    e = outputs_to_entries(x, num_kv_heads=2, head_dim=1)
    # KV head 0: rows 0, 1 x query heads 0, 1; then KV head 1: query heads 2, 3.
    assert e.flatten().tolist() == [0, 1, 10, 11, 2, 3, 12, 13]
    assert torch.equal(entries_to_outputs(e.view(2, 4, 1), 2), x)


def test_least_similar_picks_the_rows_whose_values_turned_most():
    cached = torch.tensor([[[1.0, 0], [1, 0], [1, 0], [1, 0]]])  # (1, 4, 2)
    new = torch.tensor([[[1.0, 0], [0, 1], [1, 0.1], [-1, 0]]])
    assert least_similar(new, cached, 2).tolist() == [1, 3]
    assert least_similar(new, cached, 9).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("case", list(CASES))
def test_recomputing_every_row_reproduces_none(model_tok, case):
    params = CASES[case]
    r = runner(model_tok)
    want = [o.token_ids for o in r.generate(PROMPTS, params)]
    every = dataclasses.replace(params, canvas_refresh_ratio=1.0, **ADAPTIVE)
    assert [o.token_ids for o in r.generate(PROMPTS, every)] == want
    assert r.prompt_cache.page_pool.num_used_pages == 0


def test_refreshes_come_every_interval_and_other_steps_recompute_the_ratio(
    model_tok, monkeypatch
):
    r = runner(model_tok)
    seen, make = [], r.prompt_cache.adaptive_attention

    def spy(keys, lens, selected, shift):
        seen.append(selected)
        return make(keys, lens, selected, shift)

    monkeypatch.setattr(r.prompt_cache, "adaptive_attention", spy)
    p = SamplingParams(
        gen_length=16, block_length=8, steps=12, canvas_refresh_interval=4,
        canvas_refresh_ratio=0.2, **ADAPTIVE,
    )  # fmt: skip
    r.generate(["abc"], p)
    # Step 0 is the full forward; then a refresh every 4 steps, 4 rows (ceil
    # 0.2 x 16) in between.
    assert seen == [[16], [4], [4], [4], [16], [4], [4], [4], [16], [4], [4]]


def test_a_partial_step_equals_a_dense_reimplementation(tmp_path):
    model, tok = load_checkpoint(write_tiny_checkpoint(tmp_path, seed=7, n_kv_heads=2))
    r = ModelRunner(model, tok, CacheConfig("paged", page_size=3, num_pages=500))
    p = SamplingParams(
        gen_length=8, block_length=8, steps=8, canvas_refresh_ratio=0.25, **ADAPTIVE
    )
    seq = r.make_sequence(0, "Hello there", p)
    c0 = seq.canvas.clone()
    r.step([seq])  # step 0: prompt + canvas
    c1 = seq.canvas.clone()
    r.step([seq])  # step 1: the refresh
    c2 = seq.canvas.clone()
    hidden = {}
    forward = r.model.forward

    def keep(*args, **kwargs):
        hidden["h"] = forward(*args, **kwargs)
        return hidden["h"]

    r.model.forward = keep
    r.step([seq])  # step 2: 2 of 8 rows recomputed per layer
    want = _reference_step(model, seq.branches[0].prompt_ids, c0, c1, c2, chosen=2)
    torch.testing.assert_close(hidden["h"][0], want, rtol=1e-4, atol=1e-4)
    # The oracle tells the two apart: recomputing every row gives other states.
    every = _reference_step(model, seq.branches[0].prompt_ids, c0, c1, c2, chosen=8)
    assert (every - want).abs().max() > 1e-2
    r.free(seq)
    assert r.prompt_cache.page_pool.num_used_pages == 0


def _reference_step(model, prompt, c0, c1, c2, chosen):
    """Canvas hidden states of step 2, dense: the prompt K/V from the full
    forward over prompt + c0, the refresh over c1, the partial step over c2."""
    m, n = prompt.numel(), c0.numel()
    theta, hd = model.config.rope_theta, model.config.head_dim
    inv = rope_inv_freq(hd, theta, prompt.device)
    embed = model.model.transformer.wte

    def rope(pos):
        return rope_cos_sin(pos[None], inv)

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    # Step 0: every layer's prompt K/V.
    x = embed(torch.cat([prompt, c0]))[None]
    cos, sin = rope(torch.arange(m + n))
    prompt_kv = []
    for b in model.blocks:
        q, k, v = b.qkv(x, cos, sin)
        prompt_kv.append((k[:, :, :m], v[:, :, :m]))
        x = x + b.attn_proj(attend(q, k, v))
        x = x + b.ffn(x)
    # Step 1: the refresh keeps every canvas row's K, V, attention and MLP update.
    cos, sin = rope(torch.arange(m, m + n))
    x, state = embed(c1)[None], []
    for b, (pk, pv) in zip(model.blocks, prompt_kv, strict=True):
        q, k, v = b.qkv(x, cos, sin)
        a = b.attn_proj(attend(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2)))
        x = x + a
        f = b.ffn(x)
        x = x + f
        state.append((k, v, a, f))
    # Step 2: per layer, the rows whose values moved most are recomputed.
    return _partial_layers(
        model, embed(c2)[None], prompt_kv, state, cos, sin, chosen, attend
    )


def _partial_layers(model, x, prompt_kv, state, cos, sin, chosen, attend):
    for b, (pk, pv), (k1, v1, a1, f1) in zip(
        model.blocks, prompt_kv, state, strict=True
    ):
        v_new = b.value(x)  # (1, Hkv, n, d)
        sim = F.cosine_similarity(
            v_new[0].transpose(0, 1).flatten(1), v1[0].transpose(0, 1).flatten(1),
            dim=-1,
        )  # fmt: skip
        rows = torch.sort(torch.topk(sim, chosen, largest=False).indices).values
        q, k, v = b.qkv(x[:, rows], cos[:, :, rows], sin[:, :, rows])
        keys = k1.clone()
        keys[:, :, rows] = k
        values = v_new.clone()
        values[:, :, rows] = v
        a = a1.clone()
        a[:, rows] = b.attn_proj(
            attend(q, torch.cat([pk, keys], 2), torch.cat([pv, values], 2))
        )
        x = x + a
        f = f1.clone()
        f[:, rows] = b.ffn(x[:, rows])
        x = x + f
    return x[0]


def test_admission_counts_the_outputs_a_kv_head_keeps(model_tok):
    r = runner(model_tok, page_size=4)
    c = r.model.config
    g = c.n_heads // c.n_kv_heads
    kv = KVCacheManager(r.prompt_cache, r.policies, c.n_layers, c.n_kv_heads, g)
    p = SamplingParams(gen_length=8, block_length=8, steps=8, **ADAPTIVE)
    assert p.canvas_entries(g) == 8 * (1 + g)
    # Full cache, M = 10: per layer and head, ceil((10 + 8 (1 + g)) / 4) pages.
    per_head = -(-(10 + 8 * (1 + g)) // 4)
    assert kv.reserved_pages(p, 10) == c.n_layers * c.n_kv_heads * per_head
    seq = r.make_sequence(0, list(range(40, 50)), p)
    r.step([seq])
    assert (
        r.prompt_cache.num_pages(seq.cache_keys[0])
        == c.n_layers * c.n_kv_heads * per_head
    )
    r.free(seq)
    assert r.prompt_cache.page_pool.num_used_pages == 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("canvas_refresh_interval", 0),
        ("canvas_refresh_interval", 1.5),
        ("canvas_refresh_ratio", 0.0),
        ("canvas_refresh_ratio", 1.5),
    ],
)
def test_bad_settings_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        SamplingParams(**{field: value})


def test_a_cache_mode_without_pages_refuses_it(model_tok):
    model, tok = model_tok
    r = ModelRunner(model, tok, CacheConfig("prefix"))
    with pytest.raises(ValueError, match="canvas_cache='adaptive' needs cache_mode"):
        r.generate(
            ["abc"], SamplingParams(gen_length=8, steps=8, block_length=8, **ADAPTIVE)
        )
