"""Apply a policy to one layer of one request row at step 0: the kept K/V only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.policy import Policy


@dataclass(frozen=True)
class Eviction:
    """What one request row asks for: a policy and its budget B."""

    policy: Policy
    budget: int
    generator: torch.Generator | None = None
    """The request's random stream (random eviction)."""
    chunk: int = 1024
    """Keys per chunk in the voting passes."""


@dataclass
class KeptKV:
    """One layer's kept prompt entries, ragged per KV head.

    Attributes:
        k, v: (Hkv, N, d), the first ``lengths[h]`` rows of head h are kept.
        positions: (Hkv, N) their absolute positions.
        lengths: kept count per head.
    """

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    lengths: list[int]


def evict_layer(
    eviction: Eviction,
    layer: int,
    num_layers: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    prompt_len: int,
) -> KeptKV:
    """Score one row's prompt for this layer and gather what each head keeps.

    Args:
        q: (Hq, M + L, d) post-RoPE queries of the row (prompt then canvas).
        k, v: (Hkv, M + L, d) post-RoPE keys and values of the row.
        positions: (M + L,) absolute positions.
        prompt_len: M.
    """
    ctx = LayerContext(
        layer, num_layers, q, k, prompt_len, q.shape[1] - prompt_len,
        eviction.generator, eviction.chunk,
    )  # fmt: skip
    kept = eviction.policy.select(ctx, eviction.budget)
    return gather_kept(kept, k, v, positions, prompt_len)


def gather_kept(
    kept: list[torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    prompt_len: int,
) -> KeptKV:
    """Gather each head's kept prompt entries, left-aligned and zero-index padded.

    Args:
        kept: per KV head, its kept prompt indices (ascending), as
            ``Policy.select`` returns them.
        k, v: (Hkv, M + L, d) post-RoPE keys and values of the row.
        positions: (M + L,) absolute positions.
        prompt_len: M.
    """
    lengths = [int(i.numel()) for i in kept]
    width = max(lengths)
    index = torch.zeros(len(kept), width, dtype=torch.long, device=k.device)
    for h, idx in enumerate(kept):
        index[h, : idx.numel()] = idx
    d = k.shape[-1]
    gather = index[..., None].expand(-1, -1, d)
    return KeptKV(
        k[:, :prompt_len].gather(1, gather),
        v[:, :prompt_len].gather(1, gather),
        positions[:prompt_len][index],
        lengths,
    )
