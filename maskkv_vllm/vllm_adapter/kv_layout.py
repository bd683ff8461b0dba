"""Read and write one request's slots of vLLM's KV cache (CPU and CUDA layouts).

Every backend sees one layer's cache as the logical 4-D view ``(num_blocks,
Hkv, block_size, C)`` (``vllm/v1/kv_cache_interface.py``,
``compute_layer_kv_cache_shape_bytes``); the resolved ``KVCacheLayout`` only
permutes the strides underneath, so indexing the view is layout-independent.

- **CPU** (``CacheLayout``): vLLM's CPU backend stores each (block, KV head) as
  ``block_size`` keys then ``block_size`` values, in an ISA-specific packed
  order (not ``(slot, dim)`` row-major; [ran] on this box the first element
  matches, the rest are permuted). Reads go through a permutation learned once
  by writing known codes into a scratch cache with the backend's own
  ``do_kv_cache_update``.
- **CUDA** (``PagedCacheLayout``): FlashAttention, Triton, FlexAttention and
  FlashInfer with an unquantized cache (``kv_cache_dtype="auto"``) all read the
  view as ``C = 2 * head_dim``, keys in ``[..., :d]`` and values in
  ``[..., d:]`` (each splits ``kv_cache.transpose(1, 2)`` at ``head_size``).
  Reads index that view directly.

Writes on both go through the backend's ``do_kv_cache_update`` (``write_slots``),
so the kernels read exactly what was written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_CODE_BASE = 128
"""Probe codes are written as two digits < 128: exact in fp32, bf16 and fp16."""


@dataclass(frozen=True)
class CacheLayout:
    """Where each logical (slot, dim) of a block lives in the packed cache.

    Attributes:
        block_size: slots per block.
        head_dim: d.
        key_index: (block_size * head_dim,) flat offset, inside one (block, head)
            key region, of logical element ``slot * head_dim + dim``.
        value_index: the same for the value region.
    """

    block_size: int
    head_dim: int
    key_index: torch.Tensor
    value_index: torch.Tensor

    @classmethod
    def probe(cls, attn_layer: nn.Module) -> CacheLayout:
        """Learn the layout of ``attn_layer``'s cache by writing known codes."""
        nb, heads, bs, two_d = attn_layer.kv_cache.shape
        d = two_d // 2
        code = torch.arange(bs * d)
        found = []
        for digit in (code // _CODE_BASE, code % _CODE_BASE):
            scratch = attn_layer.kv_cache.new_zeros(1, heads, bs, two_d)
            x = digit.view(bs, 1, d).expand(bs, heads, d).to(scratch.dtype)
            _write(attn_layer, scratch, x, x.clone(), torch.arange(bs))
            found.append(scratch.view(1, heads, 2 * bs * d)[0, 0].long())
        flat = found[0] * _CODE_BASE + found[1]  # (2 * bs * d,) logical codes
        keys, values = flat[: bs * d], flat[bs * d :]
        return cls(bs, d, _inverse(keys), _inverse(values))

    def read(
        self, kv_cache: torch.Tensor, block_ids: torch.Tensor, num_slots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``num_slots`` slots of a request, every head.

        Args:
            kv_cache: (num_blocks, Hkv, block_size, 2 * d) one layer's cache.
            block_ids: (n,) the request's block ids, in order.
            num_slots: how many leading slots to read.

        Returns:
            k, v: (Hkv, num_slots, d).
        """
        bs, d = self.block_size, self.head_dim
        n = -(-num_slots // bs)
        raw = kv_cache[block_ids[:n]].view(n, kv_cache.shape[1], 2 * bs * d)
        k = raw[..., : bs * d][..., self.key_index]
        v = raw[..., bs * d :][..., self.value_index]
        k = k.view(n, -1, bs, d).transpose(0, 1).reshape(-1, n * bs, d)
        v = v.view(n, -1, bs, d).transpose(0, 1).reshape(-1, n * bs, d)
        return k[:, :num_slots], v[:, :num_slots]


@dataclass(frozen=True)
class PagedCacheLayout:
    """The CUDA backends' unpacked layout: keys ``[..., :d]``, values ``[..., d:]``.

    Attributes:
        block_size: slots per kernel block (the view's dim 2).
        head_dim: d.
        blocks_per_page: kernel blocks per scheduler (manager) block; the
            runner maps the scheduler's block ids with ``kernel_block_ids``.
    """

    block_size: int
    head_dim: int
    blocks_per_page: int = 1

    @classmethod
    def for_cache(
        cls, kv_cache: torch.Tensor, head_dim: int, manager_block_size: int
    ) -> PagedCacheLayout:
        """Check one layer's cache view and describe it.

        Args:
            kv_cache: (num_blocks, Hkv, block_size, 2 * d) one layer's cache.
            head_dim: d of the model.
            manager_block_size: ``cache_config.block_size`` (the scheduler's).

        Raises:
            NotImplementedError: a view that is not ``(B, H, N, 2 * d)`` (a
                quantized or per-token-scaled cache), or a block size the
                kernel block size does not divide.
        """
        if kv_cache.dim() != 4 or kv_cache.shape[3] != 2 * head_dim:
            raise NotImplementedError(
                f"KV cache view of shape {tuple(kv_cache.shape)} is not "
                f"(num_blocks, num_kv_heads, block_size, 2 * {head_dim}); only an "
                "unquantized cache (kv_cache_dtype='auto') is supported"
            )
        kernel = kv_cache.shape[2]
        if manager_block_size % kernel:
            raise NotImplementedError(
                f"block_size={manager_block_size} is not a multiple of the "
                f"kernel block size {kernel}"
            )
        return cls(kernel, head_dim, manager_block_size // kernel)

    def kernel_block_ids(self, block_ids: torch.Tensor) -> torch.Tensor:
        """(n,) scheduler block ids -> (n * blocks_per_page,) kernel block ids."""
        return kernel_block_ids(block_ids, self.blocks_per_page)

    def read(
        self, kv_cache: torch.Tensor, block_ids: torch.Tensor, num_slots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``num_slots`` slots of a request, every head.

        Args:
            kv_cache: (num_blocks, Hkv, block_size, 2 * d) one layer's cache.
            block_ids: (n,) the request's kernel block ids, in order.
            num_slots: how many leading slots to read.

        Returns:
            k, v: (Hkv, num_slots, d).
        """
        bs, d = self.block_size, self.head_dim
        n = -(-num_slots // bs)
        ids = block_ids[:n].to(kv_cache.device)
        raw = kv_cache[ids]  # (n, Hkv, bs, 2d)
        raw = raw.transpose(0, 1).reshape(kv_cache.shape[1], n * bs, 2 * d)
        return raw[:, :num_slots, :d], raw[:, :num_slots, d:]


def kernel_block_ids(block_ids: torch.Tensor, blocks_per_page: int) -> torch.Tensor:
    """Scheduler block ids as kernel block ids (vLLM's kernel-block splitting).

    A scheduler block ``b`` of ``r = blocks_per_page`` kernel blocks is the
    kernel blocks ``b * r .. b * r + r - 1`` (``group_kernel_blocks``).

    Args:
        block_ids: (n,) scheduler block ids.
        blocks_per_page: r.

    Returns:
        (n * r,) kernel block ids, in slot order.
    """
    if blocks_per_page == 1:
        return block_ids
    offsets = torch.arange(blocks_per_page, dtype=block_ids.dtype)
    return (block_ids[:, None] * blocks_per_page + offsets).reshape(-1)


def write_slots(
    attn_layer: nn.Module,
    k: torch.Tensor,
    v: torch.Tensor,
    block_ids: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Write per-slot K/V of every head at a request's logical slots.

    Args:
        attn_layer: the vLLM attention layer (its cache and backend op).
        k, v: (N, Hkv, d).
        block_ids: (n,) the request's (kernel) block ids; CPU tensors.
        slots: (N,) logical slots (0 = the request's first token); CPU.
    """
    bs = attn_layer.kv_cache.shape[2]
    physical = block_ids[slots // bs] * bs + slots % bs
    _write(attn_layer, attn_layer.kv_cache, k, v, physical)


def _write(
    attn_layer: nn.Module,
    kv_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    slot_mapping = slot_mapping.to(device=kv_cache.device, dtype=torch.long)
    attn_layer.impl.do_kv_cache_update(
        attn_layer, k.contiguous(), v.contiguous(), kv_cache, slot_mapping
    )


def _inverse(codes: torch.Tensor) -> torch.Tensor:
    """(N,) physical -> logical codes, as logical -> physical offsets."""
    if not torch.equal(torch.sort(codes).values, torch.arange(codes.numel())):
        raise RuntimeError("vLLM CPU KV cache layout probe is not a permutation")
    inverse = torch.empty_like(codes)
    inverse[codes] = torch.arange(codes.numel())
    return inverse
