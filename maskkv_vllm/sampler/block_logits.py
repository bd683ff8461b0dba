"""The current block's logits of each row (mask-only projection; both engines)."""

from __future__ import annotations

import torch


def block_logits(
    hidden: list[torch.Tensor], canvas_starts: list[int], seqs: list, project
) -> list[torch.Tensor]:
    """Logits of each row's current block only: the LM head runs on those slots.

    Args:
        hidden: per row, (T_i, d_model) hidden states.
        canvas_starts: per row, the index of canvas slot 0 in ``hidden[i]``.
        seqs: per row, its ``DiffusionSequence`` (block position and length).
        project: hidden (N, d_model) -> logits (N, V).

    Returns:
        Per row, (block_length, V) logits.
    """
    blocks = [
        h[c + s.block_start : c + s.block_start + s.params.block_length]
        for h, c, s in zip(hidden, canvas_starts, seqs, strict=True)
    ]
    sizes = [b.shape[0] for b in blocks]
    return list(project(torch.cat(blocks)).split(sizes))
