"""Dream's confidence rules and step schedule (``diffusion_generate``'s ``alg``).

Dream ranks a step's masked positions by one of three confidences of its
(temperature-free) softmax and commits a count that follows the masked share:
at step i of n, with ``t, s = linspace(1, eps, n + 1)[i : i + 2]``, it commits
``int(masked * (1 - s / t))`` positions, all that remain at the last step. Both
are computed in fp32, as Dream's own code does, so the ranking and the counts
are the reference's bit for bit; a block of ours runs the schedule over its own
steps (the block-wise variant), the whole canvas when ``block_length`` is the
canvas.
"""

from __future__ import annotations

import torch

DREAM_RULES = ("maskgit_plus", "topk_margin", "entropy")
"""``remasking`` values that are Dream's algorithms (they use its schedule)."""

EPS = 1e-3
"""Dream's default ``eps``: the last timestep of the schedule."""

ENTROPY_EPSILON = 1e-10
"""Added inside the log of the ``entropy`` rule, as Dream does."""


def dream_confidences(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """(N, V) fp32 logits -> (N,) fp32 confidences of ``rule``.

    "maskgit_plus": the top probability; "topk_margin": top-1 minus top-2
    probability; "entropy": the negative entropy ``sum p log(p + 1e-10)``.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if rule == "maskgit_plus":
        return probs.max(dim=-1).values
    if rule == "topk_margin":
        top = probs.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    if rule == "entropy":
        return (probs * torch.log(probs + ENTROPY_EPSILON)).sum(dim=-1)
    raise ValueError(f"remasking={rule!r} is not one of {DREAM_RULES}")


def dream_transfer_count(num_masked: int, step: int, steps: int) -> int:
    """Positions Dream commits at ``step`` (0-based) of ``steps`` when
    ``num_masked`` are still masked (its fp32 arithmetic).

    >>> [dream_transfer_count(8, i, 4) for i in range(4)]
    [1, 2, 3, 8]
    """
    if step >= steps - 1:
        return num_masked
    times = torch.linspace(1, EPS, steps + 1)
    t, s = times[step], times[step + 1]
    return int(torch.tensor(float(num_masked)) * (1 - s / t))
