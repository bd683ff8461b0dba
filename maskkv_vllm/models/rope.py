"""Rotary position embedding at explicit absolute positions (rotate-half, fp32)."""

from __future__ import annotations

import torch


def rope_inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """Inverse frequencies ``theta^(-2i/head_dim)``, shape (head_dim // 2,), fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    return 1.0 / (theta ** (exponents / head_dim))


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for absolute positions.

    Args:
        positions: (B, T) integer positions.
        inv_freq: (head_dim // 2,) fp32.

    Returns:
        cos, sin: (B, 1, T, head_dim) fp32, broadcastable over heads.
    """
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, d)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x: (B, H, T, d) by the tables; computed in fp32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
