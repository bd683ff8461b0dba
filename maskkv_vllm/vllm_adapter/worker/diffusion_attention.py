"""The attention of one engine step: every LLaDA request of vLLM's flat batch.

vLLM's attention kernels never run on LLaDA's pool; the runner installs a
``DiffusionAttention`` on the model for each step, and each layer calls it with
the batch's post-RoPE q/k/v. Per request row:

- **step 0** (prompt + canvas scheduled): dense non-causal attention over the
  row (the full context, so step 0's own output is exact), then
  ``kv_cache.step_zero.capture_layer`` -- the embedded engine's step 0 --
  writes the layer's kept prompt entries per KV head (the request's policy, or
  all M for the full cache) into the request's head-pages (``request_pages``).
- **canvas steps**: the canvas attends to its kept prompt pages plus its own
  fresh K/V through ``kv.paged_attention`` (the embedded engine's attention:
  the torch reference here, the Triton kernel on CUDA); all such rows of the
  step go in one batched call per layer.
- **the dual canvas cache** (``kv_cache/canvas_cache.py``, as in the embedded
  engine): step 0 also keeps the canvas K/V outside block 0 after each head's
  prompt entries; a canvas step at a block boundary attends to the prompt
  entries only and rewrites those canvas entries; a block step forwards the
  block's tokens alone (scheduled as the canvas's last slots, their positions
  shifted by ``position_shift``) over prompt and canvas entries.

Tensor parallelism: each rank holds its block of KV heads (``HeadShard``). A
policy runs on a ``ShardedLayerContext`` whose per-head statistics are
all-gathered over the TP group, so every rank computes the selection of every
head of the layer and writes its own heads; ``kept_lengths`` holds all heads'
counts, which the scheduler sizes every rank's pages by.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from maskkv_vllm.eviction.sharded import SINGLE_RANK, HeadShard
from maskkv_vllm.kv_cache.adaptive_canvas import AdaptiveCanvasAttention, AdaptiveRow
from maskkv_vllm.kv_cache.canvas_cache import append_canvas
from maskkv_vllm.kv_cache.page_table_tensors import stack_tables
from maskkv_vllm.kv_cache.paged_attention import Workspace, paged_attention
from maskkv_vllm.kv_cache.step_zero import capture_layer
from maskkv_vllm.models.attention import dense_attention
from maskkv_vllm.vllm_adapter.diffusion_state import DiffusionState
from maskkv_vllm.vllm_adapter.request_pages import VllmPageStore


@dataclass
class RowPlan:
    """One request's place in the step's flat token batch.

    Attributes:
        state: its denoising state (pages, eviction, kept lengths).
        start: index of its first scheduled token in the batch.
        num_tokens: its scheduled tokens (M + L at step 0, L after; + 1 for
            a shifted model).
    """

    state: DiffusionState
    start: int
    num_tokens: int


def current_shard() -> HeadShard:
    """The KV heads of this process in vLLM's TP group (initialised by the worker)."""
    from vllm.distributed import get_tp_group

    group = get_tp_group()
    if group.world_size == 1:
        return SINGLE_RANK
    gather = functools.partial(group.all_gather, dim=0)
    return HeadShard(group.rank_in_group, group.world_size, gather)


def width_groups(rows: list[RowPlan]) -> list[list[RowPlan]]:
    """Canvas rows in batches whose padding at most doubles their tokens.

    A batched call pads every row to its widest; rows are grouped widest first,
    a group taking rows wider than half its first, so a step's padded q/k/v
    and output stay under 2 x its scheduled canvas tokens (one 4k-token canvas
    beside 255 of 32 tokens no longer pads to 256 x 4k).
    """
    groups: list[list[RowPlan]] = []
    for row in sorted(rows, key=lambda r: -r.num_tokens):
        if groups and 2 * row.num_tokens > groups[-1][0].num_tokens:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


