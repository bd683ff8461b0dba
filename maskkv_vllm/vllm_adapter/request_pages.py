"""vLLM's KV cache tensor as head-pages, and one request's pages inside its blocks.

vLLM allocates one tensor for the pool layer (``kv_spec.DiffusionKVSpec``),
``num_blocks * Hkv * P * 2 * d`` elements in a backend-specific layout. Only
our attention ever reads or writes it (vLLM's kernels never run on it), so its
memory is reinterpreted: the first half holds keys, the second values, each as
``num_blocks * Hkv`` pages of ``(P, d)``; page ``b * Hkv + j`` belongs to vLLM
block ``b``. Pages 0..Hkv-1 are vLLM's null block, never handed out; page 0
pads the page tables (its reads are masked).

``RequestPages`` assigns a request's head-pages layer by layer inside the
blocks the scheduler gave it, through the torch-free ``paging.PageTableManager``
over a local ``PagePool`` (local page ``i`` = the i-th page of its blocks), so
the pages of every layer and head are packed from the first block on: the
scheduler frees the unused tail blocks by count alone.
"""

from __future__ import annotations

import torch

from maskkv_vllm.kv_cache.canvas_cache import region_slots, write_canvas
from maskkv_vllm.kv_cache.page_store import PageStore, write_layer
from maskkv_vllm.kv_cache.page_table_tensors import layer_table
from maskkv_vllm.paging.page_pool import PagePool
from maskkv_vllm.paging.page_table_manager import PageTableManager

_SELF = "request"
"""The one request id of a per-request manager."""


class VllmPageStore(PageStore):
    """Key and value pages over one vLLM KV cache tensor.

    Args:
        kv_cache: the pool layer's cache, any layout, ``num_blocks * Hkv * P * 2d``
            elements.
        num_kv_heads: Hkv of this rank (pages per vLLM block).
        block_size: P, slots per page (vLLM's block size).
        head_dim: d.
    """

    def __init__(
        self, kv_cache: torch.Tensor, num_kv_heads: int, block_size: int, head_dim: int
    ) -> None:
        n = kv_cache.numel()
        page = block_size * head_dim
        if n % (2 * page * num_kv_heads):
            raise ValueError(
                f"KV cache of {n} elements is not a whole number of blocks of "
                f"{num_kv_heads} heads x {block_size} slots x 2 x {head_dim}"
            )
        flat = torch.as_strided(kv_cache, (n,), (1,), kv_cache.storage_offset())
        half = n // 2
        # Keys in the first half, values in the second, as (pages, P, d) each.
        super().__init__(
            flat[:half].view(half // page, block_size, head_dim),
            flat[half:].view(half // page, block_size, head_dim),
        )
        self.num_kv_heads = num_kv_heads


class RequestPages:
    """One request's head-pages inside its vLLM blocks, assigned layer by layer.

    Args:
        block_ids: the request's vLLM block ids, in order.
        num_layers: D.
        num_kv_heads: Hkv of this rank.
        block_size: P.
        device: where the page tables live.
    """

    def __init__(
        self,
        block_ids: list[int],
        num_layers: int,
        num_kv_heads: int,
        block_size: int,
        device: torch.device | str,
    ) -> None:
        n = len(block_ids) * num_kv_heads
        self.manager = PageTableManager(
            PagePool(n + 1, block_size), num_layers, num_kv_heads
        )
        pages = [b * num_kv_heads + j for b in block_ids for j in range(num_kv_heads)]
        self.page_map = torch.tensor([0, *pages], dtype=torch.long)
        """local page id -> page id of the store (local 0 is the null page)."""
        self.page_size, self.device = block_size, device
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._regions: dict[int, torch.Tensor] = {}
        self.canvas_tokens = 0
        """C: canvas entries each head holds after its prompt's (dual cache)."""

    def write_layer(
        self,
        store: VllmPageStore,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: list[int],
    ) -> None:
        """Store one layer's kept entries: the first ``lengths[h]`` rows of head h.

        Args:
            k, v: (Hkv, N, d).

        Raises:
            NoFreePagesError: the request's blocks cannot hold them (its
                reservation was too small); nothing of the layer is stored.
        """
        self._tables.pop(layer, None)
        self._regions.pop(layer, None)
        write_layer(store, self.manager, _SELF, layer, k, v, lengths, self.page_map)

    def write_canvas(
        self, store: VllmPageStore, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Rewrite one layer's C cached canvas entries in place (``canvas_cache``).

        Args:
            k, v: (Hkv, C, d) the canvas K/V outside the current diffusion block.
        """
        heads = self.manager.tables[_SELF].layer(layer)
        write_canvas(store, heads, k, v, self.page_map)

    def region_slots(self, layer: int) -> torch.Tensor:
        """(Hkv, C) slots of the store holding each head's canvas region
        (computed once per layer: the region's pages stay put)."""
        if layer not in self._regions:
            heads = self.manager.tables[_SELF].layer(layer)
            slots = region_slots(
                heads, self.canvas_tokens, self.page_size, self.page_map
            )
            self._regions[layer] = slots.to(self.device)
        return self._regions[layer]

    def table(
        self, layer: int, prompt_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(Hkv, max_pages) int32 page ids of the store and (Hkv,) int32 lengths;
        ``prompt_only`` leaves the cached canvas entries out of the lengths."""
        if layer not in self._tables:
            heads = self.manager.tables[_SELF].layer(layer)
            self._tables[layer] = layer_table(heads, self.device, self.page_map)
        table, lens = self._tables[layer]
        return (table, lens - self.canvas_tokens) if prompt_only else (table, lens)

    @property
    def num_pages(self) -> int:
        """Head-pages written so far (all layers)."""
        table = self.manager.tables.get(_SELF)
        return table.num_pages if table else 0
