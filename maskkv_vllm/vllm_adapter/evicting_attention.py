"""MaskKV at the attention layer: step-0 selection and compaction, masked reads.

The runner installs an ``EvictionPlan`` on the model for a step in which some
request evicts. After vLLM's attention layer has run (and written the step's KV):

- a request in its prefill (step 0) is scored per (layer, KV head) with our
  policy (``evict_layer``, the embedded engine's code) and the kept post-RoPE
  keys/values of each head are compacted to the request's leading slots
  ``0..n_h-1`` (zero-padded up to ``K_max`` of the layer). The step's own output
  is the full-context one, as in the embedded engine.
- a request denoising its canvas gets its output recomputed over its kept
  prompt slots (per-head counts, ragged, masked) plus the canvas's fresh K/V;
  vLLM's own result for those rows, which read the whole stale prompt range
  (and blocks freed since), is discarded.

Tensor parallelism: each rank sees its own block of KV heads (``HeadShard``).
The policy runs on a ``ShardedLayerContext`` whose per-head statistics are
all-gathered over the TP group, so every rank computes the selection of every
head of the layer (the single-rank selection, head budgets included) and keeps
its own heads. ``kept_lengths`` holds all heads' counts, so the request's
``kept_slots`` (K_max, what the scheduler frees by) is the maximum over all
ranks on every rank, the driver rank that reports it included.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.evictor import Eviction, gather_kept
from maskkv_vllm.eviction.sharded import Gather, ShardedLayerContext
from maskkv_vllm.vllm_adapter.diffusion_state import DiffusionState
from maskkv_vllm.vllm_adapter.kv_layout import CacheLayout, write_slots


@dataclass
class RowPlan:
    """One evicting request's place in the step's flat token batch.

    Attributes:
        state: its denoising state (eviction, kept lengths).
        start: index of its first scheduled token in the batch.
        num_tokens: its scheduled tokens (M + L at step 0, L after).
        block_ids: (n,) its KV block ids.
    """

    state: DiffusionState
    start: int
    num_tokens: int
    block_ids: torch.Tensor


@dataclass(frozen=True)
class HeadShard:
    """This rank's KV heads of every layer: ``rank * n .. rank * n + n - 1``.

    n = Hkv / size, vLLM's ``QKVParallelLinear`` split (the model refuses
    replicated KV heads). ``size == 1`` is the single-rank case.

    Attributes:
        rank: this rank in the TP group.
        size: N, the TP world size.
        gather: the group's all-gather along dim 0 (None when size is 1).
    """

    rank: int = 0
    size: int = 1
    gather: Gather | None = None

    @classmethod
    def current(cls) -> HeadShard:
        """The shard of this process in vLLM's TP group (initialised by the worker)."""
        from vllm.distributed import get_tp_group

        group = get_tp_group()
        if group.world_size == 1:
            return cls()
        gather = functools.partial(group.all_gather, dim=0)
        return cls(group.rank_in_group, group.world_size, gather)

    def heads(self, local_heads: int) -> slice:
        """This rank's heads among the layer's ``local_heads * size``."""
        return slice(self.rank * local_heads, (self.rank + 1) * local_heads)

    def context(self, ctx: LayerContext) -> LayerContext:
        """``ctx`` over this rank's heads -> the context a policy should see."""
        if self.size == 1:
            return ctx
        return ShardedLayerContext(ctx, self.gather, self.size)


