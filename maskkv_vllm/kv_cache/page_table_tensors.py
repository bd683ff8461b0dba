"""Page tables as tensors: a head's slots and one layer's (heads, pages) table.

Shared by the embedded engine's ``PagedKVCache`` and the vLLM runner's
``RequestPages``, whose page ids go through a translation table first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskkv_vllm.paging.page_table import HeadPages


def head_slots(page_ids: torch.Tensor, num_tokens: int, page_size: int) -> torch.Tensor:
    """(num_tokens,) flat slot ids (page * P + offset) of a head's first tokens.

    Args:
        page_ids: (n,) int64 the head's pages, in order.
    """
    offsets = torch.arange(page_size, device=page_ids.device)
    return (page_ids[:, None] * page_size + offsets).flatten()[:num_tokens]


def layer_table(
    heads: Sequence[HeadPages], device: torch.device | str, page_map=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One request's page table for one layer.

    Args:
        heads: the layer's ``HeadPages``, one per KV head.
        page_map: optional (n,) tensor mapping the heads' page ids to the ids
            the cache tensors use (None: the ids are those ids).

    Returns:
        page_table: (Hkv, max_pages) int32, padded with page 0 (the null page).
        seq_lens: (Hkv,) int32 tokens held per head.
    """
    width = max(1, max(len(h.page_ids) for h in heads))
    rows = [h.page_ids + [0] * (width - len(h.page_ids)) for h in heads]
    table = torch.tensor(rows, dtype=torch.long)
    if page_map is not None:
        table = page_map[table]
    lens = [h.num_tokens for h in heads]
    return (
        table.to(device=device, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32, device=device),
    )


def stack_tables(
    tables: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-request ``layer_table`` results -> (B, Hkv, max_pages), (B, Hkv)."""
    if len(tables) == 1:
        bt, lens = tables[0]
        return bt[None], lens[None]
    width = max(bt.shape[1] for bt, _ in tables)
    first = tables[0][0]
    out = torch.zeros(
        len(tables), first.shape[0], width, dtype=torch.int32, device=first.device
    )
    for row, (bt, _) in enumerate(tables):
        out[row, :, : bt.shape[1]] = bt
    return out, torch.stack([lens for _, lens in tables])
