"""Attention callables the model calls once per layer.

The model computes post-RoPE q/k/v and hands them to an ``Attention`` object, which
decides which keys each query sees (padding masks, cached prompt KV, paged KV,
eviction). Keeping that choice outside the model lets one forward pass serve
every cache mode.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Attention(Protocol):
    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Attend for one layer.

        Args:
            layer: layer index.
            q: (B, n_heads, T, head_dim) post-RoPE queries.
            k, v: (B, n_kv_heads, T, head_dim) post-RoPE keys and values.

        Returns:
            (B, n_heads, T, head_dim) attention output.
        """
        ...


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Non-causal SDPA with grouped-query heads.

    Args:
        q: (B, Hq, Tq, d); k, v: (B, Hkv, Tk, d).
        key_mask: (B, Tk) bool, True where the key takes part; None for all.
    """
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1]
    )


class DenseAttention:
    """Every query attends to every unpadded key of its own row."""

    def __init__(self, key_mask: torch.Tensor | None = None) -> None:
        """key_mask: (B, T) bool, True for real tokens; None when nothing is padded."""
        self.key_mask = key_mask

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        return dense_attention(q, k, v, self.key_mask)
