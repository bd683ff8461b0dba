"""Each policy's defining property, on hand-made layer contexts."""

from __future__ import annotations

import pytest
import torch

from maskkv_vllm.config import MaskKVConfig
from maskkv_vllm.eviction.allocators import (
    AdaKVHeads,
    BoundaryAwareLayers,
    PromptPreferenceHeads,
    PyramidLayers,
    SqueezeLayers,
)
from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.policy import Policy, select_kept
from maskkv_vllm.eviction.registry import make_policy, policy_names, register_policy
from maskkv_vllm.eviction.scorers import (
    FullCache,
    MaskVoteScorer,
    RandomScorer,
    SnapKVScorer,
    StreamingScorer,
)


def make_ctx(m=40, length=8, hq=4, hkv=2, d=16, layer=0, layers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, m + length, d, generator=g)
    k = torch.randn(hkv, m + length, d, generator=g)
    gen = torch.Generator().manual_seed(seed)
    return LayerContext(layer, layers, q, k, m, length, gen, chunk=16)


class Fixed(Policy):
    """Hand-written scores."""

    def __init__(self, scores):
        self.fixed = torch.tensor(scores, dtype=torch.float32)

    def scores(self, ctx):
        return self.fixed


def test_select_kept_top_k_ties_low_ascending():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9])
    assert select_kept(scores, 3).tolist() == [0, 1, 4]
    assert select_kept(scores, 0).tolist() == []


SCORERS = [MaskVoteScorer(), SnapKVScorer(8, 3), StreamingScorer(4), RandomScorer()]