class EvictionPlan:
    """Called by the model after each layer's attention (see module docstring).

    Args:
        rows: the evicting requests of this step.
        layout: the CPU KV cache layout (for reads).
        num_layers: D.
        shard: this rank's heads; default: vLLM's current TP group.
    """

    def __init__(
        self,
        rows: list[RowPlan],
        layout: CacheLayout,
        num_layers: int,
        shard: HeadShard | None = None,
    ):
        self.rows, self.layout, self.num_layers = rows, layout, num_layers
        self.shard = shard if shard is not None else HeadShard.current()

    def __call__(
        self,
        layer: int,
        attn_layer: nn.Module,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """Apply the plan to one layer.

        Args:
            layer: layer index.
            attn_layer: vLLM's attention layer (its ``kv_cache`` and backend).
            q: (1, Hq/N, T, d); k, v: (1, Hkv/N, T, d) post-RoPE, whole batch,
                this rank's heads.
            out: (T, Hq/N * d) vLLM's attention output; rows are replaced in
                place.

        Returns:
            ``out``.
        """
        for row in self.rows:
            span = slice(row.start, row.start + row.num_tokens)
            qr, kr, vr = q[0, :, span], k[0, :, span], v[0, :, span]
            if row.state.is_full_forward:
                self._evict(layer, attn_layer, row, qr, kr, vr)
            else:
                o = self._masked(layer, attn_layer, row, qr, kr, vr)
                out[span] = o.transpose(0, 1).reshape(row.num_tokens, -1)
        return out

    def _evict(self, layer, attn_layer, row: RowPlan, q, k, v) -> None:
        """Select over every head of the layer; compact this rank's kept K/V."""
        st, local_heads = row.state, k.shape[0]
        selection = self._select(st.eviction, layer, q, k, st.prompt_len)
        positions = torch.arange(q.shape[1], device=q.device)
        mine = gather_kept(
            selection[self.shard.heads(local_heads)], k, v, positions, st.prompt_len
        )
        width = mine.k.shape[1]
        dev = q.device
        lens = torch.tensor(mine.lengths, device=dev)
        pad = torch.arange(width, device=dev)[None, :] >= lens[:, None]
        kk = mine.k.masked_fill(pad[..., None], 0.0)  # (Hkv/N, K, d)
        vv = mine.v.masked_fill(pad[..., None], 0.0)
        slots = torch.arange(width)
        write_slots(
            attn_layer, kk.transpose(0, 1), vv.transpose(0, 1), row.block_ids, slots
        )
        # Every head's count (all ranks): kept_slots is then the global K_max.
        st.kept_lengths[layer] = [int(i.numel()) for i in selection]

    def _select(
        self, eviction: Eviction, layer: int, q, k, prompt_len: int
    ) -> list[torch.Tensor]:
        """Kept prompt indices of every KV head of the layer (all ranks).

        Args:
            q: (Hq/N, M + L, d), k: (Hkv/N, M + L, d) this rank's heads.
        """
        ctx = LayerContext(
            layer, self.num_layers, q, k, prompt_len, q.shape[1] - prompt_len,
            eviction.generator, eviction.chunk,
        )  # fmt: skip
        selection = eviction.policy.select(self.shard.context(ctx), eviction.budget)
        if len(selection) != k.shape[0] * self.shard.size:
            raise RuntimeError(
                f"{type(eviction.policy).__name__} selected {len(selection)} KV "
                f"heads, the layer has {k.shape[0] * self.shard.size}: under tensor "
                "parallelism a policy must score through the context's statistics"
            )
        return selection

    def _masked(self, layer, attn_layer, row: RowPlan, q, k, v) -> torch.Tensor:
        """(Hq/N, L, d) attention of the canvas over kept prompt + canvas K/V."""
        counts = row.state.kept_lengths[layer][self.shard.heads(k.shape[0])]
        lengths = torch.tensor(counts, device=q.device)
        width = int(lengths.max())
        pk, pv = self.layout.read(attn_layer.kv_cache, row.block_ids, width)
        keys = torch.cat([pk.to(k.dtype), k], dim=1)  # (Hkv, K + L, d)
        values = torch.cat([pv.to(v.dtype), v], dim=1)
        live = torch.arange(width, device=q.device)[None, :] < lengths[:, None]
        live = torch.cat([live, live.new_ones(len(lengths), k.shape[1])], dim=1)
        group = q.shape[0] // k.shape[0]
        mask = live.repeat_interleave(group, dim=0)[:, None, :]  # (Hq, 1, K + L)
        return F.scaled_dot_product_attention(
            q[None], keys[None], values[None], attn_mask=mask[None],
            enable_gqa=group > 1,
        )[0]  # fmt: skip
