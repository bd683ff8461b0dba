"""Budget formulas of MaskKV (paper eqs. 9-15) and the baselines, with the worked
example of maskkv-method.md section 13."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskkv_vllm.eviction.budget import (
    boundary_aware_layer_budgets,
    fewest_pages,
    floor_budget,
    kmeans_1d,
    prompt_preference_head_budgets,
    pyramid_layer_budgets,
    reserved_pages,
    squeeze_layer_budgets,
)
from maskkv_vllm.eviction.config import MaskKVConfig
from maskkv_vllm.eviction.registry import make_policy

PROFILE_32 = [0.30] + [0.05] * 30 + [0.25]


def test_worked_example_layer_budgets():
    # k_p = 8192; k_base = floor(102.4) = 102; k_imp = 8192 - 32 * 102 = 4928;
    # k_group,B = 4928 * 0.55 / 2.05 = 1322.15 -> 102 + floor(661.07) = 763;
    # k_group,M = 3605.85 -> 102 + floor(120.195) = 222.
    budgets = boundary_aware_layer_budgets(256, PROFILE_32, beta=0.4)
    assert budgets[0] == budgets[31] == 763
    assert budgets[1:31] == [222] * 30
    assert sum(budgets) == 8186 <= 8192
    assert floor_budget(0.4 * 256) == 102 and 256 * 32 - 32 * 102 == 4928


def test_worked_example_head_budgets():
    # One head with P_hat = 2/32, one with 0, thirty with 1/32.
    preference = [2.0, 0.0] + [1.0] * 30
    heads = prompt_preference_head_budgets(222, preference, alpha=0.1)
    assert heads[:3] == [421, 22, 222]
    assert sum(heads) == 7103 <= 32 * 222
    # The reservation bound: ceil(7104 / 16) + 32 = 476 pages for this layer,
    # and the actual split needs 27 + 2 + 30 * 14 = 449.
    assert reserved_pages([222], 10_000, 32, 16) == 476
    assert sum(math.ceil(k / 16) for k in heads) == 449 <= 476


def test_floor_rule_lands_on_integers():
    assert floor_budget(22.2 + 199.8) == 222
    assert floor_budget(0.1 * 3) == 0 and floor_budget(2.9999999999) == 3


@given(
    st.integers(1, 600),
    st.lists(st.floats(0.001, 1.0), min_size=3, max_size=40),
    st.floats(0.0, 1.0),
)
def test_layer_budget_invariants(budget, importance, beta):
    d = len(importance)
    budgets = boundary_aware_layer_budgets(budget, importance, beta)
    assert d * budget - d < sum(budgets) <= d * budget
    assert all(k >= floor_budget(beta * budget) for k in budgets)
    assert len(set(budgets[1:-1])) <= 1 and budgets[0] == budgets[-1]


@pytest.mark.parametrize("budget", [1, 16, 100, 256, 1000])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.4, 1.0])
def test_uniform_profile_and_beta_one_give_b_everywhere(budget, beta):
    assert boundary_aware_layer_budgets(budget, [0.7] * 32, beta) == [budget] * 32
    assert boundary_aware_layer_budgets(budget, PROFILE_32, 1.0) == [budget] * 32


@given(
    st.integers(1, 2000),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=32),
    st.floats(0.0, 1.0),
)
def test_head_budget_invariants(layer_budget, preference, alpha):
    heads = prompt_preference_head_budgets(layer_budget, preference, alpha)
    n = len(preference)
    assert n * layer_budget - n < sum(heads) <= n * layer_budget
    assert all(h >= floor_budget(alpha * layer_budget) for h in heads)
    # Monotone: more prompt preference never means a smaller budget.
    for (p1, h1), (p2, h2) in zip(
        sorted(zip(preference, heads, strict=True)),
        sorted(zip(preference, heads, strict=True))[1:],
        strict=False,
    ):
        assert p1 > p2 or h1 <= h2


def test_alpha_one_gives_every_head_the_layer_budget():
    assert prompt_preference_head_budgets(50, [0.9, 0.1, 0.0], 1.0) == [50, 50, 50]


def test_pyramid_falls_linearly():
    # B = 64, w = 32: A = 32, bottom 2A - A/20 = 62.4, top A/20 = 1.6 (+ the window).
    budgets = pyramid_layer_budgets(64, 5, prompt_len=1000, window=32, beta=20)
    assert budgets == [32 + 62, 32 + 47, 32 + 32, 32 + 16, 32 + 1]
    diffs = [a - b for a, b in zip(budgets, budgets[1:], strict=False)]
    assert all(14 <= x <= 16 for x in diffs)
    assert abs(sum(budgets) - 5 * 64) <= 5


def test_pyramid_clamps_the_bottom_to_the_prompt():
    # M - w = 40 < 62.4: bottom = 40, top = 2A - 40 = 24.
    budgets = pyramid_layer_budgets(64, 3, prompt_len=72, window=32, beta=20)
    assert budgets == [72, 64, 56]


def test_squeeze_gives_the_least_important_group_forty_percent():
    similarity = [0.2, 0.21, 0.5, 0.52, 0.9, 0.91]
    assert kmeans_1d(similarity, 3) == [0, 0, 1, 1, 2, 2]
    budgets = squeeze_layer_budgets(100, similarity, fraction=0.4)
    # Layers 4, 5 (highest similarity) keep 40; the 120 they free go to the other 4.
    assert budgets == [130, 130, 130, 130, 40, 40]
    assert squeeze_layer_budgets(100, [0.5] * 4) == [100] * 4


def test_reserved_pages_never_exceed_the_full_prompt():
    # k_l >= M: the whole prompt, 2 heads x ceil(20 / 16) = 4 pages per layer.
    assert reserved_pages([64, 64], 20, 2, 16) == 8
    assert reserved_pages([8, 8], 1000, 2, 16) == 2 * (1 + 2)


def test_fewest_pages_is_the_lower_bound_and_the_full_prompt_where_k_covers_m():
    # Worked example layer: ceil(32 * 222 / 16) = 444 <= the split's 449 <= 476.
    assert fewest_pages([222], 10_000, 32, 16) == 444
    # k_l >= M: every head keeps all 20 tokens, 2 pages each, not ceil(40 / 16).
    assert fewest_pages([64, 20], 20, 2, 16) == 8
    assert fewest_pages([8, 8], 1000, 2, 16) == 2


def test_a_policy_that_keeps_all_reserves_the_full_prompt_in_every_layer():
    full = make_policy("full", MaskKVConfig(), None)
    assert full.kept_per_layer(3, None, 20) == [20, 20, 20]
    assert make_policy("snapkv", MaskKVConfig(), None).kept_per_layer(2, 8, 20) == [
        8,
        8,
    ]
