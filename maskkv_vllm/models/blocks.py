"""The decoder loop every model here shares: RoPE at explicit positions, then
each block with the attention callable."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from maskkv_vllm.models.attention import Attention, DenseAttention
from maskkv_vllm.models.rope import rope_cos_sin, rope_inv_freq


def run_blocks(
    blocks: Iterable[nn.Module],
    x: torch.Tensor,
    positions: torch.Tensor,
    head_dim: int,
    rope_theta: float,
    attn: Attention | None = None,
) -> torch.Tensor:
    """Every block over embedded tokens, ``block(x, cos, sin, attn)``.

    Args:
        x: (B, T, d_model) token embeddings.
        positions: (B, T) absolute positions (prompt 0..M-1, canvas M..M+L-1).
        rope_theta: RoPE base (NTK scaling already applied).
        attn: attention callable; default dense attention over all T tokens.
            One with ``run_layer(block, x, cos, sin)`` runs each block itself
            (through its ``qkv``, ``value``, ``attn_proj`` and ``ffn``).

    Returns:
        (B, T, d_model) hidden states before the final norm.
    """
    attn = attn if attn is not None else DenseAttention()
    # Built per call in fp32: a buffer would be cast by model.to(bfloat16).
    inv_freq = rope_inv_freq(head_dim, rope_theta, positions.device)
    cos, sin = rope_cos_sin(positions, inv_freq)
    # An attention that runs whole layers (the adaptive canvas cache recomputes
    # only some rows) takes each block's pieces instead of its forward.
    run_layer = getattr(attn, "run_layer", None)
    for block in blocks:
        x = (
            block(x, cos, sin, attn)
            if run_layer is None
            else run_layer(block, x, cos, sin)
        )
    return x
