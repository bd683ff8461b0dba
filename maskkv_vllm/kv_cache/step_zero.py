"""Step 0 of a request row, one layer at a time: vote, select, write the kept KV.

The one copy both engines run. At a request's first forward each layer hands
its post-RoPE q/k/v here; the request's policy scores the layer (through the
``LayerContext``), and only the kept prompt entries of each KV head go into
the request's pages. The layer's full prompt KV exists only as the forward's
activations and never occupies the pool.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from maskkv_vllm.eviction.evictor import Eviction, gather_kept, select_layer
from maskkv_vllm.eviction.sharded import SINGLE_RANK, HeadShard

WriteLayer = Callable[[int, torch.Tensor, torch.Tensor, list[int]], None]
"""``write(layer, k, v, lengths)``: store the first ``lengths[h]`` rows of head h
of (Hkv, N, d) keys and values as the request's pages of that layer."""


def capture_layer(
    write: WriteLayer,
    eviction: Eviction | None,
    layer: int,
    num_layers: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prompt_len: int,
    shard: HeadShard = SINGLE_RANK,
) -> list[int]:
    """Write one layer of one row's prompt KV into its pages, evicted per head.

    Args:
        write: the row's pages (``WriteLayer``).
        eviction: the row's policy and budget; None keeps the whole prompt.
        q: (Hq/N, M + L, d) post-RoPE queries of the row, this rank's heads.
        k, v: (Hkv/N, M + L, d) post-RoPE keys and values, this rank's heads.
        prompt_len: M.
        shard: this rank's heads under tensor parallelism.

    Returns:
        Kept entries of every KV head of the layer (all ranks' heads).
    """
    m, local = prompt_len, k.shape[0]
    if eviction is None:
        write(layer, k[:, :m], v[:, :m], [m] * local)
        return [m] * (local * shard.size)
    selection = select_layer(eviction, layer, num_layers, q, k, m, shard)
    kept = gather_kept(selection[shard.heads(local)], k, v, m)
    write(layer, kept.k, kept.v, kept.lengths)
    return [int(i.numel()) for i in selection]
