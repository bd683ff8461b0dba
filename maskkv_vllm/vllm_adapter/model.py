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

Each rank holds ``n_heads / N`` query and ``n_kv_heads / N`` KV heads; its
post-RoPE q/k/v (our RoPE at explicit positions) go to a vLLM
``PrefillPrefixLMAttention`` layer, a decoder attention that always runs
non-causally and writes the paged KV cache of the rank's heads. MaskKV's
eviction hook (``set_after_attention``) sees the rank's heads only;
``evicting_attention`` gathers what a policy needs across the TP group.
Registered with vLLM by ``plugin.register`` as the lazy string
``"maskkv_vllm.vllm_adapter.model:LLaDAForDiffusionLM"``.

Limits: no pipeline parallelism, no quantization, KV heads must split evenly
over the ranks (no replicated KV heads); under plain ``LLM.generate`` vLLM
decodes autoregressively, which is not LLaDA's reverse process (the denoising
loop belongs to our scheduler and runner).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models import llada_config
from maskkv_vllm.models.llada import LLaDAModel, RMSNorm
from maskkv_vllm.models.rope import apply_rope, rope_cos_sin, rope_inv_freq

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


def checkpoint_shapes(config: llada_config.LLaDAConfig) -> dict[str, torch.Size]:
    """Every tensor an official LLaDA checkpoint holds, with its full shape.

    Read off our plain ``LLaDAModel`` (whose ``state_dict`` keys are the
    official names), built on the meta device so nothing is allocated.
    """
    with torch.device("meta"):
        reference = LLaDAModel(config)
    return {name: t.shape for name, t in reference.state_dict().items()}


def param_for_checkpoint(name: str) -> tuple[str, str | int | None]:
    """Our parameter name and shard id for one official checkpoint tensor.

    Example: ``"model.transformer.blocks.0.k_proj.weight"`` ->
    ``("model.transformer.blocks.0.qkv_proj.weight", "k")``; names of unfused
    modules map to themselves with shard None.
    """
    *path, module, leaf = name.split(".")
    if module not in FUSED_PARAMS or not path:
        return name, None
    fused, shard = FUSED_PARAMS[module]
    return ".".join([*path, fused, leaf]), shard


class _VllmAttention:
    """Runs one layer's post-RoPE q/k/v through vLLM's attention layer.

    vLLM's layers take flat ``(num_tokens, heads * head_dim)`` tensors of the
    whole scheduled batch. Which tokens see which keys (per-request boundaries,
    paged KV, causality) is decided by the attention metadata vLLM sets for
    the step.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.after_attention: Callable[..., torch.Tensor] | None = None
        """Set by the MaskKV runner for one step (``evicting_attention``)."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q: (1, Hq, T, d), k/v: (1, Hkv, T, d) of this rank -> (T, Hq * d)."""
        out = self.layers[layer](_flat(q), _flat(k), _flat(v))  # (T, Hq * d)
        if self.after_attention is not None:
            out = self.after_attention(layer, self.layers[layer], q, k, v, out)
        return out


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(1, H, T, d) -> (T, H * d)."""
    _, h, t, d = x.shape
    return x[0].transpose(0, 1).reshape(t, h * d)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(T, H * d) -> (1, H, T, d)."""
    t = x.shape[0]
    return x.view(t, num_heads, -1).transpose(0, 1)[None]


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
        from vllm.model_executor.layers.attention.prefill_prefix_lm_attention import (  # noqa: E501
            PrefillPrefixLMAttention,
        )
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
        self.q_size, self.kv_size = (
            self.num_heads * c.head_dim,
            self.num_kv_heads * c.head_dim,
        )
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
        # An attribute of the block, so the module path equals the layer name
        # vLLM binds the KV cache to.
        self.attn = PrefillPrefixLMAttention(
            num_heads=self.num_heads,
            head_size=c.head_dim,
            scale=c.head_dim**-0.5,
            num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            prefix=f"{prefix}.attn",
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: _VllmAttention,
    ) -> torch.Tensor:
        """x: (T, D) replicated on every rank; cos/sin: (1, 1, T, d) -> (T, D)."""
        qkv = self.qkv_proj(self.attn_norm(x))  # (T, (Hq + 2 Hkv) * d / N)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rope(_heads(q, self.num_heads), cos, sin)  # (1, Hq/N, T, d)
        k = apply_rope(_heads(k, self.num_kv_heads), cos, sin)
        o = attn(self.layer, q, k, _heads(v, self.num_kv_heads))  # (T, Hq/N * d)
        x = x + self.attn_out(o)  # all-reduced over the ranks
        gate, up = self.gate_up_proj(self.ff_norm(x)).chunk(2, dim=-1)
        return x + self.ff_out(F.silu(gate) * up)


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


