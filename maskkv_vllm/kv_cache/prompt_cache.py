"""What the sampler asks of a prompt KV cache, and how a mode picks one."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

import torch

from maskkv_vllm.eviction.evictor import Eviction
from maskkv_vllm.kv_cache.canvas_cache import CanvasSpan
from maskkv_vllm.kv_cache.forward_batch import ForwardBatch
from maskkv_vllm.models.attention import Attention
from maskkv_vllm.paging.page_pool import PagePool

CacheKey = Hashable
"""One forward row of a request: (sequence uid, branch index)."""


class PromptCache(Protocol):
    """Keeps each row's prompt KV between denoising steps."""

    supports_eviction: bool
    """Whether rows may keep a different token set per KV head."""
    supports_canvas_cache: bool
    """Whether rows may keep their canvas K/V (``canvas_cache="dual"``); a cache
    without it is never handed ``spans`` nor asked for ``block_attention``."""

    def capturing_attention(
        self,
        keys: list[CacheKey],
        batch: ForwardBatch,
        evictions: list[Eviction | None],
        spans: list[CanvasSpan | None] | None = None,
    ) -> Attention:
        """Dense attention over full rows that stores each row's prompt KV.

        Args:
            keys: per row, its cache key.
            batch: the padded full rows.
            evictions: per row, what to keep (None keeps the whole prompt).
            spans: per row, the block outside which its canvas K/V is kept too.
        """
        ...

    def cached_attention(
        self,
        keys: list[CacheKey],
        canvas_mask: torch.Tensor,
        spans: list[CanvasSpan | None] | None = None,
    ) -> Attention:
        """Canvas-only rows attending to their stored prompt KV plus the canvas;
        rows with a span rewrite their cached canvas K/V from this forward."""
        ...

    def block_attention(
        self, keys: list[CacheKey], block_mask: torch.Tensor
    ) -> Attention:
        """Rows of one diffusion block each, attending to the stored prompt and
        canvas KV plus the block's own."""
        ...

    def adaptive_attention(
        self,
        keys: list[CacheKey],
        canvas_lens: list[int],
        selected: list[int],
        shift: int,
    ) -> Attention:
        """Whole-canvas rows that recompute ``selected`` rows each per layer and
        reuse the cached outputs of the rest (``adaptive_canvas``)."""
        ...

    def has(self, key: CacheKey) -> bool: ...

    def free(self, key: CacheKey) -> None:
        """Drop a row's prompt KV (idempotent)."""
        ...

    def nbytes(self, key: CacheKey) -> int:
        """Bytes of prompt KV the row holds."""
        ...

    def num_entries(self, key: CacheKey) -> int:
        """Prompt (layer, KV head, token) entries the row holds."""
        ...

    @property
    def page_pool(self) -> PagePool | None:
        """The pool admission counts pages of; None for a cache without one."""
        ...

    def num_pages(self, key: CacheKey) -> int:
        """Pages the row holds (0 without a pool)."""
        ...

    def pool_stats(self) -> dict | None:
        """Pages, page bytes, peak and free pages; None without a pool."""
        ...
