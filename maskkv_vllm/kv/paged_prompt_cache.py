"""The ``paged`` mode: prompt KV in the head-granular page pool."""

from __future__ import annotations

import torch

from maskkv_vllm.kv.paged_attention import Workspace, paged_attention
from maskkv_vllm.kv.paged_kv_cache import PagedKVCache
from maskkv_vllm.kv.prompt_cache import CacheKey
from maskkv_vllm.models.attention import dense_attention


class PagedCapturingAttention:
    """Dense attention over whole rows that writes each row's prompt KV into pages."""

    def __init__(
        self,
        cache: PagedKVCache,
        keys: list[CacheKey],
        key_mask: torch.Tensor,
        prompt_spans: list[tuple[int, int]],
        positions: torch.Tensor,
    ) -> None:
        self.cache, self.keys, self.key_mask = cache, keys, key_mask
        self.prompt_spans, self.positions = prompt_spans, positions

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        for row, (key, (start, end)) in enumerate(
            zip(self.keys, self.prompt_spans, strict=True)
        ):
            self.cache.write_layer(
                key,
                layer,
                k[row, :, start:end],
                v[row, :, start:end],
                self.positions[row, start:end],
            )
        return dense_attention(q, k, v, self.key_mask)


class PagedPromptAttention:
    """Canvas rows attend to their paged prompt KV plus the canvas's fresh KV."""

    def __init__(
        self,
        cache: PagedKVCache,
        keys: list[CacheKey],
        canvas_mask: torch.Tensor,
        workspace: Workspace,
    ) -> None:
        self.cache, self.keys, self.canvas_mask = cache, keys, canvas_mask
        self.workspace = workspace

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        block_tables, seq_lens = self.cache.block_tables(self.keys, layer)
        store = self.cache.store
        return paged_attention(
            q,
            k,
            v,
            self.canvas_mask,
            store.k_cache,
            store.v_cache,
            block_tables,
            seq_lens,
        )


class PagedPromptCache:
    """``PromptCache`` over a ``PagedKVCache``; freeing a row returns its pages."""

    def __init__(self, cache: PagedKVCache) -> None:
        self.cache = cache
        self.workspace = Workspace()

    def capturing_attention(self, keys, key_mask, prompt_spans, positions):
        return PagedCapturingAttention(
            self.cache, keys, key_mask, prompt_spans, positions
        )

    def cached_attention(self, keys, canvas_mask):
        return PagedPromptAttention(self.cache, keys, canvas_mask, self.workspace)

    def has(self, key: CacheKey) -> bool:
        return self.cache.has(key)

    def free(self, key: CacheKey) -> None:
        self.cache.free(key)

    def nbytes(self, key: CacheKey) -> int:
        return self.cache.request_stats(key)["bytes"]
