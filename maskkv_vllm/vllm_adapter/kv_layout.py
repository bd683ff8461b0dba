"""Read and write one request's slots of vLLM's CPU KV cache.

vLLM's CPU backend stores each (block, KV head) as ``block_size`` keys then
``block_size`` values, in an ISA-specific packed order (not ``(slot, dim)``
row-major; [ran] on this box the first element matches, the rest are permuted).
Writes therefore go through the backend's own ``do_kv_cache_update``, and reads
through a permutation learned once by writing known codes into a scratch cache
with that same op.
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
        block_ids: (n,) the request's block ids.
        slots: (N,) logical slots (0 = the request's first token).
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
    attn_layer.impl.do_kv_cache_update(
        attn_layer, k.contiguous(), v.contiguous(), kv_cache, slot_mapping.long()
    )


def _inverse(codes: torch.Tensor) -> torch.Tensor:
    """(N,) physical -> logical codes, as logical -> physical offsets."""
    if not torch.equal(torch.sort(codes).values, torch.arange(codes.numel())):
        raise RuntimeError("vLLM CPU KV cache layout probe is not a permutation")
    inverse = torch.empty_like(codes)
    inverse[codes] = torch.arange(codes.numel())
    return inverse
