"""Page bookkeeping for requests: allocate a layer, free a request."""

from __future__ import annotations

from collections.abc import Hashable

from maskkv_vllm.paging.page_pool import PagePool
from maskkv_vllm.paging.page_table import HeadPages, RequestPageTable, pages_for

RequestId = Hashable


class PageTableManager:
    """Hands out head-granular pages from one ``PagePool`` to requests.

    Args:
        pool: the shared page pool.
        num_layers: model layers.
        num_kv_heads: KV heads per layer.
    """

    def __init__(self, pool: PagePool, num_layers: int, num_kv_heads: int) -> None:
        self.pool = pool
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.tables: dict[RequestId, RequestPageTable] = {}

    def pages_needed(self, tokens_per_head: list[int]) -> int:
        return pages_for(tokens_per_head, self.pool.page_size)

    def allocate_layer(
        self, request_id: RequestId, layer: int, tokens_per_head: list[int]
    ) -> list[HeadPages]:
        """Give one layer of a request pages for the given token count per head.

        Pages the layer already held are freed first (a refresh rewrites the layer).
        Raises ``NoFreePagesError`` with nothing taken when the pool is short.
        """
        self._check_layer(layer)
        if len(tokens_per_head) != self.num_kv_heads:
            raise ValueError(
                f"got {len(tokens_per_head)} token counts for "
                f"{self.num_kv_heads} KV heads"
            )
        if any(n < 0 for n in tokens_per_head):
            raise ValueError(f"negative token count in {tokens_per_head}")
        table = self.tables.setdefault(
            request_id, RequestPageTable(self.num_layers, self.num_kv_heads)
        )
        self.free_layer(request_id, layer)
        ids = self.pool.allocate(self.pages_needed(tokens_per_head))
        heads = table.layer(layer)
        for head, n in zip(heads, tokens_per_head, strict=True):
            take = self.pool.pages_for(n)
            head.page_ids, head.num_tokens = ids[:take], n
            ids = ids[take:]
        return heads

    def free_layer(self, request_id: RequestId, layer: int) -> None:
        table = self.tables.get(request_id)
        if table is None:
            return
        for head in table.layer(layer):
            self.pool.free(head.page_ids)
            head.page_ids, head.num_tokens = [], 0

    def free(self, request_id: RequestId) -> int:
        """Return every page of a request to the pool; returns how many. Idempotent."""
        table = self.tables.pop(request_id, None)
        if table is None:
            return 0
        ids = table.all_page_ids()
        self.pool.free(ids)
        return len(ids)

    def head(self, request_id: RequestId, layer: int, kv_head: int) -> HeadPages:
        self._check_layer(layer)
        if not 0 <= kv_head < self.num_kv_heads:
            raise ValueError(f"kv_head={kv_head} is outside [0, {self.num_kv_heads})")
        if request_id not in self.tables:
            raise KeyError(f"request {request_id!r} holds no KV pages")
        return self.tables[request_id].layer(layer)[kv_head]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer={layer} is outside [0, {self.num_layers})")
