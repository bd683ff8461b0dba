"""LLaDA as a vLLM model: vLLM's tensor-parallel layers, paged non-causal attention.

``LLaDAForDiffusionLM`` is LLaDA's mask predictor built from vLLM's parallel
layers, so it runs with ``tensor_parallel_size`` = N on N ranks (multiprocessing
or Ray executor). Official checkpoint tensors -> vLLM layers:

- ``transformer.wte``: ``VocabParallelEmbedding``, vocabulary rows split.
- ``blocks.N.{q,k,v}_proj``: one ``QKVParallelLinear`` ``qkv_proj``, heads split.
- ``blocks.N.attn_out``: ``RowParallelLinear``, input (heads) split, all-reduce.
- ``blocks.N.{ff_proj,up_proj}``: one ``MergedColumnParallelLinear``
  ``gate_up_proj``, hidden units split.
- ``blocks.N.ff_out``: ``RowParallelLinear``, input split, all-reduce.
- ``transformer.ff_out`` (LM head): ``ParallelLMHead`` + ``LogitsProcessor``,
  vocabulary split, logits all-gathered.
- ``*_norm``, ``ln_f``: our ``RMSNorm``, replicated.

Each rank holds ``n_heads / N`` query and ``n_kv_heads / N`` KV heads. The
forward pass, the step attention, the page pool and the limits are
``diffusion_lm.DiffusionLMBase``'s. Registered with vLLM by ``plugin.register``
as the lazy string ``"maskkv_vllm.vllm_adapter.worker.model:LLaDAForDiffusionLM"``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models import llada_config
from maskkv_vllm.models.llada import LLaDAModel, RMSNorm
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

logger = logging.getLogger(__name__)

FUSED_PARAMS: dict[str, tuple[str, str | int]] = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    # Upstream naming trap: ff_proj is the gate, ff_out the down projection.
    "ff_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
"""Checkpoint module -> (our fused vLLM module, shard id for its weight_loader)."""


def llada_config_from_hf(hf_config: Any) -> llada_config.LLaDAConfig:
    """Our validated ``LLaDAConfig`` from the transformers config vLLM parsed.

    Works for ``hf_config.LLaDAConfig`` and for a remote-code config alike,
    since both serialise LLaDA's own field names.
    """
    return llada_config.LLaDAConfig.from_dict(hf_config.to_dict())


class LLaDAParallelBlock(nn.Module):
    """One pre-norm LLaDA block on one TP rank: attention then SwiGLU.

    Args:
        config: the architecture.
        layer: block index.
        tp_size: tensor-parallel world size (heads and MLP units split by it).
        vllm_config: for the attention layer's cache config.
        prefix: this block's module path, e.g. ``"model.transformer.blocks.3"``.
    """

    def __init__(
        self,
        config: llada_config.LLaDAConfig,
        layer: int,
        tp_size: int,
        vllm_config: VllmConfig,
        prefix: str,
    ) -> None:
        from vllm.model_executor.layers.linear import (
            MergedColumnParallelLinear,
            QKVParallelLinear,
            RowParallelLinear,
        )

        super().__init__()
        c = config
        self.layer = layer
        self.num_heads = c.n_heads // tp_size
        self.num_kv_heads = c.n_kv_heads // tp_size
        bias, qkv_bias = c.include_bias, c.include_bias or c.include_qkv_bias
        self.attn_norm = RMSNorm(c.d_model, c.rms_norm_eps)
        self.qkv_proj = QKVParallelLinear(
            c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, bias=qkv_bias,
            prefix=f"{prefix}.qkv_proj", return_bias=False,
        )  # fmt: skip
        self.attn_out = RowParallelLinear(
            c.d_model, c.d_model, bias=bias, prefix=f"{prefix}.attn_out",
            return_bias=False,
        )  # fmt: skip
        self.ff_norm = RMSNorm(c.d_model, c.rms_norm_eps)
        self.gate_up_proj = MergedColumnParallelLinear(
            c.d_model, [c.mlp_hidden_size] * 2, bias=bias,
            prefix=f"{prefix}.gate_up_proj", return_bias=False,
        )  # fmt: skip
        self.ff_out = RowParallelLinear(
            c.mlp_hidden_size, c.d_model, bias=bias, prefix=f"{prefix}.ff_out",
            return_bias=False,
        )  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: StepAttention,
    ) -> torch.Tensor:
        """x: (T, D) replicated on every rank; cos/sin: (1, 1, T, d) -> (T, D)."""
        heads = (self.num_heads, self.num_kv_heads)
        o = attend(self.layer, self.fused_qkv(x), *heads, (cos, sin), attn)
        x = x + self.out_proj(o)
        return x + self.ffn(x)

    def fused_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (T, (Hq + 2 Hkv) * d / N), this rank's heads."""
        return self.qkv_proj(self.attn_norm(x))

    def norm_in(self, x: torch.Tensor) -> torch.Tensor:
        """The attention's input norm of x (T, D)."""
        return self.attn_norm(x)

    def out_proj(self, o: torch.Tensor) -> torch.Tensor:
        """(T, Hq/N * d) -> (T, D), all-reduced over the ranks."""
        return self.attn_out(o)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The SwiGLU's residual update of x (T, D)."""
        gate, up = self.gate_up_proj(self.ff_norm(x)).chunk(2, dim=-1)
        return self.ff_out(F.silu(gate) * up)


