"""Dream's confidence rules and step schedule (``diffusion_generate``'s ``alg``).

Dream ranks a step's masked positions by one of three confidences of its
softmax (over the logits divided by the temperature and top-p/top-k filtered,
``top_filters``) and commits a count that follows the masked share: at step i
of n, with ``t, s = linspace(1, eps, n + 1)[i : i + 2]``, it commits
``int(masked * (1 - s / t))`` positions, all that remain at the last step; with
``alg_temp`` > 0 it draws those positions from ``softmax(confidence / alg_temp)``
instead of taking the top ones. ``origin`` has no confidence: each masked
position is committed with probability ``1 - s / t`` (all at the last step).
Everything is computed in fp32, as Dream's own code does, so rankings, counts
and draws are the reference's bit for bit; a block of ours runs the schedule
over its own steps (the block-wise variant), the whole canvas when
``block_length`` is the canvas.
"""

from __future__ import annotations

import torch

CONFIDENCE_RULES = ("maskgit_plus", "topk_margin", "entropy")
"""Dream's rules that rank positions by a confidence."""
FIRST_SLOT = "fast_dllm_block"
"""Fast-dLLM's block-wise Dream sampler: a block's first forward commits the
block's first slot, then ``entropy`` on Dream's schedule from its second
timestep, the row it ranks over being the block (its dual-cache variant)."""
DREAM_RULES = (*CONFIDENCE_RULES, "origin", FIRST_SLOT)
"""``remasking`` values that are Dream's algorithms (they use its schedule)."""


def confidence_rule(remasking: str) -> str | None:
    """The confidence a ``remasking`` value ranks by (None: not Dream's)."""
    if remasking == FIRST_SLOT:
        return "entropy"
    return remasking if remasking in CONFIDENCE_RULES else None


EPS = 1e-3
"""Dream's default ``eps``: the last timestep of the schedule."""

ENTROPY_EPSILON = 1e-10
"""Added inside the log of the ``entropy`` rule, as Dream does."""


def dream_confidences(
    probs: torch.Tensor, candidates: torch.Tensor, rule: str
) -> torch.Tensor:
    """(N,) fp32 confidences of ``rule`` from the slots' (N, V) fp32 probabilities.

    "maskgit_plus": the candidate's probability (the top one at temperature 0);
    "topk_margin": top-1 minus top-2 probability; "entropy": the negative
    entropy ``sum p log(p + 1e-10)``.
    """
    if rule == "maskgit_plus":
        return probs.gather(-1, candidates[:, None]).squeeze(-1)
    if rule == "topk_margin":
        top = probs.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    if rule == "entropy":
        return (probs * torch.log(probs + ENTROPY_EPSILON)).sum(dim=-1)
    raise ValueError(f"remasking={rule!r} is not one of {CONFIDENCE_RULES}")


def _times(step: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    times = torch.linspace(1, EPS, steps + 1)
    return times[step], times[step + 1]


def dream_transfer_count(num_masked: int, step: int, steps: int) -> int:
    """Positions Dream commits at ``step`` (0-based) of ``steps`` when
    ``num_masked`` are still masked (its fp32 arithmetic).

    >>> [dream_transfer_count(8, i, 4) for i in range(4)]
    [1, 2, 3, 8]
    """
    if step >= steps - 1:
        return num_masked
    t, s = _times(step, steps)
    return int(torch.tensor(float(num_masked)) * (1 - s / t))


def origin_transfer(
    masked: torch.Tensor, step: int, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """``origin``'s positions: each masked one with probability ``1 - s / t``.

    Args:
        masked: (N,) bool, the block's still-masked positions.
        generator: the request's stream; one fp32 draw per masked position, in
            position order, at every step (the last one too, as Dream draws).

    Returns:
        Indices into the block.
    """
    where = masked.nonzero().squeeze(-1)
    u = torch.rand(where.numel(), generator=generator, device=masked.device)
    if step >= steps - 1:
        return where
    t, s = _times(step, steps)
    return where[u < (1 - s / t).to(masked.device)]


def ranked_transfer(
    confidence: torch.Tensor,
    masked: torch.Tensor,
    k: int,
    alg_temp: float,
    generator: torch.Generator,
    offset: int,
    width: int,
) -> torch.Tensor:
    """Dream's ``k`` positions: the top ``k`` confidences (``alg_temp`` 0) or
    ``k`` drawn without replacement from ``softmax(confidence / alg_temp)``.

    Dream ranks over its whole sequence, a (1, width) fp32 row with the prompt
    and committed slots at -inf; both ``topk``'s order among equal confidences
    (common under top_p/top_k, where a slot keeps one token at probability 1)
    and the draws depend on that row's length, dtype and layout; so this builds
    the same row, the block at ``offset``.

    Args:
        confidence: (N,) confidences of the block's positions.
        masked: (N,) bool.
        offset: the block's first position in Dream's sequence (prompt length
            + block start).
        width: Dream's sequence length (prompt + canvas).

    Returns:
        Indices into the block.
    """
    full = torch.full((1, width), -torch.inf, device=confidence.device)
    n = confidence.shape[0]
    full[0, offset : offset + n] = torch.where(
        masked, confidence.float(), torch.full_like(full[0, :n], -torch.inf)
    )
    if alg_temp == 0:
        return torch.topk(full, k).indices[0] - offset
    probs = torch.softmax(full / alg_temp, dim=-1)
    return torch.multinomial(probs, k, generator=generator)[0] - offset
