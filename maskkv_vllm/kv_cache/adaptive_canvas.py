"""The adaptive canvas cache (dLLM-Cache's answer-feature cache) in a row's pages.

A row with ``canvas_cache="adaptive"`` keeps, per (layer, KV head), after its
kept prompt entries:

- the K/V of its L canvas rows (entries ``[0, L)`` of the region), then
- its canvas rows' attention and MLP outputs, each (Hq x d) a row, split by
  query head: KV head h holds the slices of its group's g = Hq / Hkv query
  heads, entry ``L + row * g + i`` holding query head ``h * g + i``'s slice of
  the attention output in its K slot and of the MLP output in its V slot.

So one page table and one length per head still cover everything, the region
is taken once at step 0 (as the dual cache's) and freed with the row, and the
admission bound counts it (``SamplingParams.canvas_entries``).

A step of such rows runs each layer itself (``run_layer``, which the models'
``run_blocks`` calls instead of the block's forward): every canvas row's value
vector is recomputed and compared (cosine) with its cached one; the rows that
moved most (``SamplingParams.canvas_selected``, all of them at a refresh) get
fresh q/k/v, attend to the prompt entries and the cached canvas K/V (their own
K/V rewritten first, every row's V refreshed), and go through the MLP; the
others add their cached attention and MLP outputs. Query-only columns (Dream's
previous position) are recomputed every time and cache nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskkv_vllm.kv_cache.page_store import PageStore
from maskkv_vllm.kv_cache.page_table_tensors import stack_tables
from maskkv_vllm.kv_cache.paged_attention import Workspace, paged_attention

RowPages = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""``pages(layer)`` -> (region slots (Hkv, L * (1 + g)) int64, page table
(Hkv, W) int32, held entries per head (Hkv,) int32) of one row."""


@dataclass
class AdaptiveRow:
    """One batch row of an adaptive step.

    Attributes:
        canvas_len: L, its canvas rows (batch columns ``[shift, shift + L)``).
        selected: canvas rows to recompute in each layer (L at a refresh).
        pages: its pages (``RowPages``).
    """

    canvas_len: int
    selected: int
    pages: RowPages


@dataclass(frozen=True)
class FeatureSpan:
    """A row whose canvas K/V and outputs are cached (step 0 takes the region)."""

    gen_length: int
    group: int

    def stored(self, x: torch.Tensor) -> torch.Tensor:
        """(H, L, d) canvas K or V -> the (H, L * (1 + g), d) region to take;
        zeros, since the first canvas step is a refresh that fills it."""
        return x.new_zeros(x.shape[0], self.gen_length * (1 + self.group), x.shape[2])


def outputs_to_entries(
    x: torch.Tensor, num_kv_heads: int, head_dim: int
) -> torch.Tensor:
    """Row outputs (n, Hq * d) -> (Hkv * n * g, d): KV head h's entries (its
    group's query-head slices, row by row), head after head."""
    n = x.shape[0]
    g = x.shape[1] // (num_kv_heads * head_dim)
    return x.view(n, num_kv_heads, g, head_dim).transpose(0, 1).reshape(-1, head_dim)


def entries_to_outputs(e: torch.Tensor, n: int) -> torch.Tensor:
    """(Hkv, n * g, d) region entries -> row outputs (n, Hq * d)."""
    hkv, _, d = e.shape
    return e.view(hkv, n, -1, d).transpose(0, 1).reshape(n, -1)


