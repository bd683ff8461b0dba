"""Engine-level configuration, one frozen dataclass per concern."""

from __future__ import annotations

from dataclasses import dataclass

CACHE_MODES = ("none", "prefix")


@dataclass(frozen=True)
class CacheConfig:
    """How the prompt's KV is kept between denoising steps."""

    cache_mode: str = "prefix"
    """"none": the whole sequence is recomputed every step (vanilla LLaDA);
    "prefix": the prompt's post-RoPE KV from the first step is reused and only
    the canvas is recomputed."""
    prompt_refresh_interval: int | None = None
    """With "prefix": recompute the prompt KV every this many denoising steps
    (1 = every step, which reproduces "none" exactly); None never refreshes."""

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
