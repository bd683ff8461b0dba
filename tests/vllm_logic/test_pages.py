"""The vLLM path's page logic on plain torch (no vLLM needed): block counts,
head-pages packed inside a request's vLLM blocks, and the step attention's
reference path (the one the CUDA runner runs through the Triton kernel)."""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.eviction.budget import reserved_pages
from maskkv_vllm.eviction.registry import make_policy
from maskkv_vllm.eviction.sharded import HeadShard
from maskkv_vllm.models.attention import dense_attention
from maskkv_vllm.paging.page_pool import NoFreePagesError
from maskkv_vllm.paging.page_table import blocks_for_pages, pages_for
from maskkv_vllm.sampler.sequence import DiffusionSequence
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.vllm_adapter.core.footprint import held_blocks, reserved_blocks
from maskkv_vllm.vllm_adapter.diffusion_state import DiffusionState
from maskkv_vllm.vllm_adapter.request_pages import RequestPages, VllmPageStore
from maskkv_vllm.vllm_adapter.worker.diffusion_attention import (
    DiffusionAttention,
    RowPlan,
)

H, P, D = 4, 32, 8  # KV heads, slots per page, head_dim


def test_pages_and_blocks_are_ceilings():
    assert pages_for([70, 3, 0, 32], 32) == 3 + 1 + 0 + 1
    assert blocks_for_pages(5, 4) == 2
    assert blocks_for_pages(8, 4) == 2
    assert blocks_for_pages(0, 4) == 0


def test_held_blocks_pack_all_layers_and_take_the_largest_rank():
    kept = {0: [70, 3, 0, 32], 1: [10, 10, 10, 10]}
    # one rank: 5 + 4 = 9 pages, 4 per block -> 3 blocks
    assert held_blocks(kept, 32) == 3
    # two ranks of 2 heads: rank 0 has 3 + 1 + 1 + 1 = 6 pages, rank 1 has
    # 0 + 1 + 1 + 1 = 3; 2 pages per block -> max(3, 2) = 3 blocks
    assert held_blocks(kept, 32, tp_size=2) == 3
    assert held_blocks({}, 32) == 0


def test_reserved_blocks_bound_what_any_split_keeps():
    params = SamplingParams(
        gen_length=8, block_length=8, steps=8, kv_policy="snapkv", kv_budget=64
    )
    snapkv, full = make_policy("snapkv"), make_policy("full")
    # per layer min(4 * 7, ceil(4 * 64 / 32) + 4) = 12 pages; 2 layers; 4 per block
    assert reserved_blocks(snapkv, params, 200, 2, 4, 32) == 6
    # full cache: 2 layers x 4 heads x 7 pages = 56 pages = 14 blocks
    assert reserved_blocks(full, params, 200, 2, 4, 32) == 14
    # two ranks: a rank's 2 heads may take the layer's whole budget of 4 heads
    # -> per layer min(2 * 200, 4 * 64) = 256 entries: ceil(256 / 32) + 2 = 10
    # pages, capped at the full 2 * 7 = 14; 2 per block -> 10 blocks
    assert reserved_pages([64, 64], 200, 2, 32, budget_heads=4) == 20
    assert reserved_blocks(snapkv, params, 200, 2, 4, 32, tp_size=2) == 10
    # the bound holds for the most uneven split: all budget on one head
    uneven = {0: [200, 56, 0, 0], 1: [200, 56, 0, 0]}
    assert held_blocks(uneven, 32) <= 6


def test_request_pages_pack_heads_in_order_inside_the_blocks():
    pages = RequestPages(
        [5, 9], num_layers=2, num_kv_heads=H, block_size=P, device="cpu"
    )
    kv = torch.zeros(16, H, P, 2 * D)
    store = VllmPageStore(kv, H, P, D)
    k = torch.randn(H, 70, D)
    pages.write_layer(store, 0, k, -k, [70, 3, 0, 32])
    table, lens = pages.table(0)
    # block 5 holds pages 20..23, block 9 pages 36..39; packed head by head
    assert table.tolist() == [[20, 21, 22], [23, 0, 0], [0, 0, 0], [36, 0, 0]]
    assert lens.tolist() == [70, 3, 0, 32]
    torch.testing.assert_close(store.k_cache[20:23].reshape(-1, D)[:70], k[0])
    torch.testing.assert_close(store.v_cache[36], -k[3, :32])
    assert pages.num_pages == 5
    # layer 1 continues in block 9; 3 pages are left, 4 are asked for
    with pytest.raises(NoFreePagesError):
        pages.write_layer(store, 1, k, k, [64, 64, 0, 0])
    pages.write_layer(store, 1, k, k, [64, 1, 0, 0])
    assert pages.table(1)[0].tolist() == [[37, 38], [39, 0], [0, 0], [0, 0]]


