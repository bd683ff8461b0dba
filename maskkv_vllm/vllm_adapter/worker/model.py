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
post-RoPE q/k/v (our RoPE at explicit positions) go to the step attention the
runner installs (``set_step_attention``; ``diffusion_attention``), which
reads and writes head-pages of the one vLLM attention layer ``model.kv_pool``:
that layer is never run, it makes vLLM allocate and account the page pool of
all D layers (``kv_spec.DiffusionKVSpec``: a block is one layer's KV heads).
Registered with vLLM by ``plugin.register`` as the lazy string
``"maskkv_vllm.vllm_adapter.worker.model:LLaDAForDiffusionLM"``.

Limits: no pipeline parallelism, no quantization, KV heads must split evenly
over the ranks (no replicated KV heads); the engine must run our scheduler
(``MaskKVDiffusionScheduler``, LLaDA's denoising loop): vLLM's autoregressive
scheduler is refused at construction, since LLaDA is not autoregressive.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models import llada_config
from maskkv_vllm.models.attention import dense_attention
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


class _StepAttention:
    """Hands one layer's post-RoPE q/k/v to the step attention the runner set.

    Without one (vLLM's dummy and profiling runs, which carry no requests) the
    whole flat batch attends densely as one sequence.
    """

    def __init__(self) -> None:
        self.step: Callable[..., torch.Tensor] | None = None
        """``DiffusionAttention`` of the current step, set by the runner."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q: (1, Hq, T, d), k/v: (1, Hkv, T, d) of this rank -> (T, Hq * d)."""
        if self.step is not None:
            return self.step(layer, q, k, v)
        return _flat(dense_attention(q, k, v, None))


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

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: _StepAttention,
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
        tp = vllm_config.parallel_config.tensor_parallel_size
        # A list so that the layer name holds the one integer vLLM expects.
        self.kv_pool = nn.ModuleList(
            [_pool_layer(config, tp, vllm_config, f"{prefix}.kv_pool.0")]
        )


def _pool_layer(
    config: llada_config.LLaDAConfig, tp: int, vllm_config: VllmConfig, prefix: str
) -> nn.Module:
    """The one vLLM attention layer whose KV cache is the page pool of all layers.

    A non-causal decoder layer (so vLLM disables chunked prefill and prefix
    caching) whose spec says one block is this rank's KV heads of ONE layer
    and a request may hold D layers' worth (``DiffusionKVSpec``).
    """
    from vllm.model_executor.layers.attention.prefill_prefix_lm_attention import (
        PrefillPrefixLMAttention,
    )

    from maskkv_vllm.vllm_adapter.kv_spec import DiffusionKVSpec

    class PoolAttention(PrefillPrefixLMAttention):
        def get_kv_cache_spec(self, vllm_config):
            spec = super().get_kv_cache_spec(vllm_config)
            fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
            fields = {k: v for k, v in fields.items() if k != "num_model_layers"}
            return DiffusionKVSpec(**fields, num_model_layers=config.n_layers)

    return PoolAttention(
        num_heads=config.n_heads // tp,
        head_size=config.head_dim,
        scale=config.head_dim**-0.5,
        num_kv_heads=config.n_kv_heads // tp,
        cache_config=vllm_config.cache_config,
        prefix=prefix,
    )


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
        _check_scheduler(vllm_config)
        self.config = config
        self.num_local_kv_heads = (
            config.n_kv_heads // vllm_config.parallel_config.tensor_parallel_size
        )
        self.model = _Model(config, vllm_config, _join(prefix, "model"))
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self._attention = _StepAttention()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    @property
    def kv_pool(self) -> nn.Module:
        """The vLLM attention layer holding the KV page pool (``kv_cache``)."""
        return self.model.kv_pool[0]

    def set_step_attention(self, step: Callable[..., torch.Tensor] | None) -> None:
        """Install (or clear, with None) the attention of the next forwards.

        ``step(layer, q, k, v) -> out`` gets this rank's post-RoPE heads, q
        (1, Hq/N, T, d) and k/v (1, Hkv/N, T, d), and returns (T, Hq/N * d).
        """
        self._attention.step = step

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
        step = self._attention.step
        if step is not None and hasattr(step, "positions"):
            positions = step.positions(positions)
        # Built per call in fp32, as in LLaDAModel: a buffer would be cast.
        inv_freq = rope_inv_freq(self.config.head_dim, self.config.rope_theta, x.device)
        cos, sin = rope_cos_sin(positions[None], inv_freq)  # (1, 1, T, d)
        for block in self.blocks:
            x = block(x, cos, sin, self._attention)
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


def _check_scheduler(vllm_config: VllmConfig) -> None:
    """Refuse an engine that would decode LLaDA autoregressively.

    Raises:
        ValueError: ``scheduler_cls`` is not ``MaskKVDiffusionScheduler`` (or a
            subclass), naming the one given.
    """
    from maskkv_vllm.vllm_adapter.core.scheduler import SCHEDULER_CLS

    given = vllm_config.scheduler_config.scheduler_cls
    if isinstance(given, str):
        ok = given == SCHEDULER_CLS
    else:
        from maskkv_vllm.vllm_adapter.core.scheduler import MaskKVDiffusionScheduler

        ok = isinstance(given, type) and issubclass(given, MaskKVDiffusionScheduler)
    if not ok:
        raise ValueError(
            f"LLaDA is a diffusion model: scheduler_cls={given!r} would decode it "
            f"autoregressively; run it with scheduler_cls={SCHEDULER_CLS!r} (set "
            "by maskkv_vllm.vllm_adapter.entrypoints.api.make_llm and "
            "`maskkv vllm-serve`)"
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
