"""The prompt cache of a cache mode (the one place that knows every kind)."""

from __future__ import annotations

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.kv_cache.dense_prompt_cache import DensePromptCache
from maskkv_vllm.kv_cache.paged_kv_cache import PagedKVCache
from maskkv_vllm.kv_cache.paged_prompt_cache import PagedPromptCache
from maskkv_vllm.kv_cache.prompt_cache import PromptCache


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
        return DensePromptCache()
    return PagedPromptCache(
        PagedKVCache.from_config(
            config, num_layers, num_kv_heads, head_dim, dtype, device
        )
    )
