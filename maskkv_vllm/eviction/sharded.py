"""A layer's context on one tensor-parallel rank, with every KV head's statistics.

Under tensor parallelism each rank holds a contiguous block of a layer's heads
(vLLM's ``QKVParallelLinear`` split: rank r has KV heads ``r*n .. r*n + n - 1``
and their query groups). Scores are per head, but budgets are not: MaskKV's
head budgets share ``N * k_l`` in proportion to every head's prompt preference
(eq. 15), AdaKV ranks all heads' scores together, and random eviction draws
one (Hkv, M) matrix from the request's stream. ``ShardedLayerContext``
computes the per-head statistics on the rank's heads and all-gathers them, so
``Policy.select`` returns the selection of **every** head of the layer, the
same on every rank and equal to the single-rank one; each rank then keeps its
own block (``HeadShard``). Pure torch: the gather is a callable, so tests can
run the ranks as threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maskkv_vllm.eviction.context import LayerContext

Gather = Callable[[torch.Tensor], torch.Tensor]
"""All-gather along dim 0 over the TP group, in rank order: (n, ...) -> (N*n, ...)."""


class ShardedLayerContext(LayerContext):
    """``LayerContext`` of one rank whose statistics span all ranks' heads.

    ``q``/``k`` are still this rank's heads: a policy that scores from them
    directly (instead of ``mask_votes`` / ``window_votes``) would see only
    ``Hkv / N`` heads, and is not supported under tensor parallelism. Every
    built-in policy reads the gathered statistics or ``num_kv_heads``.

    Args:
        local: the context over this rank's heads (q: (Hq/N, M + L, d),
            k: (Hkv/N, M + L, d)).
        gather: the TP group's all-gather along dim 0.
        world_size: N, the number of ranks.
    """

    def __init__(self, local: LayerContext, gather: Gather, world_size: int) -> None:
        fields = dataclasses.fields(LayerContext)
        super().__init__(**{f.name: getattr(local, f.name) for f in fields})
        self.local, self.gather, self.world_size = local, gather, world_size
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def num_kv_heads(self) -> int:
        """Hkv of the whole layer (all ranks)."""
        return self.local.num_kv_heads * self.world_size

    @property
    def mask_votes(self) -> torch.Tensor:  # type: ignore[override]
        """(Hkv, M) mask votes of every head; see ``LayerContext.mask_votes``."""
        return self._gathered("mask_votes", lambda: self.local.mask_votes)

    @property
    def prompt_preference(self) -> torch.Tensor:  # type: ignore[override]
        """(Hkv,) prompt preference of every head (eq. 14)."""
        return self._gathered("prompt_preference", lambda: self.local.prompt_preference)

    def window_votes(self, window: int, through_canvas: bool = False) -> torch.Tensor:
        """(Hkv, M) SnapKV window votes of every head."""
        local = self.local.window_votes(window, through_canvas)
        return self.gather(local.contiguous())

    def _gathered(self, key: str, local: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Gather a local statistic once per context.

        A plain dict, not ``functools.cached_property``: before Python 3.12
        that holds one lock per property for all instances, and ranks run as
        threads (tests) would deadlock inside the gather.
        """
        if key not in self._cache:
            self._cache[key] = self.gather(local().contiguous())
        return self._cache[key]


@dataclass(frozen=True)
class HeadShard:
    """This rank's KV heads of every layer: ``rank * n .. rank * n + n - 1``.

    n = Hkv / size, vLLM's ``QKVParallelLinear`` split. ``HeadShard()`` is the
    single-rank case (the embedded engine, vLLM without tensor parallelism).

    Attributes:
        rank: this rank in the TP group.
        size: N, the TP world size.
        gather: the group's all-gather along dim 0 (None when size is 1).
    """

    rank: int = 0
    size: int = 1
    gather: Gather | None = None

    def heads(self, local_heads: int) -> slice:
        """This rank's heads among the layer's ``local_heads * size``."""
        return slice(self.rank * local_heads, (self.rank + 1) * local_heads)

    def context(self, ctx: LayerContext) -> LayerContext:
        """``ctx`` over this rank's heads -> the context a policy should see."""
        if self.size == 1:
            return ctx
        return ShardedLayerContext(ctx, self.gather, self.size)


SINGLE_RANK = HeadShard()
"""Every head on one rank: the embedded engine, vLLM without tensor parallelism."""
