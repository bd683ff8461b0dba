"""The policy interface: a scorer ranks prompt tokens per KV head, allocators that wrap
it decide how many each layer and head keeps, and one generic step selects."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from maskkv_vllm.eviction.context import LayerContext


def select_kept(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, ties to the lower position, ascending.

    Args:
        scores: (M,) one head's scores.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values


class Policy(ABC):
    """Decides which prompt tokens each KV head of a layer keeps.

    Budgets follow the paper: ``budget`` B is the average number of prompt entries
    kept per head per layer. Subclasses override one method each; wrappers compose.
    """

    evicts: bool = True
    """False for the full cache: the engine then writes the whole prompt."""

    @abstractmethod
    def scores(self, ctx: LayerContext) -> torch.Tensor:
        """(Hkv, M) importance of each prompt token per KV head; higher is kept."""

    def layer_budget(
        self, layer: int, num_layers: int, budget: int, prompt_len: int
    ) -> int:
        """k_l, the average per-head budget of one layer (uniform: B)."""
        return budget

    def head_budgets(
        self, ctx: LayerContext, scores: torch.Tensor, layer_budget: int
    ) -> list[int]:
        """Per-KV-head keep counts of one layer (uniform: k_l each)."""
        return [layer_budget] * ctx.num_kv_heads

    def layer_budgets(self, num_layers: int, budget: int, prompt_len: int) -> list[int]:
        """k_l for every layer (what admission control reserves)."""
        return [
            self.layer_budget(i, num_layers, budget, prompt_len)
            for i in range(num_layers)
        ]

    def kept_per_layer(
        self, num_layers: int, budget: int | None, prompt_len: int
    ) -> list[int]:
        """Per-head entries each layer may keep (k_l; M for a policy that keeps
        all): what both engines reserve pages by."""
        if not self.evicts:
            return [prompt_len] * num_layers
        return self.layer_budgets(num_layers, budget, prompt_len)

    def select(self, ctx: LayerContext, budget: int) -> list[torch.Tensor]:
        """Kept prompt indices per KV head (ascending); counts clipped to M.

        A budget of at least M keeps every entry of every head: uneven head
        or layer budgets must not evict from a prompt that already fits.
        """
        if budget >= ctx.prompt_len:
            everything = torch.arange(ctx.prompt_len, device=ctx.k.device)
            return [everything] * ctx.num_kv_heads
        scores = self.scores(ctx)
        k_l = self.layer_budget(ctx.layer, ctx.num_layers, budget, ctx.prompt_len)
        counts = self.head_budgets(ctx, scores, k_l)
        return [
            select_kept(scores[h], min(max(c, 0), ctx.prompt_len))
            for h, c in enumerate(counts)
        ]


@dataclass
class Wrapper(Policy):
    """A policy around another one; by default it changes nothing."""

    inner: Policy

    @property
    def evicts(self) -> bool:  # type: ignore[override]
        return self.inner.evicts

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return self.inner.scores(ctx)

    def layer_budget(
        self, layer: int, num_layers: int, budget: int, prompt_len: int
    ) -> int:
        return self.inner.layer_budget(layer, num_layers, budget, prompt_len)

    def head_budgets(
        self, ctx: LayerContext, scores: torch.Tensor, layer_budget: int
    ) -> list[int]:
        return self.inner.head_budgets(ctx, scores, layer_budget)