@pytest.mark.parametrize("policy", SCORERS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("budget", [1, 7, 40, 100])
def test_kept_are_the_top_scores_and_counts_are_clipped(policy, budget):
    ctx = make_ctx(seed=budget)
    scores = policy.scores(make_ctx(seed=budget))
    kept = policy.select(ctx, budget)
    assert len(kept) == 2
    for h, idx in enumerate(kept):
        assert idx.numel() == min(budget, ctx.prompt_len)
        assert idx.tolist() == sorted(idx.tolist())
        evicted = torch.ones(ctx.prompt_len, dtype=torch.bool)
        evicted[idx] = False
        if evicted.any():
            assert scores[h][idx].min() >= scores[h][evicted].max()


def test_streaming_keeps_sinks_and_the_recent_window():
    kept = StreamingScorer(sinks=4).select(make_ctx(m=40), 10)
    for idx in kept:
        assert idx.tolist() == [0, 1, 2, 3, 34, 35, 36, 37, 38, 39]


def test_snapkv_always_keeps_its_window():
    ctx = make_ctx(m=40)
    for idx in SnapKVScorer(window=8, pool_kernel=7).select(ctx, 12):
        assert set(range(32, 40)) <= set(idx.tolist())
    # A budget below the window keeps the most recent window tokens.
    for idx in SnapKVScorer(window=8, pool_kernel=1).select(ctx, 3):
        assert idx.tolist() == [37, 38, 39]


def one_hot_ctx(prompt_target=0, canvas_target=5, m=12, length=2):
    """Keys are one-hot per prompt position (canvas keys 0); every prompt query
    looks at ``prompt_target``, every canvas (mask) query at ``canvas_target``."""
    k = torch.zeros(1, m + length, m)
    k[0, :m] = 10 * torch.eye(m)
    q = torch.zeros(1, m + length, m)
    q[0, :m, prompt_target] = 10
    q[0, m:, canvas_target] = 10
    return LayerContext(0, 1, q, k, m, length)


def test_snapkv_with_the_canvas_in_its_window_hears_the_mask_tokens():
    # Issue 26's ablation: SnapKV's window ends at the prompt (rows 8-11 look at
    # token 0, the window itself is kept); run through the canvas, its last 4
    # queries are prompt rows 10-11 (kept) and the 2 mask rows, which find token 5.
    ctx = one_hot_ctx()
    snapkv = SnapKVScorer(4, 1)
    assert [i.tolist() for i in snapkv.select(ctx, 5)] == [[0, 8, 9, 10, 11]]
    through = SnapKVScorer(4, 1, canvas_in_window=True)
    assert [i.tolist() for i in through.select(ctx, 4)] == [[0, 5, 10, 11]]
    # A window no wider than the canvas keeps no prompt token for itself.
    only_masks = SnapKVScorer(2, 1, canvas_in_window=True)
    assert [i.tolist() for i in only_masks.select(ctx, 1)] == [[5]]
    policy = make_policy("snapkv-mask-window", MaskKVConfig(window=4, pool_kernel=1))
    assert [i.tolist() for i in policy.select(ctx, 4)] == [[0, 5, 10, 11]]


def test_mask_vote_with_the_query_row_hears_the_last_prompt_token():
    # The last prompt row looks at token 0, the mask rows at token 5: MaskKV
    # keeps 5; with the last prompt token's query voting, the larger share wins.
    ctx = one_hot_ctx()
    assert [i.tolist() for i in MaskVoteScorer().select(ctx, 1)] == [[5]]
    assert [i.tolist() for i in MaskVoteScorer(0.4).select(ctx, 1)] == [[5]]
    assert [i.tolist() for i in MaskVoteScorer(0.6).select(ctx, 1)] == [[0]]
    policy = make_policy("maskkv-query", MaskKVConfig())
    assert [i.tolist() for i in policy.select(ctx, 2)] == [[0, 5]]
    with pytest.raises(ValueError, match=r"query_share=1\.5 must lie in \[0, 1\]"):
        MaskVoteScorer(1.5)


def test_snapkv_pooling_spreads_a_peak_to_its_neighbours():
    ctx = make_ctx(m=40)
    raw = ctx.window_votes(8)[:, :32]
    pooled = SnapKVScorer(window=8, pool_kernel=3).scores(ctx)[:, :32]
    peak = raw[0].argmax().item()
    for j in (peak - 1, peak, peak + 1):
        if 0 <= j < 32:
            assert pooled[0, j] == raw[0, peak]


def test_random_is_seeded_per_request():
    a = RandomScorer().select(make_ctx(seed=3), 5)
    b = RandomScorer().select(make_ctx(seed=3), 5)
    c = RandomScorer().select(make_ctx(seed=4), 5)
    assert [x.tolist() for x in a] == [x.tolist() for x in b] != [x.tolist() for x in c]


def test_full_cache_does_not_evict():
    assert FullCache().evicts is False
    assert PromptPreferenceHeads(FullCache()).evicts is False
    assert MaskVoteScorer().evicts is True


def test_prompt_preference_heads_follow_eq_15():
    ctx = make_ctx(hkv=2)
    policy = PromptPreferenceHeads(MaskVoteScorer(), alpha=0.1)
    p = ctx.prompt_preference.tolist()
    share = [x / sum(p) for x in p]
    want = [int(0.1 * 10 + 0.9 * 2 * 10 * s + 1e-9) for s in share]
    kept = policy.select(ctx, 10)
    assert [i.numel() for i in kept] == want
    assert policy.head_budgets(ctx, None, 10) == want


def test_adakv_floor_and_total():
    scores = [[9.0, 8.0, 7.0, 6.0, 5.0, 4.0], [0.1, 0.2, 0.3, 0.0, 0.0, 0.0]]
    policy = AdaKVHeads(Fixed(scores), adakv_floor=0.2)
    ctx = make_ctx(m=6, hkv=2)
    # k_l = 5: floor(0.2 * 5) = 1 each; the other 8 go to the best remaining
    # scores: head 0's five and head 1's three (0.3 > 0.2 > 0.1 > 0.0...)
    counts = policy.head_budgets(ctx, policy.scores(ctx), 5)
    assert counts == [6, 4] and sum(counts) == 10
    kept = policy.select(ctx, 5)
    assert kept[1].tolist() == [0, 1, 2, 3]  # the ties at 0.0 go to the lower position


def test_pyramid_wrapper_budgets_fall_across_layers():
    policy = PyramidLayers(SnapKVScorer(8, 1), pyramid_beta=20, window=8)
    budgets = policy.layer_budgets(4, 24, prompt_len=1000)
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1]
    ctx = make_ctx(m=100, layer=3, layers=4)
    assert [i.numel() for i in policy.select(ctx, 24)] == [budgets[3]] * 2


