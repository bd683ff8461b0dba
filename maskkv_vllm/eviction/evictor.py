"""Apply a policy to one layer of one request row at step 0: the kept K/V only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskkv_vllm.eviction.context import LayerContext
from maskkv_vllm.eviction.policy import Policy
from maskkv_vllm.eviction.sharded import SINGLE_RANK, HeadShard


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
        lengths: kept count per head.
    """

    k: torch.Tensor
    v: torch.Tensor
    lengths: list[int]


def select_layer(
    eviction: Eviction,
    layer: int,
    num_layers: int,
    q: torch.Tensor,
    k: torch.Tensor,
    prompt_len: int,
    shard: HeadShard = SINGLE_RANK,
) -> list[torch.Tensor]:
    """Kept prompt indices of every KV head of the layer (all ranks' heads).

    Args:
        q: (Hq/N, M + L, d) post-RoPE queries of the row (prompt then canvas),
            this rank's heads.
        k: (Hkv/N, M + L, d) post-RoPE keys of the row, this rank's heads.
        prompt_len: M.

    Raises:
        RuntimeError: the policy returned another number of heads (under tensor
            parallelism: it scored from ``q``/``k`` instead of the statistics).
    """
    ctx = LayerContext(
        layer, num_layers, q, k, prompt_len, q.shape[1] - prompt_len,
        eviction.generator, eviction.chunk,
    )  # fmt: skip
    selection = eviction.policy.select(shard.context(ctx), eviction.budget)
    if len(selection) != k.shape[0] * shard.size:
        raise RuntimeError(
            f"{type(eviction.policy).__name__} selected {len(selection)} KV "
            f"heads, the layer has {k.shape[0] * shard.size}: under tensor "
            "parallelism a policy must score through the context's statistics"
        )
    return selection


def gather_kept(
    kept: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor, prompt_len: int
) -> KeptKV:
    """Gather each head's kept prompt entries, left-aligned and zero-index padded.

    Args:
        kept: per KV head, its kept prompt indices (ascending), as
            ``Policy.select`` returns them.
        k, v: (Hkv, M + L, d) post-RoPE keys and values of the row.
        prompt_len: M.
    """
    lengths = [int(i.numel()) for i in kept]
    width = max(lengths)
    index = torch.zeros(len(kept), width, dtype=torch.long, device=k.device)
    for h, idx in enumerate(kept):
        index[h, : idx.numel()] = idx
    gather = index[..., None].expand(-1, -1, k.shape[-1])
    return KeptKV(
        k[:, :prompt_len].gather(1, gather),
        v[:, :prompt_len].gather(1, gather),
        lengths,
    )