class DiffusionAttention:
    """Called by the model for each layer of one step (see module docstring).

    Args:
        rows: every request of the step, in batch order.
        store: the KV pages of this rank.
        num_layers: D.
        shard: this rank's heads; default: vLLM's current TP group.
        workspace: scratch buffers of the paged attention, reused across steps.
    """

    def __init__(
        self,
        rows: list[RowPlan],
        store: VllmPageStore,
        num_layers: int,
        shard: HeadShard | None = None,
        workspace: Workspace | None = None,
    ):
        self.rows, self.store, self.num_layers = rows, store, num_layers
        self.shard = shard if shard is not None else current_shard()
        self.workspace = workspace or Workspace()

    def positions(self, positions: torch.Tensor) -> torch.Tensor:
        """(T,) vLLM's positions of the step's tokens -> the tokens' own (a block
        step's tokens sit at its block, not at the canvas's last slots)."""
        shifts = [(r, r.state.position_shift()) for r in self.rows]
        if not any(shift for _, shift in shifts):
            return positions
        positions = positions.clone()
        for r, shift in shifts:
            positions[r.start : r.start + r.num_tokens] += shift
        return positions

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """One layer's attention for the whole batch.

        Args:
            layer: layer index.
            q: (1, Hq/N, T, d); k, v: (1, Hkv/N, T, d) post-RoPE, this rank's
                heads, the batch's tokens concatenated.

        Returns:
            (T, Hq/N * d) attention output.
        """
        out = q.new_empty(q.shape[2], q.shape[1] * q.shape[3])
        canvas = []
        for row in self.rows:
            if row.state.is_full_forward:
                self._prefill(layer, row, q, k, v, out)
            else:
                canvas.append(row)
        for group in width_groups(canvas):
            self._canvas(layer, group, q, k, v, out)
        return out

    def _prefill(self, layer, row: RowPlan, q, k, v, out) -> None:
        """Dense attention over the row, then its kept prompt KV into pages."""
        span = slice(row.start, row.start + row.num_tokens)
        qr, kr, vr = q[:, :, span], k[:, :, span], v[:, :, span]
        o = dense_attention(qr, kr, vr, None)[0]  # (Hq/N, M + L, d)
        out[span] = o.transpose(0, 1).reshape(row.num_tokens, -1)
        st = row.state
        write = functools.partial(st.pages.write_layer, self.store)
        if (span := st.canvas_span()) is not None:
            m = st.prompt_len
            kc, vc = span.stored(kr[0, :, m:]), span.stored(vr[0, :, m:])
            st.pages.canvas_tokens = kc.shape[1]
            write = append_canvas(write, kc, vc)
        st.kept_lengths[layer] = capture_layer(
            write,
            st.eviction,
            layer,
            self.num_layers,
            qr[0],
            kr[0],
            vr[0],
            st.prompt_len,
            self.shard,
        )

    def _canvas(self, layer, rows: list[RowPlan], q, k, v, out) -> None:
        """Every canvas row over its pages plus its fresh K/V, one batched call."""
        width = max(r.num_tokens for r in rows)
        qb = q.new_zeros(len(rows), q.shape[1], width, q.shape[3])
        kb = k.new_zeros(len(rows), k.shape[1], width, k.shape[3])
        vb = torch.zeros_like(kb)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=q.device)
        for i, r in enumerate(rows):
            span = slice(r.start, r.start + r.num_tokens)
            qb[i, :, : r.num_tokens] = q[0, :, span]
            kb[i, :, : r.num_tokens] = k[0, :, span]
            vb[i, :, : r.num_tokens] = v[0, :, span]
            mask[i, r.state.query_only_tokens() : r.num_tokens] = True
        tables, lens = stack_tables(
            [r.state.pages.table(layer, r.state.forward_kind == "canvas") for r in rows]
        )
        o = paged_attention(
            qb, kb, vb, mask, self.store.k_cache, self.store.v_cache,
            tables, lens, self.workspace,
        )  # fmt: skip
        for i, r in enumerate(rows):
            span = slice(r.start, r.start + r.num_tokens)
            out[span] = (
                o[i, :, : r.num_tokens].transpose(0, 1).reshape(r.num_tokens, -1)
            )
            self._refresh_canvas(
                layer, r, kb[i, :, : r.num_tokens], vb[i, :, : r.num_tokens]
            )

    def _refresh_canvas(self, layer, row: RowPlan, k, v) -> None:
        """At a block boundary of the dual canvas cache, rewrite the row's
        cached canvas entries from this forward's canvas K/V (Hkv/N, L, d)."""
        st = row.state
        if st.forward_kind == "canvas" and (span := st.canvas_span()) is not None:
            k, v = k[:, st.shift :], v[:, st.shift :]
            st.pages.write_canvas(self.store, layer, span.outside(k), span.outside(v))


class SplitStep:
    """A step with rows of the adaptive canvas cache beside other rows.

    The model's forward (``DiffusionLMBase._split_forward``) runs the other
    rows' tokens (``plain_index``) through its blocks with ``plain``, whose
    rows start in that compacted token list, and the adaptive rows, gathered
    into (B, W) by ``adaptive_columns``, through ``adaptive.run_layer``.

    Args:
        plans: every row of the step (flat starts).
        store: the KV pages of this rank.
        num_layers: D.
        workspace: scratch buffers of the paged attention.
    """

    def __init__(
        self,
        plans: list[RowPlan],
        store: VllmPageStore,
        num_layers: int,
        workspace: Workspace,
        shard: HeadShard | None = None,
    ) -> None:
        plain = [p for p in plans if p.state.forward_kind != "adaptive"]
        ours = [p for p in plans if p.state.forward_kind == "adaptive"]
        flat = DiffusionAttention(plain, store, num_layers, shard, workspace)
        self.positions = flat.positions
        device = store.k_cache.device
        index, rebased = [], []
        for p in plain:
            rebased.append(RowPlan(p.state, len(index), p.num_tokens))
            index.extend(range(p.start, p.start + p.num_tokens))
        self.plain_index = torch.tensor(index, dtype=torch.long, device=device)
        self.plain = DiffusionAttention(
            rebased, store, num_layers, flat.shard, workspace
        )
        self.adaptive_tokens = [p.num_tokens for p in ours]
        width = max(self.adaptive_tokens)
        cols = torch.empty(len(ours), width, dtype=torch.long)
        for i, p in enumerate(ours):
            own = torch.arange(p.start, p.start + p.num_tokens)
            cols[i, : p.num_tokens] = own
            cols[i, p.num_tokens :] = own[-1]
        self.adaptive_columns = cols.to(device)
        rows = [
            AdaptiveRow(
                p.state.seq.params.gen_length, p.state.seq.canvas_rows_recomputed,
                _row_pages(p.state.pages),
            )
            for p in ours
        ]  # fmt: skip
        shift = ours[0].state.shift
        self.adaptive = AdaptiveCanvasAttention(
            rows, store, shift, store.num_kv_heads, store.head_dim, workspace
        )

    def __call__(self, layer, q, k, v):
        return self.plain(layer, q, k, v)


def _row_pages(pages):
    def row_pages(layer: int):
        return (pages.region_slots(layer), *pages.table(layer))

    return row_pages
