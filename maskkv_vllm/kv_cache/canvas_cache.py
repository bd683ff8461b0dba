"""The dual canvas cache (Fast-dLLM's DualCache) in a row's pages.

A row that caches its canvas keeps, per (layer, KV head), its kept prompt
entries and then the K/V of the C = L - block_length canvas positions outside
the current diffusion block, in the same page list: one page table and one
length per head, so the paged attention kernels read prompt and canvas alike.
The canvas entries are written at the step 0 capture and rewritten in place at
every block boundary (the pages are taken once, at step 0, and freed with the
row); the block's other steps forward only its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from maskkv_vllm.kv_cache.page_store import PageStore
from maskkv_vllm.kv_cache.page_table_tensors import head_slots
from maskkv_vllm.kv_cache.step_zero import WriteLayer
from maskkv_vllm.paging.page_table import HeadPages


@dataclass(frozen=True)
class CanvasSpan:
    """The current diffusion block of a row whose canvas K/V is cached."""

    block_start: int
    """Canvas offset of the block."""
    block_length: int
    """Its positions."""

    def outside(self, x: torch.Tensor) -> torch.Tensor:
        """(H, L, d) canvas K or V -> (H, L - block_length, d) without the block."""
        end = self.block_start + self.block_length
        return torch.cat([x[:, : self.block_start], x[:, end:]], dim=1)

    def stored(self, x: torch.Tensor) -> torch.Tensor:
        """The canvas entries step 0 keeps: those outside the block."""
        return self.outside(x)


def canvas_span(params, block_start: int, group: int = 1):
    """What a row whose ``params`` cache the canvas keeps after its prompt
    entries: its current block's ``CanvasSpan`` (dual), a ``FeatureSpan``
    (adaptive), else None.

    Args:
        params: the row's ``SamplingParams``.
        block_start: canvas offset of its current diffusion block.
        group: the model's query heads per KV head.
    """
    if params.canvas_cache == "adaptive":
        from maskkv_vllm.kv_cache.adaptive_canvas import FeatureSpan

        return FeatureSpan(params.gen_length, group)
    if not params.canvas_cached:
        return None
    return CanvasSpan(block_start, params.block_length)


def append_canvas(
    write: WriteLayer, k_canvas: torch.Tensor, v_canvas: torch.Tensor
) -> WriteLayer:
    """A ``WriteLayer`` that stores each head's kept prompt rows, then the canvas
    rows: head h holds ``lengths[h] + C`` entries.

    Args:
        k_canvas, v_canvas: (Hkv, C, d) the canvas K/V to keep (``outside``).
    """

    def write_with_canvas(layer, k, v, lengths):
        c = k_canvas.shape[1]
        heads, width = k.shape[0], max(lengths, default=0) + c
        keys = k.new_zeros(heads, width, k.shape[2])
        values = v.new_zeros(heads, width, v.shape[2])
        for h, n in enumerate(lengths):
            keys[h, :n], values[h, :n] = k[h, :n], v[h, :n]
            keys[h, n : n + c], values[h, n : n + c] = k_canvas[h], v_canvas[h]
        write(layer, keys, values, [n + c for n in lengths])

    return write_with_canvas


def region_slots(
    heads: Sequence[HeadPages],
    c: int,
    page_size: int,
    page_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Hkv, C) flat slots of the last C entries of every head of one layer.

    Args:
        heads: the layer's ``HeadPages`` (each holds its prompt entries + C).
        page_map: page id -> page of the store (None: the same ids).
    """
    slots = []
    for head in heads:
        if head.num_tokens < c:
            raise ValueError(
                f"a head holds {head.num_tokens} entries, fewer than the {c} "
                "canvas entries it caches"
            )
        ids = torch.tensor(head.page_ids, dtype=torch.long)
        ids = ids if page_map is None else page_map[ids]
        slots.append(head_slots(ids, head.num_tokens, page_size)[head.num_tokens - c :])
    return torch.stack(slots)


def write_canvas(
    store: PageStore,
    heads: Sequence[HeadPages],
    k: torch.Tensor,
    v: torch.Tensor,
    page_map: torch.Tensor | None = None,
) -> None:
    """Overwrite the last C entries of every head of one layer in place.

    Args:
        heads: the layer's ``HeadPages`` (each holds its prompt entries + C).
        k, v: (Hkv, C, d) the canvas K/V outside the new block.
        page_map: page id -> page of ``store`` (None: the same ids).
    """
    c = k.shape[1]
    if c == 0:
        return
    slots = region_slots(heads, c, store.page_size, page_map)
    store.write(
        slots.flatten().to(store.k_cache.device),
        k.reshape(-1, k.shape[2]),
        v.reshape(-1, v.shape[2]),
    )
