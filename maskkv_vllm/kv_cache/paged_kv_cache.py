"""The embedded engine's head-granular paged KV cache: bookkeeping
(``PageTableManager``) plus page tensors (``PageStore``), with the operations the
sampler and eviction need."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.page_store import PageStore, write_layer
from maskkv_vllm.kv_cache.page_table_tensors import layer_table, stack_tables
from maskkv_vllm.paging.block_pool import BlockPool
from maskkv_vllm.paging.page_table_manager import PageTableManager

RequestId = Hashable


class PagedKVCache:
    """Per-request prompt KV in pages of one (layer, KV head) each.

    Args:
        num_layers, num_kv_heads, head_dim: the model's KV shape.
        block_size: token slots per page.
        num_blocks: pages in the pool (the null page included).
        dtype, device: those of the model.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        block_size: int,
        num_blocks: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.pool = BlockPool(num_blocks, block_size)
        self.manager = PageTableManager(self.pool, num_layers, num_kv_heads)
        self.store = PageStore.zeros(num_blocks, block_size, head_dim, dtype, device)
        self.block_size = block_size
        self.device = self.store.k_cache.device
        self._tables: dict[
            tuple[RequestId, int], tuple[torch.Tensor, torch.Tensor]
        ] = {}

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
        """Size the pool from ``num_blocks`` or the ``kv_cache_memory`` byte budget."""
        page_bytes = PageStore.bytes_per_page(config.block_size, head_dim, dtype)
        num_blocks = config.num_blocks or config.kv_cache_bytes // page_bytes
        if num_blocks < 2:
            raise ValueError(
                f"kv_cache_memory={config.kv_cache_memory!r} holds {num_blocks} pages "
                f"of {page_bytes} bytes; at least 2 are needed"
            )
        return cls(
            num_layers,
            num_kv_heads,
            head_dim,
            config.block_size,
            num_blocks,
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
            NoFreeBlocksError: the pool is short; nothing of this layer is stored.
        """
        h, n, _ = k.shape
        lengths = [n] * h if lengths is None else list(lengths)
        self._tables.pop((request_id, layer), None)
        write_layer(self.store, self.manager, request_id, layer, k, v, lengths)

    def free(self, request_id: RequestId) -> int:
        """Return all pages of a request; idempotent. Returns pages freed."""
        for layer in range(self.manager.num_layers):
            self._tables.pop((request_id, layer), None)
        return self.manager.free(request_id)

    # -- reading -----------------------------------------------------------------

    def has(self, request_id: RequestId) -> bool:
        return request_id in self.manager.tables

    def block_tables(
        self, request_ids: list[RequestId], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Page tables of a batch for one layer.

        Returns:
            block_tables: (B, n_kv_heads, max_blocks) int32, padded with the null page.
            seq_lens: (B, n_kv_heads) int32 tokens held per head.
        """
        return stack_tables([self._request_table(r, layer) for r in request_ids])

    # -- stats -------------------------------------------------------------------

    def request_stats(self, request_id: RequestId) -> dict:
        table = self.manager.tables.get(request_id)
        blocks = table.num_blocks if table else 0
        return {
            "num_blocks": blocks,
            "bytes": blocks * self.store.page_bytes,
            "tokens_per_head": table.tokens_per_head() if table else [],
        }

    def pool_stats(self) -> dict:
        p = self.pool
        return {
            "block_size": p.block_size,
            "bytes_per_block": self.store.page_bytes,
            "num_blocks": p.num_usable_blocks,
            "num_free_blocks": p.num_free_blocks,
            "num_used_blocks": p.num_used_blocks,
            "max_used_blocks": p.max_used_blocks,
            "used_bytes": p.num_used_blocks * self.store.page_bytes,
            "num_requests": len(self.manager.tables),
        }

    # -- helpers -----------------------------------------------------------------

    def _request_table(
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
