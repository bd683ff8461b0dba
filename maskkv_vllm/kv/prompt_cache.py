"""What the sampler asks of a prompt KV cache, and how a mode picks one."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.eviction.evictor import Eviction
from maskkv_vllm.models.attention import Attention
from maskkv_vllm.sampler.batch import ForwardBatch

CacheKey = Hashable
"""One forward row of a request: (sequence uid, branch index)."""


class PromptCache(Protocol):
    """Keeps each row's prompt KV between denoising steps."""

    supports_eviction: bool
    """Whether rows may keep a different token set per KV head."""

    def capturing_attention(
        self,
        keys: list[CacheKey],
        batch: ForwardBatch,
        evictions: list[Eviction | None],
    ) -> Attention:
        """Dense attention over full rows that stores each row's prompt KV.

        Args:
            keys: per row, its cache key.
            batch: the padded full rows.
            evictions: per row, what to keep (None keeps the whole prompt).
        """
        ...

    def cached_attention(
        self, keys: list[CacheKey], canvas_mask: torch.Tensor
    ) -> Attention:
        """Canvas-only rows attending to their stored prompt KV plus the canvas."""
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


def make_prompt_cache(
    config: CacheConfig,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> PromptCache | None:
    """The cache for a mode; None for "none" (nothing is kept)."""
    if config.cache_mode == "none":
        return None
    if config.cache_mode == "prefix":
        from maskkv_vllm.kv.prompt_kv import DensePromptCache

        return DensePromptCache()
    from maskkv_vllm.kv.paged_kv_cache import PagedKVCache
    from maskkv_vllm.kv.paged_prompt_cache import PagedPromptCache

    return PagedPromptCache(
        PagedKVCache.from_config(
            config, num_layers, num_kv_heads, head_dim, dtype, device
        )
    )
