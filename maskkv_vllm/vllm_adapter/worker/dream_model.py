"""Dream as a vLLM model: Qwen2's layout on vLLM's tensor-parallel layers, run
bidirectionally over paged head-pages.

``DreamForDiffusionLM`` is ``maskkv_vllm.models.dream.DreamModel`` (the oracle)
built from vLLM's parallel layers. Checkpoint tensors (Hugging Face names) ->
vLLM layers:

- ``model.embed_tokens``: ``VocabParallelEmbedding``, vocabulary rows split.
- ``model.layers.N.self_attn.{q,k,v}_proj`` (weights and biases): one
  ``QKVParallelLinear`` ``qkv_proj``, heads split; grouped-query attention
  (Dream-7B: 28 query heads over 4 KV heads) needs the KV heads to split too.
- ``self_attn.o_proj`` and ``mlp.down_proj``: ``RowParallelLinear``, all-reduce.
- ``mlp.{gate,up}_proj``: one ``MergedColumnParallelLinear`` ``gate_up_proj``.
- ``lm_head`` (or the embedding when tied): ``ParallelLMHead`` + ``LogitsProcessor``.
- ``input_layernorm``, ``post_attention_layernorm``, ``model.norm``: our RMSNorm.

``compute_logits`` is unshifted: the runner reads slot i from row i - 1 (Dream's
``shifted_logits``). Registered by ``plugin.register`` under ``DreamModel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models.dream import DreamModel
from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.llada import RMSNorm
from maskkv_vllm.vllm_adapter.worker.diffusion_lm import (
    DiffusionLMBase,
    StepAttention,
    attend,
    join_prefix,
    packed_modules,
    pool_layer,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig

FUSED_PARAMS: dict[str, tuple[str, str | int]] = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
"""Checkpoint module -> (our fused vLLM module, shard id for its weight_loader)."""


def dream_config_from_hf(hf_config: Any) -> DreamConfig:
    """Our validated ``DreamConfig`` from the transformers config vLLM parsed."""
    return DreamConfig.from_dict(hf_config.to_dict())


class _Attention(nn.Module):
    def __init__(self, c: DreamConfig, tp: int, prefix: str) -> None:
        from vllm.model_executor.layers.linear import (
            QKVParallelLinear,
            RowParallelLinear,
        )

        super().__init__()
        self.qkv_proj = QKVParallelLinear(
            c.hidden_size, c.head_dim, c.n_heads, c.n_kv_heads, bias=True,
            prefix=f"{prefix}.qkv_proj", return_bias=False,
        )  # fmt: skip
        self.o_proj = RowParallelLinear(
            c.hidden_size, c.hidden_size, bias=False, prefix=f"{prefix}.o_proj",
            return_bias=False,
        )  # fmt: skip


class _MLP(nn.Module):
    def __init__(self, c: DreamConfig, prefix: str) -> None:
        from vllm.model_executor.layers.linear import (
            MergedColumnParallelLinear,
            RowParallelLinear,
        )

        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            c.hidden_size, [c.intermediate_size] * 2, bias=False,
            prefix=f"{prefix}.gate_up_proj", return_bias=False,
        )  # fmt: skip
        self.down_proj = RowParallelLinear(
            c.intermediate_size, c.hidden_size, bias=False,
            prefix=f"{prefix}.down_proj", return_bias=False,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DreamParallelLayer(nn.Module):
    """One pre-norm Dream layer on one TP rank: attention then SwiGLU."""

    def __init__(self, config: DreamConfig, layer: int, tp: int, prefix: str) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = config.n_heads // tp
        self.num_kv_heads = config.n_kv_heads // tp
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.self_attn = _Attention(config, tp, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = _MLP(config, f"{prefix}.mlp")

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: StepAttention
    ) -> torch.Tensor:
        """x: (T, D) replicated on every rank; cos/sin: (1, 1, T, d) -> (T, D)."""
        heads = (self.num_heads, self.num_kv_heads)
        o = attend(self.layer, self.fused_qkv(x), *heads, (cos, sin), attn)
        x = x + self.out_proj(o)
        return x + self.ffn(x)

    @property
    def qkv_proj(self) -> nn.Module:
        return self.self_attn.qkv_proj

    def fused_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (T, (Hq + 2 Hkv) * d / N), this rank's heads."""
        return self.self_attn.qkv_proj(self.input_layernorm(x))

    def norm_in(self, x: torch.Tensor) -> torch.Tensor:
        """The attention's input norm of x (T, D)."""
        return self.input_layernorm(x)

    def out_proj(self, o: torch.Tensor) -> torch.Tensor:
        """(T, Hq/N * d) -> (T, D), all-reduced over the ranks."""
        return self.self_attn.o_proj(o)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's residual update of x (T, D)."""
        return self.mlp(self.post_attention_layernorm(x))


class _Decoder(nn.Module):
    """``model``: the checkpoint's module tree plus the page-pool layer."""

    def __init__(self, config: DreamConfig, vllm_config: VllmConfig, prefix: str):
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            VocabParallelEmbedding,
        )

        super().__init__()
        tp = vllm_config.parallel_config.tensor_parallel_size
        self.embed_tokens = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.embed_tokens"
        )
        self.layers = nn.ModuleList(
            DreamParallelLayer(config, i, tp, f"{prefix}.layers.{i}")
            for i in range(config.n_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.kv_pool = nn.ModuleList(
            [pool_layer(config, tp, vllm_config, f"{prefix}.kv_pool.0")]
        )


class DreamForDiffusionLM(DiffusionLMBase):
    """Dream mask predictor in vLLM's model interface, tensor parallel.

    Args:
        vllm_config: the engine's config; ``model_config.hf_config`` is Dream's.
        prefix: name prefix of this module inside vLLM (usually "").
    """

    model_name = "Dream"
    reference_cls = DreamModel
    fused_params = FUSED_PARAMS
    packed_modules_mapping = packed_modules(FUSED_PARAMS)
    read_config = staticmethod(dream_config_from_hf)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            ParallelLMHead,
        )

        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        self.model = _Decoder(config, vllm_config, join_prefix(prefix, "model"))
        if not config.tie_word_embeddings:
            self.lm_head = ParallelLMHead(
                config.vocab_size, config.hidden_size,
                prefix=join_prefix(prefix, "lm_head"),
            )  # fmt: skip

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids -> (T, hidden_size) embeddings (not scaled, as in Qwen2)."""
        return self.model.embed_tokens(input_ids)

    def final_norm_and_head(self) -> tuple[nn.Module, nn.Module, Any]:
        tied = self.config.tie_word_embeddings
        return self.model.norm, self.model.embed_tokens if tied else self.lm_head, None
