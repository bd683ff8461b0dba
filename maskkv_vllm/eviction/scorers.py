"""Scorers: each ranks one layer's prompt tokens per KV head (uniform budgets)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.policy import Policy
from maskkv_vllm.eviction.settings import check_fraction, check_int


@dataclass
class FullCache(Policy):
    """No eviction: every prompt token is kept."""

    evicts = False

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return torch.zeros(ctx.num_kv_heads, ctx.prompt_len, device=ctx.k.device)


@dataclass
class MaskVoteScorer(Policy):
    """MaskKV's mask voting: the attention every canvas mask query gives each prompt
    token at the first step, softmax over all prompt+canvas keys, summed over the
    mask queries (and over the query heads of a GQA group)."""

    query_share: float = 0.0
    """Ablation: share of the vote given to the last prompt token's query, the
    rest to the mean mask query (0: MaskKV, the mask queries only). A shifted
    model (Dream) reads the answer's first token from that row's output."""

    def __post_init__(self) -> None:
        check_fraction("query_share", self.query_share)

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        if not self.query_share:
            return ctx.mask_votes
        s = self.query_share
        mean_mask = ctx.mask_votes / ctx.canvas_len
        return (1 - s) * mean_mask + s * ctx.window_votes(1)


@dataclass
class SnapKVScorer(Policy):
    """SnapKV: the last ``window`` prompt tokens vote (softmax over all keys), the
    votes are max-pooled along the sequence with ``pool_kernel``, and the window itself
    is always kept (most recent first when the budget is smaller than it)."""

    window: int = 32
    """Observation window: how many of the last queries vote."""
    pool_kernel: int = 7
    """Max-pool width along the sequence, odd (1: no pooling)."""
    canvas_in_window: bool = False
    """Ablation: the window is the last ``window`` tokens of the whole input, the
    canvas's mask tokens included (SnapKV proper stops at the prompt's end)."""

    def __post_init__(self) -> None:
        check_int("window", self.window, 0)
        check_int("pool_kernel", self.pool_kernel, 1)
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel={self.pool_kernel} must be odd")

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        m = ctx.prompt_len
        tail = ctx.canvas_len if self.canvas_in_window else 0
        w = min(self.window, m + tail)
        votes = ctx.window_votes(w, through_canvas=self.canvas_in_window)
        if self.pool_kernel > 1:
            k = self.pool_kernel
            votes = F.max_pool1d(votes[:, None], k, stride=1, padding=k // 2)[:, 0, :m]
        # Votes sum to at most w, so w + 1 + rank puts every prompt token of the
        # window above every other token, the most recent first.
        inside = max(0, min(m, w - tail))
        recency = torch.arange(inside, dtype=votes.dtype, device=votes.device)
        votes[:, m - inside :] = self.window + 1 + recency
        return votes


@dataclass
class StreamingScorer(Policy):
    """StreamingLLM: the first ``sinks`` prompt tokens plus the most recent ones."""

    sinks: int = 4

    def __post_init__(self) -> None:
        check_int("sinks", self.sinks, 0)

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        m = ctx.prompt_len
        pos = torch.arange(m, dtype=torch.float32, device=ctx.k.device)
        pos[: self.sinks] += m  # above every recent token
        return pos.expand(ctx.num_kv_heads, m).clone()


@dataclass
class RandomScorer(Policy):
    """Uniformly random tokens, from the request's own seeded stream."""

    def scores(self, ctx: LayerContext) -> torch.Tensor:
        return torch.rand(
            ctx.num_kv_heads,
            ctx.prompt_len,
            generator=ctx.generator,
            device=ctx.k.device,
        )
