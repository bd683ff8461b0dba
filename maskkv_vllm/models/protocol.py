"""What the model runner needs of a model: the one interface LLaDA, the BERT testbed and
any future diffusion LM implement (``ModelRunner`` is typed on it)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from maskkv_vllm.models.attention import Attention


@runtime_checkable
class ModelConfig(Protocol):
    """The config fields the model runner, caches and policies read."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    embedding_size: int
    max_sequence_length: int
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int


@runtime_checkable
class DiffusionLM(Protocol):
    """A bidirectional masked-diffusion LM whose attention is pluggable per layer."""

    config: ModelConfig

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: Attention | None = None,
    ) -> torch.Tensor:
        """(B, T) ids and positions -> (B, T, d_model) hidden states; ``attn``
        computes every layer's attention (dense, capturing or cached)."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, d_model) hidden -> (N, V) fp32 logits."""
        ...

    def parameters(self):
        """Its tensors (the model runner reads device and dtype from the first)."""
        ...
