"""Triton kernel for paged attention: reads the pages in place, no gather copy.

Heads are treated as sequences: one program handles one (request, query head) and a
tile of canvas queries, walks that head's own pages (its own length after eviction),
then the canvas's fresh keys, with an online softmax in fp32. The torch path in
``paged_attention.py`` is its oracle; on the CPU the kernel runs under Triton's
interpreter (``TRITON_INTERPRET=1``), which is how CI checks it.

Tile sizes, warps and stages depend on the dtype and the GPU (``launch_config``);
``triton_compile_check`` compiles them for each target without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class LaunchConfig:
    """How ``_paged_attention_kernel`` is launched for one (dtype, target) pair."""

    block_m: int
    """Canvas queries per program (BLOCK_M)."""
    block_n: int
    """Keys per inner-loop tile (BLOCK_N)."""
    num_warps: int
    """Warps per program."""
    num_stages: int
    """Software-pipelining depth of the key/value loads (1: no pipelining)."""


# Opt-in shared memory per thread block, bytes. CUDA C++ Programming Guide, 5.1
# "Compute Capabilities", Table 31 "Memory Information per Compute Capability", row
# "Maximum amount of shared memory per thread block" (its KB is 1024 B): 163 KB on
# 8.0/8.7, 99 KB on 8.6/8.9, 227 KB on 9.0.
# https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/compute-capabilities.html
MAX_SHARED_PER_BLOCK = {
    (8, 0): 166_912,  # A100, A800
    (8, 6): 101_376,  # A10, A40, RTX 3090
    (8, 7): 166_912,  # Jetson Orin
    (8, 9): 101_376,  # L40S, L4, RTX 4090
    (9, 0): 232_448,  # H100, H200
}

# Measured, not guessed: `python -m maskkv_vllm.kv_cache.triton_compile_check`
# compiles each entry for its target (Triton 3.9, ptxas 12.9 / 13.4) and reports
# zero local memory (no register spills) and shared memory within
# MAX_SHARED_PER_BLOCK. The dots are fp32 whatever the input dtype and lower to FMA
# (no MMA in the PTX), which keeps whole head_dim rows of the operands in each
# thread's registers: at head_dim 128 only 8-16 warps avoid spills, and 16-bit
# inputs spill once their loads are pipelined (num_stages > 1). fp16 and bf16
# compile alike, so entries are keyed by bytes per element. Among the clean configs
# the rule picks BLOCK_M 32 (keys are re-read once per 32 queries), then the largest
# BLOCK_N, then the most stages, then the fewest warps that stay under 255 registers
# (off the spill cliff). Not yet timed on a GPU.
_HEAD_128 = {
    ((8, 0), 4): LaunchConfig(32, 64, 16, 3),  # 64 regs, 155,776 B
    ((8, 0), 2): LaunchConfig(32, 64, 8, 1),  # 108 regs, 81,920 B
    ((8, 9), 4): LaunchConfig(32, 64, 16, 2),  # 62 regs, 90,240 B
    ((8, 9), 2): LaunchConfig(32, 32, 8, 1),  # 78 regs, 49,152 B
    ((9, 0), 4): LaunchConfig(32, 64, 16, 1),  # 64 regs, 81,920 B
    ((9, 0), 2): LaunchConfig(32, 32, 16, 1),  # 58 regs, 49,152 B
}
# Head dims 24, 32, 64 (the test models) and 256: one config clean on every target.
_HEAD_64 = {4: LaunchConfig(32, 64, 8, 2), 2: LaunchConfig(32, 64, 8, 1)}
_HEAD_256 = {4: LaunchConfig(32, 32, 8, 1), 2: LaunchConfig(32, 32, 8, 1)}

# 8.6 compiles like 8.9 (checked); sharing a limit is not enough on its own: 8.7
# spills 128 B at 8.0's bf16 config. Any other GPU gets the 99 KB target's configs
# (unchecked there; fp32 at head_dim 128 needs more than 7.x's 64 KB).
_SAME_LIMIT = {(8, 6): (8, 9)}
_FALLBACK = (8, 9)


def launch_config(
    dtype: torch.dtype, capability: tuple[int, int] | None, head_dim: int
) -> LaunchConfig:
    """Tile sizes and warps for ``dtype`` on a GPU of compute ``capability``.

    Args:
        dtype: element type of q, k, v and the pages (fp32, bf16 or fp16).
        capability: (major, minor) of the target GPU; None off CUDA (the
            interpreter), which gets the fallback target's config.
        head_dim: d of the (B, H, L, d) inputs, at most 256.

    Returns:
        The config ``paged_attention_triton`` launches with.
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"paged attention supports fp32, bf16 and fp16, not {dtype}")
    if head_dim > 256:
        raise ValueError(f"head_dim={head_dim}: no launch config measured above 256")
    if head_dim <= 64:
        return _HEAD_64[dtype.itemsize]
    if head_dim > 128:
        return _HEAD_256[dtype.itemsize]
    target = _SAME_LIMIT.get(capability, capability)
    return _HEAD_128.get(
        (target, dtype.itemsize), _HEAD_128[(_FALLBACK, dtype.itemsize)]
    )


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device; None for the CPU (Triton's interpreter)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def kernel_arguments(
    inputs: tuple[torch.Tensor, ...], out: torch.Tensor, config: LaunchConfig
) -> tuple[tuple[int, int], tuple, dict]:
    """Grid, positional arguments and keywords of one kernel launch.

    Shared by the runtime and ``triton_compile_check``, so what is compiled for a
    target without a device is exactly what a launch would compile.

    Args:
        inputs: (q, k, v, canvas_mask, k_cache, v_cache, block_tables, seq_lens)
            as ``paged_attention`` takes them (shapes documented there).
        out: (B, Hq, Lc, d) contiguous output, q's dtype.
        config: tile sizes, warps and stages.
    """
    q, k, v, canvas_mask, k_cache, v_cache, block_tables, seq_lens = inputs
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    mask = canvas_mask.to(torch.int8).contiguous()
    # Page ids stay int32 here; the kernel widens them to int64 before offsets.
    tables = block_tables.to(torch.int32).contiguous()
    lens = seq_lens.to(torch.int32).contiguous()
    grid = (b * hq, triton.cdiv(lq, config.block_m))
    args = (
        q, k, v, mask, k_cache.contiguous(), v_cache.contiguous(), tables, lens, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0),
        tables.stride(0), tables.stride(1),
        lens.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        hq, lq, d**-0.5,
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=d, GROUP=hq // hkv, PAGE=k_cache.shape[1],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return grid, args, meta


def paged_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_mask: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """Same contract as ``paged_attention`` (shapes documented there).

    ``config`` defaults to ``launch_config`` for q's dtype, head_dim and device.
    """
    if config is None:
        config = launch_config(q.dtype, device_capability(q.device), q.shape[-1])
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    inputs = (q, k, v, canvas_mask, k_cache, v_cache, block_tables, seq_lens)
    grid, args, meta = kernel_arguments(inputs, out, config)
    _paged_attention_kernel[grid](*args, **meta)
    return out
