"""Mask voting against the explicit attention matrix, and its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.voting import column_attention_sums, group_heads


def explicit_votes(q, k, num_cols):
    """A = softmax(q k^T / sqrt(d)) over all keys, summed over rows, per query head."""
    hq, _, d = q.shape
    group = hq // k.shape[0]
    out = []
    for h in range(hq):
        a = torch.softmax(q[h].double() @ k[h // group].double().T / math.sqrt(d), -1)
        out.append(a.sum(0)[:num_cols])
    return torch.stack(out).float()


@pytest.mark.parametrize("hq, hkv", [(4, 4), (4, 2), (3, 1)])
@pytest.mark.parametrize("chunk", [3, 1024])
def test_column_sums_match_the_explicit_matrix(hq, hkv, chunk):
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    q = torch.randn(hq, 7, 16, generator=g)
    k = torch.randn(hkv, 20, 16, generator=g)
    got = column_attention_sums(q, k, num_cols=13, chunk=chunk)
    torch.testing.assert_close(got, explicit_votes(q, k, 13), atol=1e-5, rtol=1e-5)


def make_ctx(seed=0, m=12, length=5, hq=4, hkv=2, d=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, m + length, d, generator=g)
    k = torch.randn(hkv, m + length, d, generator=g)
    return LayerContext(0, 1, q, k, m, length, chunk=4)


def test_voters_are_exactly_the_canvas_positions():
    ctx = make_ctx()
    q = ctx.q.clone()
    q[:, : ctx.prompt_len] += 5.0  # perturb every prompt query row
    other = LayerContext(0, 1, q, ctx.k, ctx.prompt_len, ctx.canvas_len, chunk=4)
    assert torch.equal(other.mask_votes, ctx.mask_votes)
    assert torch.equal(other.prompt_preference, ctx.prompt_preference)
    q = ctx.q.clone()
    q[:, ctx.prompt_len] += 1.0  # perturb one canvas query
    third = LayerContext(0, 1, q, ctx.k, ctx.prompt_len, ctx.canvas_len, chunk=4)
    assert not torch.allclose(third.mask_votes, ctx.mask_votes)


def test_votes_are_sums_and_preference_is_their_share():
    ctx = make_ctx(m=12, length=5, hq=4, hkv=2)
    votes = ctx.mask_votes  # (2, 12), summed over 2 query heads x 5 masks
    assert votes.shape == (2, 12)
    assert (votes >= 0).all() and (votes.sum(1) <= 2 * 5 + 1e-5).all()
    p = ctx.prompt_preference
    torch.testing.assert_close(p, votes.sum(1) / (5 * 2))
    assert ((p >= 0) & (p <= 1)).all()
    explicit = explicit_votes(ctx.q[:, 12:], ctx.k, 12)
    torch.testing.assert_close(votes, group_heads(explicit, 2), atol=1e-5, rtol=1e-5)


def test_window_votes_use_the_last_prompt_rows():
    ctx = make_ctx()
    want = group_heads(explicit_votes(ctx.q[:, 9:12], ctx.k, 12), 2)
    torch.testing.assert_close(ctx.window_votes(3), want, atol=1e-5, rtol=1e-5)


def test_a_kv_group_votes_with_all_its_query_heads_as_dream_s_groups_of_seven():
    # Dream-7B: 28 query heads over 4 KV heads. A KV head's votes are its 7 query
    # heads' votes summed (the same top-k as their mean: every group has 7), and
    # its prompt preference P is their mean (the method's Q5: mean over the
    # group, budgets per KV head), so head budgets are one per KV head.
    from maskkv_vllm.eviction.allocators import PromptPreferenceHeads
    from maskkv_vllm.eviction.scorers import MaskVoteScorer

    ctx = make_ctx(seed=7, m=10, length=4, hq=28, hkv=4)
    per_query_head = explicit_votes(ctx.q[:, 10:], ctx.k, 10)  # (28, M)
    groups = per_query_head.view(4, 7, 10)
    torch.testing.assert_close(ctx.mask_votes, groups.sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ctx.prompt_preference, groups.sum(2).mean(1) / 4, atol=1e-5, rtol=1e-5
    )
    budgets = PromptPreferenceHeads(MaskVoteScorer(), alpha=0.1).head_budgets(
        ctx, ctx.mask_votes, 3
    )
    assert len(budgets) == 4 and sum(budgets) <= 4 * 3
