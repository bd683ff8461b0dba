"""Nucleus (top-p) and top-k filters of a slot's token distribution.

As Dream's ``diffusion_generate`` applies them (``top_p_logits``, then
``top_k_logits``, on logits already divided by the temperature): top-p keeps the
most probable tokens up to and including the first whose cumulative probability
exceeds ``top_p``; top-k keeps the tokens whose logit is at least the k-th
largest (ties kept). The most probable token always survives, so the argmax
(temperature 0) never changes; what changes is the sampled distribution and the
probabilities Dream's confidences read.
"""

from __future__ import annotations

import torch


def top_filter_mask(
    logits: torch.Tensor, top_p: float, top_k: int
) -> torch.Tensor | None:
    """(N, V) bool, True for the tokens removed; None when nothing is filtered.

    Args:
        logits: (N, V) fp32 logits, already divided by the temperature.
        top_p: 1 keeps every token.
        top_k: 0 (or -1) keeps every token.
    """
    removed = None
    if top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
        drop[..., 0] = False
        removed = torch.zeros_like(drop).scatter_(-1, order, drop)
    if top_k > 0:
        kept = logits if removed is None else logits.masked_fill(removed, -torch.inf)
        kth = torch.topk(kept, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        below = kept < kth
        removed = below if removed is None else removed | below
    return removed