class _Transformer(nn.Module):
    """``model.transformer``: the official checkpoint's module tree."""

    def __init__(
        self, config: llada_config.LLaDAConfig, vllm_config: VllmConfig, prefix: str
    ) -> None:
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            ParallelLMHead,
            VocabParallelEmbedding,
        )

        super().__init__()
        tp = vllm_config.parallel_config.tensor_parallel_size
        self.wte = VocabParallelEmbedding(
            config.embedding_size, config.d_model, prefix=f"{prefix}.wte"
        )
        self.blocks = nn.ModuleList(
            LLaDAParallelBlock(config, i, tp, vllm_config, f"{prefix}.blocks.{i}")
            for i in range(config.n_layers)
        )
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.weight_tying = config.weight_tying
        if not config.weight_tying:
            self.ff_out = ParallelLMHead(
                config.embedding_size, config.d_model, bias=config.include_bias,
                prefix=f"{prefix}.ff_out",
            )  # fmt: skip

    @property
    def lm_head(self) -> nn.Module:
        """The output projection: ``wte`` itself when the weights are tied."""
        return self.wte if self.weight_tying else self.ff_out


class _Model(nn.Module):
    def __init__(
        self, config: llada_config.LLaDAConfig, vllm_config: VllmConfig, prefix: str
    ) -> None:
        super().__init__()
        self.transformer = _Transformer(config, vllm_config, f"{prefix}.transformer")
        tp = vllm_config.parallel_config.tensor_parallel_size
        # A list so that the layer name holds the one integer vLLM expects.
        self.kv_pool = nn.ModuleList(
            [pool_layer(config, tp, vllm_config, f"{prefix}.kv_pool.0")]
        )


class LLaDAForDiffusionLM(DiffusionLMBase):
    """LLaDA mask predictor in vLLM's model interface, tensor parallel.

    Same forward pass as ``maskkv_vllm.models.llada.LLaDAModel`` (the
    oracle), with the linear layers split over the TP ranks.

    Args:
        vllm_config: the engine's config; ``model_config.hf_config`` is LLaDA's.
        prefix: name prefix of this module inside vLLM (usually "").
    """

    model_name = "LLaDA"
    reference_cls = LLaDAModel
    fused_params = FUSED_PARAMS
    packed_modules_mapping = packed_modules(FUSED_PARAMS)
    read_config = staticmethod(llada_config_from_hf)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.model = _Model(self.config, vllm_config, join_prefix(prefix, "model"))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids -> (T, d_model) embeddings (LLaDA does not scale them)."""
        return self.model.transformer.wte(input_ids)

    def final_norm_and_head(self) -> tuple[nn.Module, nn.Module, Any]:
        t = self.model.transformer
        head = t.lm_head
        bias = getattr(head, "bias", None) if self.config.include_bias else None
        return t.ln_f, head, bias
