"""Paged attention equals dense attention over the same keys."""

from __future__ import annotations

import math

import pytest
import torch

from maskkv_vllm.kv_cache.paged_attention import paged_attention, paged_attention_torch
from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache


def dense_oracle(q, k, v, canvas_mask, prompt_k, prompt_v):
    """Per (request, query head) loops over explicit key lists, fp64."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    out = torch.zeros(b, hq, lq, d, dtype=torch.float64)
    for r in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            real = canvas_mask[r]
            keys = torch.cat([prompt_k[r][g], k[r, g][real]]).double()
            vals = torch.cat([prompt_v[r][g], v[r, g][real]]).double()
            scores = q[r, h].double() @ keys.T / math.sqrt(d)
            out[r, h] = torch.softmax(scores, -1) @ vals
    return out


@pytest.mark.parametrize("hq, hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paged_equals_dense_on_ragged_heads(hq, hkv, seed):
    g = torch.Generator().manual_seed(seed)
    b, d, block = 3, 16, 4
    cache = PagedKVCache(1, hkv, d, block, num_pages=200)
    prompt_k, prompt_v = [], []
    for r in range(b):
        m = int(torch.randint(1, 30, (1,), generator=g))
        k = torch.randn(hkv, m, d, generator=g)
        v = torch.randn(hkv, m, d, generator=g)
        ks, vs, lengths = [], [], []
        for h in range(hkv):
            # Ragged per head: keep a random subset (sometimes nothing).
            n = int(torch.randint(0, m + 1, (1,), generator=g))
            idx = torch.randperm(m, generator=g)[:n].sort().values
            ks.append(k[h, idx])
            vs.append(v[h, idx])
            lengths.append(n)
        pad = [torch.zeros(m - len(x), d) for x in ks]
        cache.write_layer(
            r, 0,
            torch.stack([torch.cat([x, p]) for x, p in zip(ks, pad, strict=True)]),
            torch.stack([torch.cat([x, p]) for x, p in zip(vs, pad, strict=True)]),
            lengths,
        )  # fmt: skip
        prompt_k.append(ks)
        prompt_v.append(vs)
    lq = 5
    q = torch.randn(b, hq, lq, d, generator=g)
    ck = torch.randn(b, hkv, lq, d, generator=g)
    cv = torch.randn(b, hkv, lq, d, generator=g)
    canvas_mask = torch.ones(b, lq, dtype=torch.bool)
    canvas_mask[1, 3:] = False  # a shorter canvas in the batch
    bt, lens = cache.page_tables(list(range(b)), 0)
    store = cache.store
    got = paged_attention(
        q, ck, cv, canvas_mask, store.k_cache, store.v_cache, bt, lens
    )
    want = dense_oracle(q, ck, cv, canvas_mask, prompt_k, prompt_v).float()
    for r in range(b):
        real = canvas_mask[r]
        torch.testing.assert_close(
            got[r][:, real], want[r][:, real], atol=1e-5, rtol=1e-5
        )


def test_bf16_inputs_attend_in_bf16():
    g = torch.Generator().manual_seed(0)
    cache = PagedKVCache(1, 2, 8, 4, num_pages=20, dtype=torch.bfloat16)
    k = torch.randn(2, 9, 8, generator=g)
    cache.write_layer(0, 0, k, k)
    q = torch.randn(1, 2, 3, 8, generator=g).bfloat16()
    ck = torch.randn(1, 2, 3, 8, generator=g).bfloat16()
    bt, lens = cache.page_tables([0], 0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    s = cache.store
    out = paged_attention_torch(q, ck, ck, mask, s.k_cache, s.v_cache, bt, lens)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 3, 8)
    want = dense_oracle(q, ck, ck, mask, [list(k.bfloat16())], [list(k.bfloat16())])
    torch.testing.assert_close(out.double(), want, atol=2e-2, rtol=2e-2)


def test_backend_selection(monkeypatch):
    from maskkv_vllm.kv_cache.paged_attention import backend_for

    backend_for.cache_clear()
    assert backend_for("cpu") == "torch"
    monkeypatch.setenv("MASKKV_PAGED_ATTENTION", "torch")
    backend_for.cache_clear()
    assert backend_for("cuda") == "torch"
    monkeypatch.setenv("MASKKV_PAGED_ATTENTION", "fast")
    backend_for.cache_clear()
    with pytest.raises(ValueError, match="MASKKV_PAGED_ATTENTION='fast'"):
        backend_for("cpu")
    monkeypatch.delenv("MASKKV_PAGED_ATTENTION")
    backend_for.cache_clear()


def test_held_pages_reads_whole_pages_and_masks_their_unused_slots():
    from maskkv_vllm.kv_cache.paged_attention import held_pages

    tables = torch.tensor([[[5, 7, 0], [2, 0, 0]]], dtype=torch.int32)
    lens = torch.tensor([[20, 3]], dtype=torch.int32)
    pages, valid = held_pages(tables, lens, 16)
    # Two pages is the most a head holds: 5, 7 for head 0 and 2, null for head 1.
    assert pages.tolist() == [[[5, 7], [2, 0]]]
    assert valid.shape == (1, 2, 32)
    assert valid[0, 0].tolist() == [True] * 20 + [False] * 12
    assert valid[0, 1].tolist() == [True] * 3 + [False] * 29
