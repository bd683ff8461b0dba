"""The ``paged`` mode: prompt KV in the head-granular page pool, evicted per head."""

from __future__ import annotations

import functools

import torch

from maskkv_vllm.eviction.evictor import Eviction
from maskkv_vllm.kv_cache.adaptive_canvas import AdaptiveCanvasAttention, AdaptiveRow
from maskkv_vllm.kv_cache.canvas_cache import CanvasSpan, append_canvas
from maskkv_vllm.kv_cache.forward_batch import ForwardBatch
from maskkv_vllm.kv_cache.paged_attention import Workspace, paged_attention
from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache
from maskkv_vllm.kv_cache.prompt_cache import CacheKey
from maskkv_vllm.kv_cache.step_zero import capture_layer
from maskkv_vllm.models.attention import dense_attention


class PagedCapturingAttention:
    """Step-0 attention over whole rows (the full context, so the first step's own
    output is exact) that writes each row's prompt KV into pages, layer by layer.

    Each row goes through ``step_zero.capture_layer``, the step 0 vLLM's runner
    runs too. A row with a ``CanvasSpan`` also keeps the K/V of its canvas
    outside that block after its prompt entries (the dual canvas cache).
    """

    def __init__(
        self,
        cache: PagedKVCache,
        keys: list[CacheKey],
        batch: ForwardBatch,
        evictions: list[Eviction | None],
        spans: list[CanvasSpan | None] | None = None,
    ) -> None:
        self.cache, self.keys, self.batch, self.evictions = (
            cache,
            keys,
            batch,
            evictions,
        )
        self.spans = spans or [None] * len(keys)

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        b = self.batch
        for row, key in enumerate(self.keys):
            start, prompt_end = b.prompt_spans[row]
            span = slice(start, b.row_ends[row])
            write = functools.partial(self.cache.write_layer, key)
            if (canvas := self.spans[row]) is not None:
                kc = canvas.stored(k[row, :, prompt_end : b.row_ends[row]])
                vc = canvas.stored(v[row, :, prompt_end : b.row_ends[row]])
                self.cache.canvas_tokens[key] = kc.shape[1]
                write = append_canvas(write, kc, vc)
            capture_layer(
                write,
                self.evictions[row],
                layer,
                self.cache.manager.num_layers,
                q[row, :, span],
                k[row, :, span],
                v[row, :, span],
                prompt_end - start,
            )
        return dense_attention(q, k, v, b.key_mask)


class PagedPromptAttention:
    """Canvas rows attend to their paged prompt KV plus the canvas's fresh KV.

    With ``spans`` (a block boundary of rows that cache their canvas) the rows
    attend to their prompt entries only and then rewrite their cached canvas
    entries from this forward; with ``block_rows`` the rows are one diffusion
    block each and attend to prompt and cached canvas entries alike.
    """

    def __init__(
        self,
        cache: PagedKVCache,
        keys: list[CacheKey],
        canvas_mask: torch.Tensor,
        workspace: Workspace,
        spans: list[CanvasSpan | None] | None = None,
        block_rows: bool = False,
    ) -> None:
        self.cache, self.keys, self.canvas_mask = cache, keys, canvas_mask
        self.workspace, self.spans, self.block_rows = workspace, spans, block_rows

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        page_tables, seq_lens = self.cache.page_tables(
            self.keys, layer, prompt_only=not self.block_rows
        )
        store = self.cache.store
        out = paged_attention(
            q, k, v, self.canvas_mask, store.k_cache, store.v_cache,
            page_tables, seq_lens, self.workspace,
        )  # fmt: skip
        for row, span in enumerate(self.spans or ()):
            if span is not None:
                # The canvas is the row's key columns (a query-only column,
                # Dream's previous position, is not one).
                cols = self.canvas_mask[row].nonzero().squeeze(-1)
                kc, vc = k[row][:, cols], v[row][:, cols]
                self.cache.write_canvas(
                    self.keys[row], layer, span.outside(kc), span.outside(vc)
                )
        return out


class PagedPromptCache:
    """``PromptCache`` over a ``PagedKVCache``; freeing a row returns its pages."""

    supports_eviction = True
    supports_canvas_cache = True

    def __init__(self, cache: PagedKVCache) -> None:
        self.cache = cache
        self.workspace = Workspace()

    @property
    def page_pool(self):
        return self.cache.pool

    def num_pages(self, key: CacheKey) -> int:
        return self.cache.request_stats(key)["num_pages"] if self.has(key) else 0

    def pool_stats(self) -> dict:
        return self.cache.pool_stats()

    def capturing_attention(self, keys, batch, evictions, spans=None):
        return PagedCapturingAttention(self.cache, keys, batch, evictions, spans)

    def cached_attention(self, keys, canvas_mask, spans=None):
        return PagedPromptAttention(
            self.cache, keys, canvas_mask, self.workspace, spans
        )

    def block_attention(self, keys, block_mask):
        return PagedPromptAttention(
            self.cache, keys, block_mask, self.workspace, block_rows=True
        )

    def adaptive_attention(
        self,
        keys: list[CacheKey],
        canvas_lens: list[int],
        selected: list[int],
        shift: int,
    ) -> AdaptiveCanvasAttention:
        """A step of rows with the adaptive canvas cache (``adaptive_canvas``).

        Args:
            canvas_lens: each row's L.
            selected: canvas rows each recomputes (L at a refresh).
            shift: query-only columns before each canvas.
        """
        cache = self.cache

        def pages_of(key):
            def pages(layer):
                return (
                    cache.region_slots(key, layer),
                    *cache.request_table(key, layer),
                )

            return pages

        rows = [
            AdaptiveRow(n, r, pages_of(key))
            for key, n, r in zip(keys, canvas_lens, selected, strict=True)
        ]
        return AdaptiveCanvasAttention(
            rows, cache.store, shift, cache.manager.num_kv_heads,
            cache.store.head_dim, self.workspace,
        )  # fmt: skip

    def has(self, key: CacheKey) -> bool:
        return self.cache.has(key)

    def free(self, key: CacheKey) -> None:
        self.cache.free(key)

    def nbytes(self, key: CacheKey) -> int:
        return self.cache.request_stats(key)["bytes"]

    def num_entries(self, key: CacheKey) -> int:
        table = self.cache.manager.tables.get(key)
        return sum(map(sum, table.tokens_per_head())) if table else 0
