"""Candidates, confidences and the choice of positions to commit in one step."""

from __future__ import annotations

import torch


def gumbel_candidates(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Argmax of Gumbel-perturbed logits in float64 (a sample of softmax(logits/T)).

    Args:
        logits: (N, V) fp32.
        temperature: 0 gives the plain argmax.

    Returns:
        (N,) candidate token ids.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    # float64 on purpose: low-precision Gumbel-max degrades generation quality
    # (arXiv:2409.02908), which is why upstream LLaDA uses it.
    logits64 = logits.to(torch.float64)
    u = torch.rand(
        logits64.shape, dtype=torch.float64, device=logits.device, generator=generator
    )
    gumbel = (-torch.log(u)) ** temperature
    return (logits64.exp() / gumbel).argmax(dim=-1)


def confidences(
    logits: torch.Tensor,
    candidates: torch.Tensor,
    remasking: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(N,) float64 confidence of each candidate.

    "low_confidence": softmax probability of the candidate under the raw logits;
    "random": a uniform draw from the request's generator.
    """
    if remasking == "low_confidence":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        return probs.gather(-1, candidates[:, None]).squeeze(-1)
    if remasking == "random":
        n = candidates.shape[0]
        return torch.rand(
            n, dtype=torch.float64, device=logits.device, generator=generator
        )
    raise ValueError(f"remasking={remasking!r} is not supported")


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
