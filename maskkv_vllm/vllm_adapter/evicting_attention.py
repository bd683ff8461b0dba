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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.eviction.evictor import evict_layer
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


class EvictionPlan:
    """Called by the model after each layer's attention (see module docstring).

    Args:
        rows: the evicting requests of this step.
        layout: the CPU KV cache layout (for reads).
        num_layers: D.
    """

    def __init__(self, rows: list[RowPlan], layout: CacheLayout, num_layers: int):
        self.rows, self.layout, self.num_layers = rows, layout, num_layers

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
            q: (1, Hq, T, d); k, v: (1, Hkv, T, d) post-RoPE, whole batch.
            out: (T, Hq * d) vLLM's attention output; rows are replaced in place.

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
        st = row.state
        positions = torch.arange(q.shape[1], device=q.device)
        kept = evict_layer(
            st.eviction, layer, self.num_layers, q, k, v, positions, st.prompt_len
        )
        width = kept.k.shape[1]
        pad = torch.arange(width)[None, :] >= torch.tensor(kept.lengths)[:, None]
        kk = kept.k.masked_fill(pad[..., None], 0.0)  # (Hkv, K, d)
        vv = kept.v.masked_fill(pad[..., None], 0.0)
        slots = torch.arange(width)
        write_slots(
            attn_layer, kk.transpose(0, 1), vv.transpose(0, 1), row.block_ids, slots
        )
        st.kept_lengths[layer] = kept.lengths

    def _masked(self, layer, attn_layer, row: RowPlan, q, k, v) -> torch.Tensor:
        """(Hq, L, d) attention of the canvas over kept prompt + canvas K/V."""
        lengths = torch.tensor(row.state.kept_lengths[layer])
        width = int(lengths.max())
        pk, pv = self.layout.read(attn_layer.kv_cache, row.block_ids, width)
        keys = torch.cat([pk.to(k.dtype), k], dim=1)  # (Hkv, K + L, d)
        values = torch.cat([pv.to(v.dtype), v], dim=1)
        live = torch.arange(width)[None, :] < lengths[:, None]  # (Hkv, K)
        live = torch.cat([live, live.new_ones(len(lengths), k.shape[1])], dim=1)
        group = q.shape[0] // k.shape[0]
        mask = live.repeat_interleave(group, dim=0)[:, None, :]  # (Hq, 1, K + L)
        return F.scaled_dot_product_attention(
            q[None], keys[None], values[None], attn_mask=mask[None],
            enable_gqa=group > 1,
        )[0]  # fmt: skip