class LLaDAForDiffusionLM(nn.Module):
    """LLaDA mask predictor in vLLM's model interface, tensor parallel.

    Same forward pass as ``maskkv_vllm.models.llada.LLaDAModel`` (the
    oracle), with the linear layers split over the TP ranks.

    Args:
        vllm_config: the engine's config; ``model_config.hf_config`` is LLaDA's.
        prefix: name prefix of this module inside vLLM (usually "").
    """

    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["ff_proj", "up_proj"],
    }

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        from vllm.model_executor.layers.logits_processor import LogitsProcessor

        super().__init__()
        config = llada_config_from_hf(vllm_config.model_config.hf_config)
        _check_parallel(vllm_config, config)
        self.config = config
        self.model = _Model(config, vllm_config, _join(prefix, "model"))
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self._vllm_attention = _VllmAttention([b.attn for b in self.blocks])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def set_after_attention(self, hook: Callable[..., torch.Tensor] | None) -> None:
        """Install (or clear, with None) a per-layer hook for the next forwards.

        ``hook(layer, attn_layer, q, k, v, out) -> out`` runs after vLLM's
        attention of each layer, on this rank's heads: q (1, Hq/N, T, d),
        k/v (1, Hkv/N, T, d), ``out`` the flat (T, Hq/N * d) result.
        """
        self._vllm_attention.after_attention = hook

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids -> (T, d_model) embeddings (LLaDA does not scale them)."""
        return self.model.transformer.wte(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """All blocks over the scheduled tokens of every request.

        Args:
            input_ids: (T,) token ids of every scheduled request, concatenated.
            positions: (T,) absolute position of each token in its request.
            intermediate_tensors: pipeline-parallel input; unsupported.
            inputs_embeds: prompt embeddings; unsupported.

        Returns:
            (T, d_model) hidden states before the final norm (same on every rank).
        """
        if intermediate_tensors is not None or inputs_embeds is not None:
            raise NotImplementedError(
                "LLaDAForDiffusionLM takes token ids only (no pipeline parallelism, "
                "no prompt embeddings)"
            )
        x = self.embed_input_ids(input_ids)
        # Built per call in fp32, as in LLaDAModel: a buffer would be cast.
        inv_freq = rope_inv_freq(self.config.head_dim, self.config.rope_theta, x.device)
        cos, sin = rope_cos_sin(positions[None], inv_freq)  # (1, 1, T, d)
        for block in self.blocks:
            x = block(x, cos, sin, self._vllm_attention)
        return x

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, d_model) hidden states -> fp32 (N, vocab_size) logits on every rank.

        The vocabulary shards are all-gathered (vLLM's default on every
        platform but those that gather to rank 0 only), so each rank's
        sampler sees the same logits and keeps the same canvas.
        """
        t = self.model.transformer
        head = t.lm_head
        bias = getattr(head, "bias", None) if self.config.include_bias else None
        logits = self.logits_processor(head, t.ln_f(hidden_states), bias)
        return logits.float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load official LLaDA tensors, each rank keeping its shard; strict.

        Args:
            weights: ``(name, tensor)`` pairs under the official names, e.g.
                ``("model.transformer.blocks.0.q_proj.weight", (D, D) tensor)``;
                full (unsharded) tensors.

        Returns:
            Our parameter names loaded (vLLM checks that every parameter is
            among them).

        Raises:
            ValueError: an unknown name, a name given twice, or a shape mismatch.
        """
        from vllm.model_executor.model_loader.weight_utils import (
            default_weight_loader,
        )

        expected = checkpoint_shapes(self.config)
        params = dict(self.named_parameters())
        seen: set[str] = set()
        loaded: set[str] = set()
        for name, tensor in weights:
            _check_tensor(name, tensor, expected, seen)
            target, shard = param_for_checkpoint(name)
            param = params[target]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(target)
        return loaded


def _check_tensor(
    name: str,
    tensor: torch.Tensor,
    expected: dict[str, torch.Size],
    seen: set[str],
) -> None:
    """Refuse an unknown, repeated or mis-shaped checkpoint tensor by name."""
    if name not in expected:
        raise ValueError(f"unexpected tensor {name} for LLaDA")
    if name in seen:
        raise ValueError(f"tensor {name} appears twice")
    if tensor.shape != expected[name]:
        raise ValueError(
            f"tensor {name} has shape {tuple(tensor.shape)}, "
            f"expected {tuple(expected[name])}"
        )
    seen.add(name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_tensor_parallel(config: llada_config.LLaDAConfig, tp: int) -> None:
    """Refuse a TP size that does not split LLaDA's heads and MLP evenly.

    KV heads must split too (no replication): MaskKV gathers per-KV-head
    statistics over the ranks and would count a replicated head twice.

    Raises:
        ValueError: naming the size that does not divide.
    """
    sizes = {
        "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads,
        "mlp_hidden_size": config.mlp_hidden_size,
    }
    for field, size in sizes.items():
        if size % tp:
            raise ValueError(
                f"tensor_parallel_size={tp} does not divide LLaDA's {field}={size}"
            )


def _check_parallel(vllm_config: VllmConfig, config: llada_config.LLaDAConfig) -> None:
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size != 1:
        raise NotImplementedError(
            f"LLaDAForDiffusionLM has no pipeline parallelism "
            f"(pipeline_parallel_size={parallel.pipeline_parallel_size})"
        )
    if vllm_config.quant_config is not None:
        raise NotImplementedError(
            f"LLaDAForDiffusionLM loads unquantized checkpoints only "
            f"(quantization={vllm_config.model_config.quantization!r})"
        )
    check_tensor_parallel(config, parallel.tensor_parallel_size)
