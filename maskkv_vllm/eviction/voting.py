"""Attention column sums at the first denoising step, without materialising A.

Mask voting (MaskKV), the SnapKV observation window and H2O-style all-voting are the
same computation with different query rows: softmax each query row over ALL keys of
the sequence (prompt and canvas, as the model's own rows do), then sum the rows'
probabilities per prompt column. Two passes over key chunks keep memory at
O(rows x chunk) per head: the row log-sum-exp first, then the column sums.
"""

from __future__ import annotations

import torch


def row_logsumexp(q: torch.Tensor, k: torch.Tensor, chunk: int) -> torch.Tensor:
    """Log-sum-exp of each query row's scaled scores over all keys.

    Args:
        q: (Hkv, R, d) fp32 query rows, already scaled by 1/sqrt(d) and grouped per
            KV head (R = group size x rows).
        k: (Hkv, T, d) fp32 keys.

    Returns:
        (Hkv, R) fp32.
    """
    lse = torch.full(q.shape[:2], -torch.inf, dtype=torch.float32, device=q.device)
    for start in range(0, k.shape[1], chunk):
        s = q @ k[:, start : start + chunk].transpose(1, 2)  # (Hkv, R, C)
        lse = torch.logaddexp(lse, torch.logsumexp(s, dim=-1))
    return lse


def column_attention_sums(
    q: torch.Tensor, k: torch.Tensor, num_cols: int, chunk: int = 1024
) -> torch.Tensor:
    """Per query head, the summed attention probability each of the first
    ``num_cols`` keys receives from the given query rows.

    Args:
        q: (Hq, R, d) post-RoPE query rows (the voters).
        k: (Hkv, T, d) post-RoPE keys of the whole sequence (T >= num_cols).
        num_cols: score the keys 0..num_cols-1 (the prompt).
        chunk: keys per chunk.

    Returns:
        (Hq, num_cols) fp32 sums; each row of A sums to 1 over all T keys.
    """
    hq, r, d = q.shape
    hkv = k.shape[0]
    group = hq // hkv
    qg = (q.float() * d**-0.5).reshape(hkv, group * r, d)  # query heads grouped per KV
    kf = k.float()
    lse = row_logsumexp(qg, kf, chunk)
    out = torch.empty(hkv, group, num_cols, dtype=torch.float32, device=q.device)
    for start in range(0, num_cols, chunk):
        end = min(start + chunk, num_cols)
        s = qg @ kf[:, start:end].transpose(1, 2)  # (Hkv, g*R, C)
        p = torch.exp(s - lse[..., None]).view(hkv, group, r, end - start)
        out[:, :, start:end] = p.sum(dim=2)
    return out.reshape(hq, num_cols)


def group_heads(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """(Hq, M) query-head scores -> (Hkv, M): summed over each KV group (GQA)."""
    hq, m = scores.shape
    return scores.view(num_kv_heads, hq // num_kv_heads, m).sum(dim=1)