def least_similar(new: torch.Tensor, cached: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of the k rows whose new value vectors are least similar
    (cosine over all KV heads) to their cached ones.

    Args:
        new, cached: (Hkv, L, d) value vectors of one row's canvas.
    """
    sim = F.cosine_similarity(
        new.transpose(0, 1).flatten(1), cached.transpose(0, 1).flatten(1), dim=-1
    )
    if k >= sim.numel():
        return torch.arange(sim.numel(), device=sim.device)
    return torch.sort(torch.topk(sim, k, largest=False).indices).values


class AdaptiveCanvasAttention:
    """Runs each layer for rows that cache their canvas features (module
    docstring). The batch is ``(B, T)``: per row ``shift`` query-only columns,
    then its canvas rows, then padding.

    Args:
        rows: the batch rows.
        store: the page tensors.
        shift: query-only columns before each canvas (Dream: 1).
        num_kv_heads, head_dim: the model's KV shape.
        workspace: scratch buffers of the paged attention.
    """

    def __init__(
        self,
        rows: list[AdaptiveRow],
        store: PageStore,
        shift: int,
        num_kv_heads: int,
        head_dim: int,
        workspace: Workspace | None = None,
    ) -> None:
        self.rows, self.store, self.shift = rows, store, shift
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.workspace = workspace or Workspace()

    def __call__(self, layer, q, k, v):
        raise TypeError("the adaptive canvas cache runs whole layers (run_layer)")

    def run_layer(
        self, block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """One layer: (B, T, D) -> (B, T, D); ``block`` has ``qkv``, ``value``,
        ``attn_proj``, ``ffn`` and ``layer``; cos/sin (B, 1, T, d)."""
        pages = [r.pages(block.layer) for r in self.rows]
        partial = any(r.selected < r.canvas_len for r in self.rows)
        values = block.value(x) if partial else None  # (B, Hkv, T, d)
        chosen = [
            self._choose(i, r, pages[i][0], values) for i, r in enumerate(self.rows)
        ]
        cols = self._columns(chosen, x.device)  # (B, R)
        xs = x.gather(1, cols[..., None].expand(-1, -1, x.shape[2]))
        rope = cols[:, None, :, None].expand(-1, 1, -1, cos.shape[-1])
        q, k, v = block.qkv(xs, cos.gather(2, rope), sin.gather(2, rope))
        self._write_kv(chosen, pages, k, v, values)
        tables, lens = self._tables(pages)
        none = torch.zeros(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
        o = paged_attention(
            q, k, v, none, self.store.k_cache, self.store.v_cache, tables, lens,
            self.workspace,
        )  # fmt: skip
        fresh_attn = block.attn_proj(o)  # (B, R, D)
        attn, mlp = self._cached_outputs(pages, x)
        self._scatter(attn, cols, fresh_attn)
        x = x + attn
        fresh_mlp = block.ffn(x.gather(1, cols[..., None].expand(-1, -1, x.shape[2])))
        self._scatter(mlp, cols, fresh_mlp)
        self._write_outputs(chosen, pages, cols, fresh_attn, fresh_mlp)
        return x + mlp

    # -- pieces ------------------------------------------------------------------

    def _choose(self, i: int, row: AdaptiveRow, slots, values) -> torch.Tensor:
        """Canvas rows (ascending) that this layer recomputes for batch row i."""
        n = row.canvas_len
        if row.selected >= n:
            return torch.arange(n, device=slots.device)
        cached = self.store.v_cache.view(-1, self.head_dim)[slots[:, :n]]
        new = values[i, :, self.shift : self.shift + n]
        return least_similar(new, cached.to(new.dtype), row.selected)

    def _columns(self, chosen: list[torch.Tensor], device) -> torch.Tensor:
        """(B, R) batch columns to recompute: the query-only ones, then the
        chosen canvas rows; a row with fewer repeats its last (the same input
        gives the same output, so the duplicate writes agree)."""
        width = self.shift + max(c.numel() for c in chosen)
        out = torch.empty(len(chosen), width, dtype=torch.long, device=device)
        for i, c in enumerate(chosen):
            cols = torch.cat([torch.arange(self.shift, device=device), c + self.shift])
            out[i, : cols.numel()] = cols
            out[i, cols.numel() :] = cols[-1]
        return out

    def _write_kv(self, chosen, pages, k, v, values) -> None:
        """Every canvas row's fresh V (their value vectors were recomputed) and
        the chosen rows' fresh K, into the region, before the attention reads it."""
        d = self.head_dim
        v_rows = self.store.v_cache.view(-1, d)
        for i, (c, (slots, _, _)) in enumerate(zip(chosen, pages, strict=True)):
            own = slice(self.shift, self.shift + c.numel())
            if values is not None:
                canvas = self.rows[i].canvas_len
                all_v = values[i, :, self.shift : self.shift + canvas]
                v_rows[slots[:, :canvas].flatten()] = all_v.reshape(-1, d).to(
                    v_rows.dtype
                )
            self.store.write(
                slots[:, c].flatten(),
                k[i, :, own].reshape(-1, d),
                v[i, :, own].reshape(-1, d),
            )

    def _tables(self, pages):
        """Page tables and lengths that cover prompt entries and canvas K/V (not
        the cached outputs after them)."""
        tables, lens = stack_tables([(t, n) for _, t, n in pages])
        outputs = [
            s.shape[1] - r.canvas_len
            for (s, _, _), r in zip(pages, self.rows, strict=True)
        ]
        return tables, lens - torch.tensor(
            outputs, dtype=lens.dtype, device=lens.device
        )[:, None]

    def _cached_outputs(self, pages, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) attention and MLP outputs of every canvas row from the
        region (zero at the query-only and padding columns, and for a row that
        recomputes every canvas row, whose outputs are all fresh)."""
        attn, mlp = torch.zeros_like(x), torch.zeros_like(x)
        k_rows = self.store.k_cache.view(-1, self.head_dim)
        v_rows = self.store.v_cache.view(-1, self.head_dim)
        for i, (slots, _, _) in enumerate(pages):
            n = self.rows[i].canvas_len
            if self.rows[i].selected >= n:
                continue
            out = slots[:, n:]
            cols = slice(self.shift, self.shift + n)
            attn[i, cols] = entries_to_outputs(k_rows[out], n).to(x.dtype)
            mlp[i, cols] = entries_to_outputs(v_rows[out], n).to(x.dtype)
        return attn, mlp

    @staticmethod
    def _scatter(full: torch.Tensor, cols: torch.Tensor, fresh: torch.Tensor) -> None:
        full.scatter_(1, cols[..., None].expand(-1, -1, full.shape[2]), fresh)

    def _write_outputs(self, chosen, pages, cols, attn, mlp) -> None:
        """The chosen rows' fresh outputs into their region entries."""
        hkv, d = self.num_kv_heads, self.head_dim
        for i, (c, (slots, _, _)) in enumerate(zip(chosen, pages, strict=True)):
            n, r = self.rows[i].canvas_len, c.numel()
            out_slots = slots[:, n:].view(hkv, n, -1)[:, c].flatten()
            own = slice(self.shift, self.shift + r)
            self.store.write(
                out_slots,
                outputs_to_entries(attn[i, own], hkv, d),
                outputs_to_entries(mlp[i, own], hkv, d),
            )
