"""The head-granular paged KV cache: bookkeeping (``KVCacheManager``) plus page tensors
(``PagedKVStore``), with the operations the sampler and eviction need."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.kv_store import PagedKVStore
from maskkv_vllm.kv_cache.page_tables import head_slots, layer_table, stack_tables
from maskkv_vllm.paging.block_pool import BlockPool
from maskkv_vllm.paging.kv_cache_manager import KVCacheManager
from maskkv_vllm.paging.page_table import HeadBlocks

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
        self.manager = KVCacheManager(self.pool, num_layers, num_kv_heads)
        self.store = PagedKVStore(num_blocks, block_size, head_dim, dtype, device)
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
        num_blocks = config.num_blocks or PagedKVStore.num_blocks_for(
            config.kv_cache_bytes, config.block_size, head_dim, dtype
        )
        if num_blocks < 2:
            raise ValueError(
                f"kv_cache_memory={config.kv_cache_memory!r} holds {num_blocks} pages "
                f"of {PagedKVStore.bytes_per_block(config.block_size, head_dim, dtype)}"
                " bytes; at least 2 are needed"
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

    def can_write_layer(self, tokens_per_head: list[int]) -> bool:
        return self.manager.can_allocate_layer(tokens_per_head)

    def write_layer(
        self,
        request_id: RequestId,
        layer: int,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        lengths: list[int] | None = None,
    ) -> None:
        """Store one layer of a request's prompt KV (replacing what it held).

        Args:
            k, v: (n_kv_heads, N, head_dim) post-RoPE keys and values.
            positions: (N,) shared by all heads, or (n_kv_heads, N) per head.
            lengths: tokens to store per head (the first ``lengths[h]`` of row h);
                default all N for every head.

        Raises:
            NoFreeBlocksError: the pool is short; nothing of this layer is stored.
        """
        h, n, _ = k.shape
        lengths = [n] * h if lengths is None else list(lengths)
        if any(not 0 <= x <= n for x in lengths):
            raise ValueError(f"lengths {lengths} must lie in [0, {n}]")
        heads = self.manager.allocate_layer(request_id, layer, lengths)
        self._tables.pop((request_id, layer), None)
        if positions.dim() == 1:
            positions = positions.expand(h, n)
        rows = [(i, x) for i, x in enumerate(lengths) if x]
        if not rows:
            return
        slots = torch.cat([self._slots(heads[i], x) for i, x in rows])
        self.store.write(
            slots,
            torch.cat([k[i, :x] for i, x in rows]),
            torch.cat([v[i, :x] for i, x in rows]),
            torch.cat([positions[i, :x] for i, x in rows]),
        )

    def keep(
        self, request_id: RequestId, layer: int, kv_head: int, indices: torch.Tensor
    ) -> int:
        """Keep only the given tokens of one head, compacted into its first pages;
        the emptied pages go back to the pool at once.

        Args:
            indices: (k,) unique indices into the head's held tokens (any order;
                kept in ascending order).

        Returns:
            Pages returned to the pool.
        """
        head = self.manager.head(request_id, layer, kv_head)
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device).flatten()
        idx = torch.sort(idx).values
        if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= head.num_tokens):
            raise ValueError(
                f"keep indices must lie in [0, {head.num_tokens}), "
                f"got [{int(idx[0])}, {int(idx[-1])}]"
            )
        if idx.numel() > 1 and bool((idx[1:] == idx[:-1]).any()):
            raise ValueError("keep indices must be unique")
        src = self._slots(head, head.num_tokens)[idx]
        k, v, pos = self.store.read(src)  # gathered copies, so overlap is safe
        freed = self.manager.shrink(request_id, layer, kv_head, idx.numel())
        if idx.numel():
            self.store.write(self._slots(head, idx.numel()), k, v, pos)
        self._tables.pop((request_id, layer), None)
        return len(freed)

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

    def read_head(
        self, request_id: RequestId, layer: int, kv_head: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k (n, d), v (n, d), positions (n,)) a head holds, in slot order."""
        head = self.manager.head(request_id, layer, kv_head)
        return self.store.read(self._slots(head, head.num_tokens))

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

    def _slots(self, head: HeadBlocks, num_tokens: int) -> torch.Tensor:
        """(num_tokens,) flat slot ids of a head's first tokens."""
        ids = torch.tensor(head.block_ids, dtype=torch.long, device=self.device)
        return head_slots(ids, num_tokens, self.block_size)

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
