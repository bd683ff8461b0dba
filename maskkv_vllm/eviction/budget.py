"""Budget arithmetic of MaskKV and the baselines (pure Python, float64 flooring).

B is the paper's budget: the average number of prompt KV pairs kept per head per
layer, so a model with D layers keeps about B * D per head in total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EPS = 1e-9
"""``floor(x + EPS)`` so that values such as 22.2 + 199.8 land on 222 everywhere."""


def floor_budget(x: float) -> int:
    return math.floor(float(x) + EPS)


def boundary_aware_layer_budgets(
    budget: int,
    importance: Sequence[float],
    beta: float,
    boundary: Sequence[int] | None = None,
) -> list[int]:
    """MaskKV's layer budgets k_l (paper eqs. 9-13).

    Every layer gets ``floor(beta * B)``; the rest of the total ``B * D`` is split
    between the boundary layers and the middle layers in proportion to their summed
    importance, and evenly inside each group.

    Args:
        budget: B, average entries per head per layer.
        importance: I(l) per layer, from the offline profile.
        beta: floor fraction in [0, 1].
        boundary: indices of the boundary layers; default {0, D-1}.
    """
    d = len(importance)
    boundary = sorted({0, d - 1} if boundary is None else set(boundary))
    middle = [i for i in range(d) if i not in boundary]
    total = budget * d
    k_base = floor_budget(beta * total / d)
    k_imp = total - d * k_base
    i_b = sum(importance[i] for i in boundary)
    i_m = sum(importance[i] for i in middle)
    if not middle or i_b + i_m <= 0:
        # Degenerate profiles: share the rest evenly over all layers.
        return [k_base + floor_budget(k_imp / d)] * d
    group_b = k_imp * i_b / (i_b + i_m)
    group_m = k_imp - group_b
    k_bound = k_base + floor_budget(group_b / len(boundary))
    k_mid = k_base + floor_budget(group_m / len(middle))
    return [k_bound if i in boundary else k_mid for i in range(d)]


def prompt_preference_head_budgets(
    layer_budget: int, preference: Sequence[float], alpha: float
) -> list[int]:
    """MaskKV's head budgets (paper eq. 15): ``floor(a*k + (1-a)*N*k*P_hat_h)``.

    Args:
        layer_budget: k_l.
        preference: P_h per head (share of mask attention that went to the prompt).
        alpha: floor fraction in [0, 1].
    """
    n = len(preference)
    total = sum(preference)
    shares = [p / total for p in preference] if total > 0 else [1.0 / n] * n
    return [
        floor_budget(alpha * layer_budget + (1 - alpha) * n * layer_budget * s)
        for s in shares
    ]


def pyramid_layer_budgets(
    budget: int, num_layers: int, prompt_len: int, window: int, beta: float = 20.0
) -> list[int]:
    """PyramidKV: with mean A = B - w, the bottom layer gets 2A - A/beta and the top
    A/beta, linear in between; every layer also keeps its w-token window. If the
    bottom exceeds M - w it is clamped and the top becomes 2A - bottom."""
    w = min(window, budget)
    a = budget - w
    bottom, top = 2 * a - a / beta, a / beta
    if bottom > prompt_len - w:
        bottom = max(prompt_len - w, 0)
        top = 2 * a - bottom
    if num_layers == 1:
        return [w + floor_budget(a)]
    step = (top - bottom) / (num_layers - 1)
    return [w + floor_budget(bottom + step * i) for i in range(num_layers)]


def kmeans_1d(values: Sequence[float], k: int = 3, iters: int = 50) -> list[int]:
    """Deterministic 1-D k-means (centres start at quantiles); returns a group per
    value, groups numbered by ascending centre."""
    order = sorted(values)
    k = min(k, len(set(values)))
    centres = [order[round(i * (len(order) - 1) / max(k - 1, 1))] for i in range(k)]
    labels = [0] * len(values)
    for _ in range(iters):
        labels = [min(range(k), key=lambda c: (abs(v - centres[c]), c)) for v in values]
        new = []
        for c in range(k):
            members = [v for v, lab in zip(values, labels, strict=True) if lab == c]
            new.append(sum(members) / len(members) if members else centres[c])
        if new == centres:
            break
        centres = new
    rank = {c: r for r, c in enumerate(sorted(range(k), key=lambda c: centres[c]))}
    return [rank[lab] for lab in labels]


def squeeze_layer_budgets(
    budget: int, similarity: Sequence[float], fraction: float = 0.4, groups: int = 3
) -> list[int]:
    """SqueezeAttention: cluster layers by the cosine similarity of their attention
    input and output into ``groups``; the least important group (highest similarity)
    keeps ``fraction * B`` per layer, and what it frees is shared evenly by the
    other layers."""
    d = len(similarity)
    labels = kmeans_1d(similarity, groups)
    least = max(labels)
    squeezed = [i for i in range(d) if labels[i] == least]
    others = [i for i in range(d) if labels[i] != least]
    if not others:
        return [budget] * d
    low = floor_budget(fraction * budget)
    high = floor_budget(budget + len(squeezed) * (budget - low) / len(others))
    return [low if i in squeezed else high for i in range(d)]


def reserved_pages(
    layer_budgets: Sequence[int],
    prompt_len: int,
    num_kv_heads: int,
    page_size: int,
    budget_heads: int | None = None,
    canvas_tokens: int = 0,
) -> int:
    """Upper bound on pages a request's prompt needs after eviction, whatever the
    head split: per layer ``ceil((min(N * M, H * min(k_l, M)) + N * C) / P) + N``,
    and never more than the full prompt (``N * ceil((M + C) / P)``).

    Args:
        layer_budgets: k_l per layer (a layer's heads keep at most ``H * k_l``).
        prompt_len: M.
        num_kv_heads: N, the KV heads whose pages are counted.
        page_size: P, token slots per page.
        budget_heads: H, the heads that share the layer budget; default N. Under
            tensor parallelism a rank counts its own N heads, but MaskKV may give
            the layer's whole budget to them, so H is every head of the layer.
        canvas_tokens: C, canvas entries every head keeps after its prompt
            entries (``SamplingParams.canvas_cached``: the dual canvas cache).
    """
    heads = num_kv_heads if budget_heads is None else budget_heads
    c = canvas_tokens
    full = num_kv_heads * math.ceil((prompt_len + c) / page_size)
    pages = 0
    for k in layer_budgets:
        kept = min(num_kv_heads * prompt_len, heads * min(k, prompt_len))
        kept += num_kv_heads * c
        pages += min(full, math.ceil(kept / page_size) + num_kv_heads)
    return pages


def fewest_pages(
    layer_budgets: Sequence[int],
    prompt_len: int,
    num_kv_heads: int,
    page_size: int,
    canvas_tokens: int = 0,
) -> int:
    """Pages a request's prompt needs at the least: ``ceil(N * (k_l + C) / P)``
    per layer, all ``N * ceil((M + C) / P)`` of the full prompt where
    ``k_l >= M`` (every head keeps everything); a request above the pool can
    never run. ``reserved_pages`` is the matching upper bound.
    """
    c = canvas_tokens
    full = num_kv_heads * math.ceil((prompt_len + c) / page_size)
    return sum(
        full if k >= prompt_len else math.ceil(num_kv_heads * (k + c) / page_size)
        for k in layer_budgets
    )