def test_squeeze_wrapper_uses_the_profile():
    policy = SqueezeLayers(MaskVoteScorer(), similarity=(0.1, 0.12, 0.9, 0.92, 0.5))
    # Groups {0.1, 0.12}, {0.5}, {0.9, 0.92}: the last keeps 4 of 10 and the 12 it
    # frees go to the other three layers.
    assert policy.layer_budgets(5, 10, 100) == [14, 14, 4, 4, 14]
    with pytest.raises(ValueError, match="profile has 5 layers, the model 2"):
        policy.layer_budgets(2, 10, 100)


def test_registry_builds_every_policy_and_rejects_unknown_names():
    ctx = make_ctx()
    for name in policy_names():
        policy = make_policy(name, MaskKVConfig(window=8))
        if policy.evicts:
            assert len(policy.select(ctx, 8)) == 2
    with pytest.raises(ValueError, match="kv_policy='h3o' is not one of .*maskkv"):
        make_policy("h3o")
    with pytest.raises(ValueError, match="already registered"):
        register_policy("maskkv", lambda c, p: MaskVoteScorer())


def test_maskkv_composition():
    policy = make_policy("maskkv", MaskKVConfig(alpha=0.2, beta=0.5))
    assert isinstance(policy, PromptPreferenceHeads) and policy.alpha == 0.2
    assert policy.inner.beta == 0.5 and isinstance(policy.inner.inner, MaskVoteScorer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, r"alpha=1.5 must lie in \[0, 1\]"),
        ({"beta": -0.1}, r"beta=-0.1 must lie in \[0, 1\]"),
        ({"adakv_floor": 2}, "adakv_floor=2"),
        ({"window": -1}, "window=-1"),
        ({"pool_kernel": 4}, "pool_kernel=4 must be odd"),
        ({"pyramid_beta": 0}, "pyramid_beta=0"),
        ({"boundary_layers": ()}, "boundary_layers=()"),
    ],
)
def test_bad_maskkv_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskKVConfig(**kwargs)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SnapKVScorer(8, 4), "pool_kernel=4 must be odd"),
        (lambda: SnapKVScorer(-1), "window=-1 must be an int >= 0"),
        (lambda: StreamingScorer(-2), "sinks=-2 must be an int >= 0"),
        (lambda: PromptPreferenceHeads(MaskVoteScorer(), 1.5), "alpha=1.5"),
        (lambda: BoundaryAwareLayers(MaskVoteScorer(), 0.4, None, ()), "boundary"),
        (lambda: PyramidLayers(MaskVoteScorer(), 0), "pyramid_beta=0 must be positive"),
        (lambda: AdaKVHeads(MaskVoteScorer(), True), "adakv_floor=True"),
        (lambda: SqueezeLayers(MaskVoteScorer(), None, 2), "squeeze_fraction=2"),
    ],
)
def test_a_policy_checks_its_own_settings(build, message):
    # Settings live on the policy: one built by hand is checked as the engine's
    # (they were checked only in MaskKVConfig: SnapKVScorer(8, 4) pooled with an
    # even, off-centre kernel).
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name", ["maskkv", "adakv", "pyramidkv", "snapkv"])
def test_a_budget_of_at_least_the_prompt_keeps_everything(name):
    # MaskKV's uneven head budgets evicted from a 3-token prompt at B = 4
    # (7 of 24 entries lost; issue 14, item 10).
    for m, budget in [(3, 4), (40, 40)]:
        ctx = make_ctx(m=m)
        kept = make_policy(name).select(ctx, budget)
        assert [k.tolist() for k in kept] == [list(range(m))] * 2


def test_a_registered_policy_that_keeps_everything_needs_no_budget(monkeypatch):
    # Asked by name before ("not in (None, 'full')"), a registered non-evicting
    # policy was taken for an evicting one and required a kv_budget (issue 16).
    from maskkv_vllm.config import CacheConfig, EngineConfig
    from maskkv_vllm.eviction import registry
    from maskkv_vllm.eviction.scorers import FullCache
    from maskkv_vllm.sampling_params import SamplingParams

    monkeypatch.setitem(registry._POLICIES, "keep-all", lambda c, p: FullCache())
    assert registry.policy_evicts("keep-all") is False
    assert registry.policy_evicts("snapkv") is True
    assert not SamplingParams(kv_policy="keep-all").evicts
    EngineConfig(kv_policy="keep-all", cache=CacheConfig("prefix"))  # no budget
    with pytest.raises(ValueError, match="kv_policy='snapkv' needs a kv_budget"):
        EngineConfig(kv_policy="snapkv")
