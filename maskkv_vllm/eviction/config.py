"""An engine's settings for its policies (frozen): the values the registry builds
each policy with, checked by the policies themselves."""

from __future__ import annotations

from dataclasses import dataclass

from maskkv_vllm.eviction.allocators import (
    AdaKVHeads,
    BoundaryAwareLayers,
    PromptPreferenceHeads,
    PyramidLayers,
    SqueezeLayers,
)
from maskkv_vllm.eviction.scorers import SnapKVScorer, StreamingScorer
from maskkv_vllm.eviction.settings import check_int


@dataclass(frozen=True)
class MaskKVConfig:
    """The engine's value of each policy setting (the policy name and budget are
    chosen per request in ``SamplingParams``). A setting lives on the policy
    dataclass of the same field name (``SnapKVScorer.pool_kernel``,
    ``AdaKVHeads.adakv_floor``, ...), which checks it; this is the one place an
    engine, its CLI flags and vLLM's ``additional_config`` set them."""

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
        # Each setting is checked by the policy that takes it (its own rules).
        snapkv = SnapKVScorer(self.window, self.pool_kernel)
        StreamingScorer(self.sinks)
        BoundaryAwareLayers(snapkv, self.beta, None, self.boundary_layers)
        PromptPreferenceHeads(snapkv, self.alpha)
        PyramidLayers(snapkv, self.pyramid_beta, self.window)
        AdaKVHeads(snapkv, self.adakv_floor)
        SqueezeLayers(snapkv, None, self.squeeze_fraction)
        check_int("vote_chunk", self.vote_chunk, 1)
