"""Sharded selection equals single-rank selection, for every registered policy.

Two (or four) tensor-parallel ranks are simulated by threads that meet in a
barrier-based all-gather; each rank holds a contiguous block of KV heads and
their query groups, as vLLM's ``QKVParallelLinear`` splits them, and its own
random stream seeded like the request's (as every worker rank's is).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from maskkv_vllm.config import MaskKVConfig
from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.registry import make_policy, policy_names
from maskkv_vllm.eviction.sharded import ShardedLayerContext

M, L, HQ, HKV, D = 48, 8, 8, 4, 16


def thread_gathers(world: int):
    """One all-gather (dim 0, rank order) per rank, for ranks run as threads."""
    barrier = threading.Barrier(world, timeout=10)
    slots: list[torch.Tensor | None] = [None] * world
    calls = [0] * world

    def make(rank: int):
        def gather(x: torch.Tensor) -> torch.Tensor:
            calls[rank] += 1
            slots[rank] = x
            barrier.wait()
            out = torch.cat(slots, dim=0)
            barrier.wait()  # nobody overwrites a slot before all have read
            return out

        return gather

    return [make(r) for r in range(world)], calls


def rank_context(q, k, rank: int, world: int, seed: int) -> LayerContext:
    """The context rank ``rank`` builds from its heads (q: (HQ, ...), k: (HKV, ...))."""
    nq, nk = q.shape[0] // world, k.shape[0] // world
    gen = torch.Generator().manual_seed(seed)
    qs, ks = q[rank * nq : (rank + 1) * nq], k[rank * nk : (rank + 1) * nk]
    return LayerContext(1, 4, qs, ks, M, L, gen, chunk=16)


def sharded_selections(policy, q, k, world, budget, seed):
    gathers, calls = thread_gathers(world)

    def run(rank):
        local = rank_context(q, k, rank, world, seed)
        ctx = ShardedLayerContext(local, gathers[rank], world)
        return [t.tolist() for t in policy.select(ctx, budget)]

    with ThreadPoolExecutor(world) as pool:
        return list(pool.map(run, range(world))), calls


@pytest.mark.parametrize("name", policy_names())
@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_selects_what_one_rank_selects(name, world):
    g = torch.Generator().manual_seed(world)
    q = torch.randn(HQ, M + L, D, generator=g)
    k = torch.randn(HKV, M + L, D, generator=g)
    policy = make_policy(name, MaskKVConfig(window=8, pool_kernel=3))
    budget = 10
    single = policy.select(rank_context(q, k, 0, 1, seed=5), budget)
    want = [t.tolist() for t in single]
    got, calls = sharded_selections(policy, q, k, world, budget, seed=5)
    assert all(rank == want for rank in got)
    assert len(set(calls)) == 1  # the ranks made the same collective calls


def test_prompt_preference_budgets_span_all_heads():
    # Head 0 gives the prompt almost all its mask attention, head 3 almost none:
    # the layer's N * k_l is shared over all four heads, across both ranks.
    q = torch.zeros(HKV, M + L, D)
    k = torch.zeros(HKV, M + L, D)
    k[0, :M, 0], q[0, M:, 0] = 4.0, 4.0  # prompt keys align with head 0's masks
    k[3, M:, 0], q[3, M:, 0] = 4.0, 4.0  # head 3's masks look at the canvas
    policy = make_policy("maskkv", MaskKVConfig(alpha=0.1, beta=1.0))
    single = [t.numel() for t in policy.select(rank_context(q, k, 0, 1, 0), 16)]
    got, _ = sharded_selections(policy, q, k, 2, 16, seed=0)
    assert [len(h) for h in got[0]] == [len(h) for h in got[1]] == single
    assert single[0] > 16 > single[3]  # unequal budgets, decided over both ranks
    assert sum(single) <= 4 * 16


def test_num_kv_heads_is_the_layer_total():
    q, k = torch.randn(HQ, M + L, D), torch.randn(HKV, M + L, D)
    local = rank_context(q, k, 1, 2, 0)
    ctx = ShardedLayerContext(local, lambda x: x, 2)
    assert (local.num_kv_heads, ctx.num_kv_heads) == (2, 4)
    assert ctx.q is local.q and ctx.prompt_len == M
