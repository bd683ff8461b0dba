"""Pack sequences of different lengths into padded forward batches.

Full rows are ``[pad..., prompt, canvas, pad...]``: prompts left-padded to the longest
prompt P, canvases right-padded, so every row's canvas starts at column P. Positions
are explicit (prompt 0..M-1, canvas M..M+L-1) and padded keys are masked out, so
padding never changes a row's result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    """Padded inputs of one forward pass.

    Attributes:
        input_ids: (B, T) ids; pads hold ``pad_id``.
        positions: (B, T) absolute positions; pads hold 0.
        key_mask: (B, T) bool, True for real tokens.
        canvas_start: column where every row's canvas begins.
        prompt_spans: per row, (start, end) columns of its prompt.
        row_ends: per row, the column after its last real token.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    key_mask: torch.Tensor
    canvas_start: int
    prompt_spans: list[tuple[int, int]]
    row_ends: list[int]


def full_batch(
    prompts: list[torch.Tensor], canvases: list[torch.Tensor], pad_id: int
) -> ForwardBatch:
    """Rows holding prompt and canvas; prompts (M_b,), canvases (L_b,)."""
    width_p = max(p.shape[0] for p in prompts)
    width_c = max(c.shape[0] for c in canvases)
    b, device = len(prompts), prompts[0].device
    ids = torch.full((b, width_p + width_c), pad_id, dtype=torch.long, device=device)
    pos = torch.zeros_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    spans, ends = [], []
    for row, (p, c) in enumerate(zip(prompts, canvases, strict=True)):
        m, n = p.shape[0], c.shape[0]
        start = width_p - m
        ids[row, start:width_p] = p
        ids[row, width_p : width_p + n] = c
        pos[row, start : width_p + n] = torch.arange(m + n, device=device)
        mask[row, start : width_p + n] = True
        spans.append((start, width_p))
        ends.append(width_p + n)
    return ForwardBatch(ids, pos, mask, width_p, spans, ends)


def canvas_batch(
    prompt_lens: list[int], canvases: list[torch.Tensor], pad_id: int
) -> ForwardBatch:
    """Rows holding only the canvas, at positions after each row's prompt."""
    width = max(c.shape[0] for c in canvases)
    b, device = len(canvases), canvases[0].device
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    pos = torch.zeros_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (m, c) in enumerate(zip(prompt_lens, canvases, strict=True)):
        n = c.shape[0]
        ids[row, :n] = c
        pos[row, :n] = torch.arange(m, m + n, device=device)
        mask[row, :n] = True
    ends = [c.shape[0] for c in canvases]
    return ForwardBatch(ids, pos, mask, 0, [(0, 0)] * b, ends)