def test_the_page_store_refuses_a_cache_of_another_shape():
    with pytest.raises(ValueError, match="not a whole number of blocks"):
        VllmPageStore(torch.zeros(3, H, P, D), H, P, D)


def _state(prompt_len: int, gen: int, policy=None, budget=None) -> DiffusionState:
    params = SamplingParams(gen_length=gen, block_length=gen, steps=gen)
    seq = DiffusionSequence(0, "r", [1] * prompt_len, params, 99, None, "cpu", ())
    eviction = None
    if policy is not None:
        from maskkv_vllm.eviction.evictor import Eviction

        eviction = Eviction(make_policy(policy), budget)
    return DiffusionState(seq, eviction)


@pytest.mark.parametrize(("policy", "budget"), [(None, None), ("snapkv", 16)])
def test_step_attention_prefill_then_canvas_matches_dense(policy, budget):
    torch.manual_seed(0)
    hq, m, gen = 8, 40, 8
    kv = torch.zeros(12, H, P, 2 * D)
    store = VllmPageStore(kv, H, P, D)
    a, b = _state(m, gen, policy, budget), _state(m - 9, gen)
    rows = [RowPlan(a, 0, m + gen), RowPlan(b, m + gen, m - 9 + gen)]
    for row, ids in zip(rows, ([1, 2, 3, 4], [7, 8]), strict=True):
        row.state.pages = RequestPages(ids, 1, H, P, "cpu")
    t = sum(r.num_tokens for r in rows)
    q, k, v = torch.randn(1, hq, t, D), torch.randn(1, H, t, D), torch.randn(1, H, t, D)
    out = DiffusionAttention(rows, store, 1, HeadShard())(0, q, k, v)
    for r in rows:  # step 0 is dense over the row
        s = slice(r.start, r.start + r.num_tokens)
        ref = dense_attention(q[:, :, s], k[:, :, s], v[:, :, s], None)[0]
        torch.testing.assert_close(
            out[s], ref.transpose(0, 1).reshape(r.num_tokens, -1)
        )
    kept = a.kept_lengths[0]
    assert kept == ([m] * H if policy is None else [budget] * H)
    assert b.kept_lengths[0] == [m - 9] * H
    # a canvas step: both rows attend to their pages plus their fresh canvas
    for r in rows:
        r.state.computed = r.state.prompt_len
    rows2 = [RowPlan(a, 0, gen), RowPlan(b, gen, gen)]
    q2, k2, v2 = (
        torch.randn(1, hq, 16, D),
        torch.randn(1, H, 16, D),
        torch.randn(1, H, 16, D),
    )
    out2 = DiffusionAttention(rows2, store, 1, HeadShard())(0, q2, k2, v2)
    for r, r0 in zip(rows2, rows, strict=True):
        table, lens = r.state.pages.table(0)
        s = slice(r.start, r.start + gen)
        for h in range(H):
            n = int(lens[h])
            slots = (table[h].long()[:, None] * P + torch.arange(P)).flatten()[:n]
            pk = store.k_cache.view(-1, D)[slots]
            pv = store.v_cache.view(-1, D)[slots]
            s0 = slice(r0.start, r0.start + r0.state.prompt_len)
            if policy is None or r0.state.eviction is None:
                torch.testing.assert_close(pk, k[0, h, s0])
            keys = torch.cat([pk, k2[0, h, s]])[None, None]
            vals = torch.cat([pv, v2[0, h, s]])[None, None]
            for g in range(hq // H):
                qh = q2[:, h * (hq // H) + g : h * (hq // H) + g + 1, s]
                ref = dense_attention(qh, keys, vals, None)[0, 0]
                got = out2[s].view(gen, hq, D)[:, h * (hq // H) + g]
                torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["blocks-first", "flash-strided", "kv-first"])
def test_pages_tile_any_cache_layout_exactly_once(layout):
    nb = 3
    if layout == "blocks-first":  # CPU: (B, H, N, 2d)
        cache = torch.zeros(nb, H, P, 2 * D)
    elif layout == "flash-strided":  # logical (B, H, N, 2d) over (B, N, H, 2d)
        cache = torch.zeros(nb, P, H, 2 * D).permute(0, 2, 1, 3)
    else:  # FlashAttention's (2, B, N, H, d)
        cache = torch.zeros(2, nb, P, H, D)
    store = VllmPageStore(cache, H, P, D)
    assert store.k_cache.shape == store.v_cache.shape == (nb * H, P, D)
    pages = torch.arange(nb * H, dtype=torch.float32)
    store.k_cache.copy_(pages[:, None, None].expand(-1, P, D))
    store.v_cache.copy_(-1 - pages[:, None, None].expand(-1, P, D))
    # every element of the cache belongs to exactly one page: all were written
    # once, each value appears P * d times
    values = cache.flatten().sort().values
    expected = torch.cat([-1 - pages, pages]).repeat_interleave(P * D).sort().values
    assert torch.equal(values, expected)
