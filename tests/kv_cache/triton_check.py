"""Triton paged attention vs the torch reference on random ragged cases.

Run by test_triton_paged_attention.py: under TRITON_INTERPRET=1 on the CPU (a
subprocess, since Triton reads that variable when a kernel is first defined), and
natively on a GPU.
"""

from __future__ import annotations

import sys

import torch

from maskkv_vllm.kv_cache.paged_attention import paged_attention_torch
from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache
from maskkv_vllm.kv_cache.triton_paged_attention import paged_attention_triton


def check(
    device: str, seed: int, hq: int, hkv: int, d: int, page: int, queries_only=False
) -> float:
    """Max error over the real canvas rows; ``queries_only``: no fresh keys at
    all (the adaptive canvas cache's recomputed rows attend to pages only),
    every head holding at least one entry, every row compared."""
    g = torch.Generator().manual_seed(seed)
    b, lq = 3, 20
    cache = PagedKVCache(1, hkv, d, page, num_pages=400, device=device)
    least = 1 if queries_only else 0
    for r in range(b):
        m = int(torch.randint(1, 90, (1,), generator=g))
        k = torch.randn(hkv, m, d, generator=g).to(device)
        lengths = [
            int(torch.randint(least, m + 1, (1,), generator=g)) for _ in range(hkv)
        ]
        k = k[:, torch.randperm(m, generator=g)]  # a random subset per head
        cache.write_layer(r, 0, k, -k, lengths)
    q = torch.randn(b, hq, lq, d, generator=g).to(device)
    ck = torch.randn(b, hkv, lq, d, generator=g).to(device)
    cv = torch.randn(b, hkv, lq, d, generator=g).to(device)
    mask = torch.ones(b, lq, dtype=torch.bool, device=device)
    mask[2, 7:] = False
    if queries_only:
        mask[:] = False
    bt, lens = cache.page_tables(list(range(b)), 0)
    s = cache.store
    want = paged_attention_torch(q, ck, cv, mask, s.k_cache, s.v_cache, bt, lens)
    got = paged_attention_triton(q, ck, cv, mask, s.k_cache, s.v_cache, bt, lens)
    if queries_only:
        return (got - want).abs().max().item()
    real = mask[:, None, :, None].expand_as(want)
    return (got - want).abs()[real].max().item()


CASES = [
    # seed, query heads, KV heads, head_dim, page size
    (0, 4, 4, 32, 16),
    (1, 4, 2, 32, 16),
    (2, 6, 1, 24, 5),
    (3, 2, 2, 64, 32),
    (4, 8, 2, 32, 16, True),
]


def main(device: str) -> None:
    for case in CASES:
        err = check(device, *case)
        assert err < 1e-5, f"case {case}: max abs error {err}"
        print(f"case {case}: max abs error {err:.2e}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
