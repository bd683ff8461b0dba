"""Engine-wide hyper-parameters of MaskKV and the baselines (frozen, validated)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MaskKVConfig:
    """Hyper-parameters of MaskKV and the baseline policies (engine-wide; the policy
    name and budget are chosen per request in ``SamplingParams``)."""

    alpha: float = 0.1
    """MaskKV head floor: every head keeps at least ``alpha * k_l`` (eq. 15)."""
    beta: float = 0.4
    """MaskKV layer floor: every layer keeps at least ``beta * B`` (eq. 9)."""
    profile: str | None = None
    """Path of the offline layer-importance profile (``maskkv profile``); None is
    the uniform profile, which gives every layer B."""
    boundary_layers: tuple[int, ...] | None = None
    """MaskKV's boundary layers; None means the first and the last."""
    window: int = 32
    """Observation window of SnapKV and the allocators over it (last prompt tokens)."""
    pool_kernel: int = 7
    """SnapKV max-pooling kernel (1 disables pooling)."""
    sinks: int = 4
    """StreamingLLM attention sinks."""
    pyramid_beta: float = 20.0
    """PyramidKV: the top layer keeps A / beta of the mean A."""
    adakv_floor: float = 0.2
    """AdaKV: every head keeps at least this fraction of its layer budget."""
    squeeze_fraction: float = 0.4
    """SqueezeAttention: share of B kept by the least important layer group."""
    vote_chunk: int = 1024
    """Keys per chunk in the voting passes (bounds their scratch memory)."""

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "adakv_floor", "squeeze_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} must lie in [0, 1]")
        for name in ("window", "sinks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an int >= 0")
        for name in ("pool_kernel", "vote_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel={self.pool_kernel} must be odd")
        if not self.pyramid_beta > 0:
            raise ValueError(f"pyramid_beta={self.pyramid_beta} must be positive")
        if self.boundary_layers is not None and (
            not self.boundary_layers
            or any(not isinstance(i, int) or i < 0 for i in self.boundary_layers)
        ):
            raise ValueError(
                f"boundary_layers={self.boundary_layers!r} must be non-negative ints"
            )
