"""Engine-level configuration, one frozen dataclass per concern."""

from __future__ import annotations

import re
from dataclasses import dataclass

from maskkv_vllm.eviction.config import MaskKVConfig

__all__ = ["CACHE_MODES", "CacheConfig", "EngineConfig", "MaskKVConfig", "parse_size"]

CACHE_MODES = ("none", "prefix", "paged")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "4GiB", "512MiB", "1.5GB", "1000000"."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"memory size {value!r} is not like '4GiB' or '512MB'")
        size = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ValueError(f"memory size {value!r} must be an int or a string")
    if size <= 0:
        raise ValueError(f"memory size {value!r} must be positive")
    return size


@dataclass(frozen=True)
class CacheConfig:
    """How the prompt's KV is kept between denoising steps."""

    cache_mode: str = "prefix"
    """"none": the whole sequence is recomputed every step (vanilla LLaDA);
    "prefix": the prompt's post-RoPE KV from the first step is kept in dense
    per-request tensors and only the canvas is recomputed;
    "paged": like "prefix", with the prompt KV in the head-granular page pool."""
    prompt_refresh_interval: int | None = None
    """With "prefix"/"paged": recompute the prompt KV every this many denoising steps
    (1 = every step, which reproduces "none" exactly); None never refreshes."""
    page_size: int = 16
    """"paged": token slots per page (one page holds one KV head of one layer)."""
    kv_cache_memory: int | str | None = None
    """"paged": pool size in bytes or as "4GiB"; default 512MiB unless num_pages."""
    num_pages: int | None = None
    """"paged": pool size in pages (the null page included), instead of bytes."""

    def __post_init__(self) -> None:
        if self.cache_mode not in CACHE_MODES:
            raise ValueError(
                f"cache_mode={self.cache_mode!r} is not one of {CACHE_MODES}"
            )
        interval = self.prompt_refresh_interval
        if interval is not None and (not isinstance(interval, int) or interval <= 0):
            raise ValueError(
                f"prompt_refresh_interval={interval!r} must be a positive int or None"
            )
        if not isinstance(self.page_size, int) or self.page_size <= 0:
            raise ValueError(f"page_size={self.page_size!r} must be a positive int")
        if self.kv_cache_memory is not None and self.num_pages is not None:
            raise ValueError("give kv_cache_memory or num_pages, not both")
        if self.kv_cache_memory is not None:
            parse_size(self.kv_cache_memory)
        if self.num_pages is not None and (
            not isinstance(self.num_pages, int) or self.num_pages < 2
        ):
            raise ValueError(f"num_pages={self.num_pages!r} must be an int >= 2")

    @property
    def kv_cache_bytes(self) -> int:
        return parse_size(self.kv_cache_memory or "512MiB")


@dataclass(frozen=True)
class EngineConfig:
    """How the embedded engine loads its model and schedules requests."""

    model: str = "tiny"
    """Checkpoint directory, or "tiny" for the built-in random tiny model."""
    dtype: str = "float32"
    """"float32" or "bfloat16"."""
    device: str = "cpu"
    """"cpu", "cuda" or "cuda:N"."""
    rope_scaling: float = 1.0
    """NTK factor on rope_theta for prompts beyond the trained length."""
    max_model_len: int | None = None
    """Longest prompt + canvas; default the model's max_sequence_length."""
    max_num_seqs: int = 16
    """Requests denoised together at most."""
    max_num_batched_tokens: int = 65536
    """Tokens one engine step may forward at most (prompt rows count at step 0)."""
    max_queue_len: int = 1024
    """Waiting requests at most; beyond it new requests are refused (HTTP 503)."""
    kv_policy: str = "full"
    """Eviction policy of requests that do not choose one."""
    kv_budget: int | None = None
    """Budget B of evicting requests that do not choose one (with kv_policy "full"
    it is the default of requests that choose an evicting policy)."""
    canvas_cache: str = "none"
    """Canvas cache of requests that do not choose one (``CANVAS_CACHES``)."""
    served_model_name: str | None = None
    """Name reported by /v1/models; default the model path."""
    cache: CacheConfig = CacheConfig(cache_mode="paged")
    """Prompt KV cache (paged by default: admission is by free pages)."""
    maskkv: MaskKVConfig = MaskKVConfig()
    """Hyper-parameters of the eviction policies."""

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_queue_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise ValueError(f"max_model_len={self.max_model_len} must be positive")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} is not float32/bfloat16/float16")
        from maskkv_vllm.eviction.registry import (
            check_budget,
            check_kv_budget,
            check_policy_name,
            policy_evicts,
        )

        check_policy_name(self.kv_policy)
        check_kv_budget(self.kv_budget)
        check_budget(self.kv_policy, self.kv_budget)
        from maskkv_vllm.sampling_params import CANVAS_CACHES

        if self.canvas_cache not in CANVAS_CACHES:
            raise ValueError(
                f"canvas_cache={self.canvas_cache!r} is not one of {CANVAS_CACHES}"
            )
        if self.canvas_cache != "none" and self.cache.cache_mode != "paged":
            raise ValueError(
                f"canvas_cache={self.canvas_cache!r} needs cache_mode='paged' "
                f"(got {self.cache.cache_mode!r})"
            )
        if policy_evicts(self.kv_policy) and self.cache.cache_mode != "paged":
            raise ValueError(
                f"kv_policy={self.kv_policy!r} needs cache_mode='paged' "
                f"(got {self.cache.cache_mode!r})"
            )
