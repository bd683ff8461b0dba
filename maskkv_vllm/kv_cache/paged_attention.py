"""Canvas queries over a request's paged prompt KV plus the canvas's own KV.

One entry point, ``paged_attention``. The torch path below (gather the pages, then one
SDPA with a per-head key mask) is the reference and the CPU path; on CUDA the Triton
kernel (``triton_paged_attention.py``), which reads pages in place, is selected
automatically when Triton is installed. ``MASKKV_PAGED_ATTENTION=torch|triton``
forces one.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch
import torch.nn.functional as F


class Workspace:
    """Scratch buffers reused across calls.

    On the CPU, allocating fresh multi-MB tensors every layer of every step costs more
    than the gather itself (the pages are faulted in anew each time), so the gathered
    keys and values land in buffers that grow once and are then reused. One workspace
    serves one thread.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor
    ) -> torch.Tensor:
        """A tensor of ``shape``, dtype and device of ``like``; contents undefined."""
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if (
            buf is None
            or buf.numel() < n
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = self.buffers[name] = torch.empty(
                n, dtype=like.dtype, device=like.device
            )
        return buf[:n].view(shape)


def held_pages(
    page_tables: torch.Tensor, seq_lens: torch.Tensor, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pages every head holds, and which of their slots are real tokens.

    Args:
        page_tables: (B, H, max_pages) int page ids, padded with the null page.
        seq_lens: (B, H) tokens held per head.

    Returns:
        pages: (B, H, W) int64 page ids, W = the most pages a head holds (padding is
            the null page).
        valid: (B, H, W * page_size) bool, True for the slots that hold a token.
    """
    width = -(-int(seq_lens.max()) // page_size) if seq_lens.numel() else 0
    pages = page_tables[..., :width].long()
    j = torch.arange(width * page_size, device=page_tables.device)
    return pages, j < seq_lens[..., None]


def _with_canvas(
    cache: torch.Tensor,
    pages: torch.Tensor,
    canvas: torch.Tensor,
    name: str,
    workspace: Workspace,
) -> torch.Tensor:
    """(B, H, W * P + Lc, d): each head's pages in order, then the canvas tokens."""
    b, h, width = pages.shape
    num_pages, page, d = cache.shape
    rows = cache.view(num_pages, page * d).to(canvas.dtype)
    n = width * page
    out = workspace.get(name, (b, h, n + canvas.shape[2], d), canvas)
    # Whole pages straight into place, one copy of the prompt KV per step: a
    # page's slots are contiguous, so this reads P x fewer, P x longer runs than
    # a gather by slot, and costs about what the dense path's concatenation does
    # (issue 18). The unused tail slots of a head's last page are masked.
    for i in range(b):
        for j in range(h):
            torch.index_select(
                rows, 0, pages[i, j], out=out[i, j, :n].view(width, page * d)
            )
    out[:, :, n:].copy_(canvas)
    return out


def paged_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Reference: gather the pages, append the canvas KV, one masked SDPA in the
    model's dtype, as the dense prefix path runs it (SDPA accumulates in fp32
    either way): bf16 paged and prefix outputs then agree (issue 18)."""
    workspace = workspace or Workspace()
    pages, valid = held_pages(page_tables, seq_lens, k_cache.shape[1])
    b, hkv, lq, _ = k.shape
    keys = _with_canvas(k_cache, pages, k.to(k_cache.dtype), "keys", workspace)
    values = _with_canvas(v_cache, pages, v.to(v_cache.dtype), "values", workspace)
    if bool((seq_lens == seq_lens[:, :1]).all()):
        # Every head holds as many tokens (the full cache): one mask per row, the
        # shape the dense path passes, which SDPA broadcasts over the heads.
        mask = torch.cat([valid[:, 0], canvas_mask], dim=-1)[:, None, None, :]
    else:
        mask = torch.cat([valid, canvas_mask[:, None, :].expand(b, hkv, lq)], dim=-1)
        mask = mask.repeat_interleave(q.shape[1] // hkv, dim=1)[:, :, None, :]
    return F.scaled_dot_product_attention(
        q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask,
        enable_gqa=q.shape[1] != hkv,
    )  # fmt: skip


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Canvas queries over paged prompt KV (ragged per head) and fresh canvas KV.

    Args:
        q: (B, Hq, Lc, d) post-RoPE canvas queries.
        k, v: (B, Hkv, Lc, d) the canvas's own post-RoPE keys and values.
        canvas_mask: (B, Lc) bool, True for real canvas slots.
        k_cache, v_cache: (num_pages, page_size, d) page tensors.
        page_tables: (B, Hkv, max_pages) int32 page ids per (request, KV head).
        seq_lens: (B, Hkv) int32 prompt tokens held per (request, KV head).
        workspace: scratch buffers to reuse across calls (one per thread).

    Returns:
        (B, Hq, Lc, d) attention output in q's dtype.
    """
    if backend_for(q.device.type) == "triton":
        from maskkv_vllm.kv_cache.triton_paged_attention import paged_attention_triton

        return paged_attention_triton(
            q, k, v, canvas_mask, k_cache, v_cache, page_tables, seq_lens
        )
    return paged_attention_torch(
        q, k, v, canvas_mask, k_cache, v_cache, page_tables, seq_lens, workspace
    )


@functools.cache
def backend_for(device_type: str) -> str:
    """ "triton" on CUDA when Triton is installed, else "torch"; env overrides."""
    forced = os.environ.get("MASKKV_PAGED_ATTENTION", "auto")
    if forced not in ("auto", "torch", "triton"):
        raise ValueError(
            f"MASKKV_PAGED_ATTENTION={forced!r} is not one of auto, torch, triton"
        )
    has_triton = importlib.util.find_spec("triton") is not None
    if forced == "triton" and not has_triton:
        raise ValueError("MASKKV_PAGED_ATTENTION=triton but Triton is not installed")
    if forced != "auto":
        return forced
    return "triton" if device_type == "cuda" and has_triton else "torch"
