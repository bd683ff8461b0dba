"""Budget allocators: each wraps a policy and changes its layer or head budgets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskkv_vllm.eviction import budget as B
from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.policy import Wrapper
from maskkv_vllm.eviction.settings import (
    check_fraction,
    check_layers,
    check_positive,
)


@dataclass
class BoundaryAwareLayers(Wrapper):
    """MaskKV's layer budgets: a floor of ``beta * B`` per layer, the rest split
    between boundary and middle layers by the offline importance profile."""

    beta: float = 0.4
    """Layer floor: every layer keeps at least ``beta * B`` (eq. 9)."""
    importance: tuple[float, ...] | None = None
    """I(l) per layer; None is the uniform profile (every layer gets B)."""
    boundary_layers: tuple[int, ...] | None = None
    """Boundary layers; None means {0, D-1}."""

    def __post_init__(self) -> None:
        check_fraction("beta", self.beta)
        check_layers("boundary_layers", self.boundary_layers)

    def layer_budget(self, layer, num_layers, budget, prompt_len):
        importance = self.importance or (1.0,) * num_layers
        if len(importance) != num_layers:
            raise ValueError(
                f"layer profile has {len(importance)} layers, the model {num_layers}"
            )
        budgets = B.boundary_aware_layer_budgets(
            budget, importance, self.beta, self.boundary_layers
        )
        return budgets[layer]


@dataclass
class PromptPreferenceHeads(Wrapper):
    """MaskKV's head budgets (eq. 15): a floor of ``alpha * k_l`` per head, the rest
    in proportion to how much of its mask attention the head gave the prompt."""

    alpha: float = 0.1
    """Head floor: every head keeps at least ``alpha * k_l`` (eq. 15)."""

    def __post_init__(self) -> None:
        check_fraction("alpha", self.alpha)

    def head_budgets(self, ctx: LayerContext, scores, layer_budget):
        preference = ctx.prompt_preference.tolist()
        return B.prompt_preference_head_budgets(layer_budget, preference, self.alpha)


@dataclass
class PyramidLayers(Wrapper):
    """PyramidKV: budgets fall linearly from the bottom layer to the top."""

    pyramid_beta: float = 20.0
    """The top layer keeps A / pyramid_beta of the mean A."""
    window: int = 32
    """SnapKV's window, kept on top of every layer's budget."""

    def __post_init__(self) -> None:
        check_positive("pyramid_beta", self.pyramid_beta)

    def layer_budget(self, layer, num_layers, budget, prompt_len):
        budgets = B.pyramid_layer_budgets(
            budget, num_layers, prompt_len, self.window, self.pyramid_beta
        )
        return budgets[layer]


@dataclass
class SqueezeLayers(Wrapper):
    """SqueezeAttention: the least important third of the layers (by the cosine
    similarity of attention input and output) keeps ``squeeze_fraction * B``."""

    similarity: tuple[float, ...] | None = None
    """cos(h_in, h_out) per layer; None treats all layers alike."""
    squeeze_fraction: float = 0.4
    """Share of B kept by the least important layer group."""

    def __post_init__(self) -> None:
        check_fraction("squeeze_fraction", self.squeeze_fraction)

    def layer_budget(self, layer, num_layers, budget, prompt_len):
        similarity = self.similarity or (1.0,) * num_layers
        if len(similarity) != num_layers:
            raise ValueError(
                f"layer profile has {len(similarity)} layers, the model {num_layers}"
            )
        return B.squeeze_layer_budgets(budget, similarity, self.squeeze_fraction)[layer]


@dataclass
class AdaKVHeads(Wrapper):
    """AdaKV: each head keeps ``adakv_floor * k_l``; the rest of the layer's
    ``N * k_l`` goes to the highest scores across all heads."""

    adakv_floor: float = 0.2
    """Share of the layer budget every head keeps at least."""

    def __post_init__(self) -> None:
        check_fraction("adakv_floor", self.adakv_floor)

    def head_budgets(self, ctx: LayerContext, scores: torch.Tensor, layer_budget):
        n, m = scores.shape
        base = min(B.floor_budget(self.adakv_floor * layer_budget), m)
        ranked = torch.sort(scores, dim=1, descending=True, stable=True).values
        extra = max(0, min(n * layer_budget, n * m) - n * base)
        rest = ranked[:, base:].reshape(-1)
        if extra == 0 or rest.numel() == 0:
            return [base] * n
        top = torch.topk(rest, min(extra, rest.numel())).indices
        counts = torch.bincount(top // (m - base), minlength=n)
        return [base + int(c) for c in counts]
