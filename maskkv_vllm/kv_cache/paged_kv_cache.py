"""The embedded engine's head-granular paged KV cache: bookkeeping
(``PageTableManager``) plus page tensors (``PageStore``), with the operations the
sampler and eviction need."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.canvas_cache import region_slots, write_canvas
from maskkv_vllm.kv_cache.page_store import PageStore, write_layer
from maskkv_vllm.kv_cache.page_table_tensors import layer_table, stack_tables
from maskkv_vllm.paging.page_pool import PagePool
from maskkv_vllm.paging.page_table_manager import PageTableManager

RequestId = Hashable


class PagedKVCache:
    """Per-request prompt KV in pages of one (layer, KV head) each.

    Args:
        num_layers, num_kv_heads, head_dim: the model's KV shape.
        page_size: token slots per page.
        num_pages: pages in the pool (the null page included).
        dtype, device: those of the model.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        num_pages: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.pool = PagePool(num_pages, page_size)
        self.manager = PageTableManager(self.pool, num_layers, num_kv_heads)
        self.store = PageStore.zeros(num_pages, page_size, head_dim, dtype, device)
        self.page_size = page_size
        self.device = self.store.k_cache.device
        self._tables: dict[
            tuple[RequestId, int], tuple[torch.Tensor, torch.Tensor]
        ] = {}
        self._regions: dict[tuple[RequestId, int], torch.Tensor] = {}
        self.canvas_tokens: dict[RequestId, int] = {}
        """Per request, C: canvas entries each head holds after its prompt's."""

    @classmethod
    def from_config(
        cls,
        config: CacheConfig,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> PagedKVCache:
        """Size the pool from ``num_pages`` or the ``kv_cache_memory`` byte budget."""
        page_bytes = PageStore.bytes_per_page(config.page_size, head_dim, dtype)
        num_pages = config.num_pages or config.kv_cache_bytes // page_bytes
        if num_pages < 2:
            raise ValueError(
                f"kv_cache_memory={config.kv_cache_memory!r} holds {num_pages} pages "
                f"of {page_bytes} bytes; at least 2 are needed"
            )
        return cls(
            num_layers,
            num_kv_heads,
            head_dim,
            config.page_size,
            num_pages,
            dtype,
            device,
        )

    # -- writing -----------------------------------------------------------------

    def write_layer(
        self,
        request_id: RequestId,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: list[int] | None = None,
    ) -> None:
        """Store one layer of a request's prompt KV (replacing what it held).

        Args:
            k, v: (n_kv_heads, N, head_dim) post-RoPE keys and values.
            lengths: tokens to store per head (the first ``lengths[h]`` of row h);
                default all N for every head.

        Raises:
            NoFreePagesError: the pool is short; nothing of this layer is stored.
        """
        h, n, _ = k.shape
        lengths = [n] * h if lengths is None else list(lengths)
        self._tables.pop((request_id, layer), None)
        self._regions.pop((request_id, layer), None)
        write_layer(self.store, self.manager, request_id, layer, k, v, lengths)

    def write_canvas(
        self, request_id: RequestId, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Rewrite the request's C cached canvas entries of one layer in place.

        Args:
            k, v: (n_kv_heads, C, head_dim) post-RoPE canvas keys and values.
        """
        c = self.canvas_tokens.get(request_id, 0)
        if k.shape[1] != c:
            raise ValueError(f"got {k.shape[1]} canvas entries, the request holds {c}")
        heads = self.manager.tables[request_id].layer(layer)
        write_canvas(self.store, heads, k, v)

    def region_slots(self, request_id: RequestId, layer: int) -> torch.Tensor:
        """(n_kv_heads, C) flat slots of each head's canvas region, in order
        (computed once per layer: the region's pages stay put until freed)."""
        key = (request_id, layer)
        if key not in self._regions:
            c = self.canvas_tokens.get(request_id, 0)
            heads = self.manager.tables[request_id].layer(layer)
            self._regions[key] = region_slots(heads, c, self.page_size).to(self.device)
        return self._regions[key]

    def free(self, request_id: RequestId) -> int:
        """Return all pages of a request; idempotent. Returns pages freed."""
        self.canvas_tokens.pop(request_id, None)
        for layer in range(self.manager.num_layers):
            self._tables.pop((request_id, layer), None)
            self._regions.pop((request_id, layer), None)
        return self.manager.free(request_id)

    # -- reading -----------------------------------------------------------------

    def has(self, request_id: RequestId) -> bool:
        return request_id in self.manager.tables

    def page_tables(
        self, request_ids: list[RequestId], layer: int, prompt_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Page tables of a batch for one layer.

        Args:
            prompt_only: leave out each head's cached canvas entries (a forward
                over the whole canvas has them fresh).

        Returns:
            page_tables: (B, n_kv_heads, max_pages) int32, padded with the null page.
            seq_lens: (B, n_kv_heads) int32 tokens held per head.
        """
        tables, lens = stack_tables([self.request_table(r, layer) for r in request_ids])
        if prompt_only:
            c = [self.canvas_tokens.get(r, 0) for r in request_ids]
            lens = lens - torch.tensor(c, dtype=lens.dtype, device=lens.device)[:, None]
        return tables, lens

    # -- stats -------------------------------------------------------------------

    def request_stats(self, request_id: RequestId) -> dict:
        table = self.manager.tables.get(request_id)
        pages = table.num_pages if table else 0
        return {
            "num_pages": pages,
            "bytes": pages * self.store.page_bytes,
            "tokens_per_head": table.tokens_per_head() if table else [],
        }

    def pool_stats(self) -> dict:
        p = self.pool
        return {
            "page_size": p.page_size,
            "bytes_per_page": self.store.page_bytes,
            "num_pages": p.num_usable_pages,
            "num_free_pages": p.num_free_pages,
            "num_used_pages": p.num_used_pages,
            "max_used_pages": p.max_used_pages,
            "used_bytes": p.num_used_pages * self.store.page_bytes,
            "num_requests": len(self.manager.tables),
        }

    # -- helpers -----------------------------------------------------------------

    def request_table(
        self, request_id: RequestId, layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (request_id, layer)
        if key not in self._tables:
            heads = [
                self.manager.head(request_id, layer, h)
                for h in range(self.manager.num_kv_heads)
            ]
            self._tables[key] = layer_table(heads, self.device)
        return self._tables[key]
