"""Canvas queries over a request's paged prompt KV plus the canvas's own KV.

One entry point, ``paged_attention``; the torch path below (gather the pages, then one
SDPA with a per-head key mask) is the reference and the CPU path. A GPU kernel, when
available, is selected automatically behind the same signature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_paged(
    cache: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense copy of ragged paged tokens.

    Args:
        cache: (num_blocks, block_size, d) page tensor.
        block_tables: (B, H, max_blocks) int page ids, padded with the null page.
        seq_lens: (B, H) tokens held per head.

    Returns:
        tokens: (B, H, N, d) with N = max(seq_lens); padding rows are garbage.
        valid: (B, H, N) bool.
    """
    b, h, _ = block_tables.shape
    block_size, d = cache.shape[1], cache.shape[2]
    n = int(seq_lens.max()) if seq_lens.numel() else 0
    j = torch.arange(n, device=cache.device)
    page = block_tables.long().gather(-1, (j // block_size).expand(b, h, n))
    slots = page * block_size + j % block_size  # (B, H, N)
    valid = j < seq_lens[..., None]
    tokens = cache.view(-1, d)[torch.where(valid, slots, 0)]
    return tokens, valid


def paged_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Reference: gather the pages, append the canvas KV, one masked SDPA in fp32."""
    pk, valid = gather_paged(k_cache, block_tables, seq_lens)
    pv, _ = gather_paged(v_cache, block_tables, seq_lens)
    b, hkv, lq, _ = k.shape
    keys = torch.cat([pk, k], dim=2).float()
    values = torch.cat([pv, v], dim=2).float()
    mask = torch.cat([valid, canvas_mask[:, None, :].expand(b, hkv, lq)], dim=-1)
    mask = mask.repeat_interleave(q.shape[1] // hkv, dim=1)[:, :, None, :]
    out = F.scaled_dot_product_attention(
        q.float(), keys, values, attn_mask=mask, enable_gqa=q.shape[1] != hkv
    )
    return out.to(q.dtype)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Canvas queries over paged prompt KV (ragged per head) and fresh canvas KV.

    Args:
        q: (B, Hq, Lc, d) post-RoPE canvas queries.
        k, v: (B, Hkv, Lc, d) the canvas's own post-RoPE keys and values.
        canvas_mask: (B, Lc) bool, True for real canvas slots.
        k_cache, v_cache: (num_blocks, block_size, d) page tensors.
        block_tables: (B, Hkv, max_blocks) int32 page ids per (request, KV head).
        seq_lens: (B, Hkv) int32 prompt tokens held per (request, KV head).

    Returns:
        (B, Hq, Lc, d) attention output; softmax in fp32.
    """
    return paged_attention_torch(
        q, k, v, canvas_mask, k_cache, v_cache, block_tables, seq_lens
    )
