"""Everything a policy may look at for one layer of one request at step 0."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from maskkv_vllm.eviction.voting import column_attention_sums, group_heads


@dataclass
class LayerContext:
    """One layer of one request row during its first (full) forward.

    Attributes:
        layer: layer index; num_layers: D.
        q: (Hq, M + L, d) post-RoPE queries of the row (prompt then canvas).
        k: (Hkv, M + L, d) post-RoPE keys of the row.
        prompt_len: M; canvas_len: L.
        generator: the request's random stream (random eviction).
        chunk: key chunk of the voting passes.
    """

    layer: int
    num_layers: int
    q: torch.Tensor
    k: torch.Tensor
    prompt_len: int
    canvas_len: int
    generator: torch.Generator | None = None
    chunk: int = 1024

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[0]

    @functools.cached_property
    def mask_votes(self) -> torch.Tensor:
        """I: (Hkv, M) attention the canvas mask queries give each prompt token,
        summed over the mask queries and over the query heads of a KV group."""
        voters = self.q[:, self.prompt_len :]  # exactly the canvas positions
        votes = column_attention_sums(voters, self.k, self.prompt_len, self.chunk)
        return group_heads(votes, self.num_kv_heads)

    @functools.cached_property
    def prompt_preference(self) -> torch.Tensor:
        """P: (Hkv,) share of the mask queries' attention that went to the prompt
        (eq. 14; at step 0 it is sum_j I_j / L, averaged over a KV group)."""
        group = self.q.shape[0] // self.num_kv_heads
        return self.mask_votes.sum(dim=1) / (self.canvas_len * group)

    def window_votes(self, window: int, through_canvas: bool = False) -> torch.Tensor:
        """(Hkv, M) attention from the last ``window`` queries of the prompt
        (SnapKV) or, ``through_canvas``, of the whole input, prompt then canvas."""
        end = self.prompt_len + (self.canvas_len if through_canvas else 0)
        w = min(window, end)
        rows = self.q[:, end - w : end]
        votes = column_attention_sums(rows, self.k, self.prompt_len, self.chunk)
        return group_heads(votes, self.num_kv_heads)
