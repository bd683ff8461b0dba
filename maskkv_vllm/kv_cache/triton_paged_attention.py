"""Triton kernel for paged attention: reads the pages in place, no gather copy.

Heads are treated as sequences: one program handles one (request, query head) and a
tile of canvas queries, walks that head's own pages (its own length after eviction),
then the canvas's fresh keys, with an online softmax in fp32. The torch path in
``paged_attention.py`` is its oracle; on the CPU the kernel runs under Triton's
interpreter (``TRITON_INTERPRET=1``), which is how CI checks it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _online_update(q, k, v, valid, m_i, l_i, acc):
    """Fold one tile of keys into the running max, normaliser and output."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee")
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no valid key yet keeps m = -inf; shift by 0 instead.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def _paged_attention_kernel(
    Q, K_NEW, V_NEW, CANVAS_MASK, K_CACHE, V_CACHE, BLOCK_TABLES, SEQ_LENS, OUT,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_km,
    stride_vb, stride_vh, stride_vm,
    stride_mb,
    stride_tb, stride_th,
    stride_lb,
    stride_ob, stride_oh, stride_om,
    num_q_heads, canvas_len, sm_scale,
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // num_q_heads
    h = pid_bh % num_q_heads
    kvh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < canvas_len
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
    q = tl.load(q_ptrs + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    q = q.to(tl.float32) * sm_scale
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # The head's prompt tokens, page by page (ragged length per head).
    seq_len = tl.load(SEQ_LENS + b * stride_lb + kvh)
    table = BLOCK_TABLES + b * stride_tb + kvh * stride_th
    for start in range(0, seq_len, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seq_len
        page = tl.load(table + offs_n // PAGE, mask=n_ok, other=0).to(tl.int64)
        slot = page * PAGE + offs_n % PAGE
        kv_off = slot[:, None] * HEAD_DIM + offs_d[None, :]
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K_CACHE + kv_off, mask=kv_ok, other=0.0).to(tl.float32)
        v = tl.load(V_CACHE + kv_off, mask=kv_ok, other=0.0).to(tl.float32)
        m_i, l_i, acc = _online_update(q, k, v, n_ok, m_i, l_i, acc)

    # The canvas's own fresh keys (padding slots of shorter canvases are masked).
    for start in range(0, canvas_len, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        in_len = offs_n < canvas_len
        real = tl.load(CANVAS_MASK + b * stride_mb + offs_n, mask=in_len, other=0)
        n_ok = in_len & (real != 0)
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k_ptrs = K_NEW + b * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_km
        v_ptrs = V_NEW + b * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vm
        k = tl.load(k_ptrs + offs_d[None, :], mask=kv_ok, other=0.0).to(tl.float32)
        v = tl.load(v_ptrs + offs_d[None, :], mask=kv_ok, other=0.0).to(tl.float32)
        m_i, l_i, acc = _online_update(q, k, v, n_ok, m_i, l_i, acc)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
    tl.store(
        o_ptrs + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=m_ok[:, None] & d_ok[None, :],
    )


def paged_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_m: int = 32,
    block_n: int = 64,
) -> torch.Tensor:
    """Same contract as ``paged_attention`` (shapes documented there)."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    mask = canvas_mask.to(torch.int8).contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    grid = (b * hq, triton.cdiv(lq, block_m))
    _paged_attention_kernel[grid](
        q, k, v, mask, k_cache.contiguous(), v_cache.contiguous(), tables, lens, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0),
        tables.stride(0), tables.stride(1),
        lens.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        hq, lq, d**-0.5,
        HEAD_DIM=d, GROUP=hq // hkv, PAGE=k_cache.shape[1],
        BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
    )  # fmt: skip
    return out
