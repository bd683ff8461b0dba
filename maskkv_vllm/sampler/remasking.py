"""Candidates, confidences and the choice of positions to commit in one step."""

from __future__ import annotations

import torch


def gumbel_candidates(
    logits: torch.Tensor, temperature: float, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """Argmax of Gumbel-perturbed logits in float64 (a sample of softmax(logits/T)).

    Args:
        logits: (N, V) fp32.
        temperature: 0 gives the plain argmax.
        uniform: (N, V) float64 uniform draws (temperature > 0); consumed (the
            noise is computed in place, so a step holds one (N, V) float64
            buffer for it).

    Returns:
        (N,) candidate token ids.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    # float64 on purpose: low-precision Gumbel-max degrades generation quality
    # (arXiv:2409.02908), which is why upstream LLaDA uses it.
    gumbel = uniform.log_().neg_().pow_(temperature)
    return logits.to(torch.float64).exp_().div_(gumbel).argmax(dim=-1)


def low_confidences(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N,) float64 softmax probability of each candidate under ``logits`` (N, V)."""
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    return probs.gather(-1, candidates[:, None]).squeeze(-1)


def random_confidences(
    n: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """(n,) float64 uniform draws: ``remasking="random"``'s confidences."""
    return torch.rand(n, dtype=torch.float64, device=device, generator=generator)


def select_transfer(
    confidence: torch.Tensor, masked: torch.Tensor, k: int, threshold: float | None
) -> torch.Tensor:
    """Positions to commit this step.

    Args:
        confidence: (N,) float64 confidences of the block's positions.
        masked: (N,) bool, True where the position is still ``[MASK]``.
        k: scheduled commit count (ignored when ``threshold`` is set).
        threshold: Fast-dLLM rule: every masked position above it, at least one.

    Returns:
        Indices into the block, most confident first; ties go to the lower position.
    """
    conf = torch.where(masked, confidence, torch.full_like(confidence, -torch.inf))
    num_masked = int(masked.sum())
    if threshold is not None:
        k = max(1, int((conf > threshold).sum()))
    k = min(k, num_masked)
    order = torch.sort(conf, descending=True, stable=True).indices
    return order[:k]
