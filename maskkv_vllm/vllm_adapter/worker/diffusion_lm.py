"""What LLaDA and Dream share as vLLM models: forward, logits, loader, checks.

``DiffusionLMBase`` is a mask predictor in vLLM's model interface: the
checkpoint's module tree built from vLLM's tensor-parallel layers (by a
subclass: ``model.LLaDAForDiffusionLM``, ``dream_model.DreamForDiffusionLM``),
RoPE at explicit positions, and post-RoPE q/k/v handed to the step attention
the runner installs (``set_step_attention``; ``diffusion_attention``), which
reads and writes head-pages of the one vLLM attention layer ``model.kv_pool``:
that layer is never run, it makes vLLM allocate and account the page pool of
all D layers (``kv_spec.DiffusionKVSpec``: a block is one layer's KV heads).

Limits: no pipeline parallelism, no quantization, KV heads must split evenly
over the ranks (no replicated KV heads); the engine must run our scheduler
(``MaskKVDiffusionScheduler``, the denoising loop): vLLM's autoregressive
scheduler is refused at construction, since a diffusion LM is not autoregressive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models.attention import dense_attention
from maskkv_vllm.models.rope import apply_rope, rope_cos_sin, rope_inv_freq

if TYPE_CHECKING:
    from vllm.config import VllmConfig


class StepAttention:
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
        return flat_heads(dense_attention(q, k, v, None))


def flat_heads(x: torch.Tensor) -> torch.Tensor:
    """(1, H, T, d) -> (T, H * d)."""
    _, h, t, d = x.shape
    return x[0].transpose(0, 1).reshape(t, h * d)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(T, H * d) -> (1, H, T, d)."""
    t = x.shape[0]
    return x.view(t, num_heads, -1).transpose(0, 1)[None]


class PaddedLayer:
    """A vLLM layer's pieces over padded rows (B, T, D), as the plain models'
    layers offer them (``AdaptiveCanvasAttention.run_layer`` takes either).

    ``value`` multiplies by the V rows of the fused QKV weight alone where the
    layer keeps that weight as a plain (out, in) matrix (CUDA; one rank: the
    adaptive cache runs without tensor parallelism); where a platform has
    repacked it (vLLM's CPU GEMMs may), by the whole projection.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block, self.layer = block, block.layer

    def _fused(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t, dm = x.shape
        hq, hkv = self.block.num_heads, self.block.num_kv_heads
        qkv = self.block.fused_qkv(x.reshape(b * t, dm)).view(b, t, -1)
        d = qkv.shape[-1] // (hq + 2 * hkv)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        return tuple(
            y.reshape(b, t, h, d).transpose(1, 2)
            for y, h in ((q, hq), (k, hkv), (v, hkv))
        )

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Post-RoPE q (B, Hq, T, d), k, v (B, Hkv, T, d); cos/sin (B, 1, T, d)."""
        q, k, v = self._fused(x)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, T, d) values of x (B, T, D)."""
        b, t, dm = x.shape
        hq, hkv = self.block.num_heads, self.block.num_kv_heads
        proj = self.block.qkv_proj
        w = getattr(proj, "weight", None)
        if w is None or w.dim() != 2 or w.shape[1] != dm or w.shape[0] % (hq + 2 * hkv):
            return self._fused(x)[2]
        d = w.shape[0] // (hq + 2 * hkv)
        bias = getattr(proj, "bias", None)
        rows = slice((hq + hkv) * d, None)
        v = F.linear(
            self.block.norm_in(x.reshape(b * t, dm)), w[rows],
            None if bias is None else bias[rows],
        )  # fmt: skip
        return v.view(b, t, hkv, d).transpose(1, 2)

    def attn_proj(self, o: torch.Tensor) -> torch.Tensor:
        """(B, Hq, T, d) attention output -> (B, T, D) residual update."""
        b, h, t, d = o.shape
        return self.block.out_proj(o.transpose(1, 2).reshape(b * t, h * d)).view(
            b, t, -1
        )

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> the MLP's residual update (B, T, D)."""
        b, t, dm = x.shape
        return self.block.ffn(x.reshape(b * t, dm)).view(b, t, dm)


def fused_param_for(
    name: str, fused: dict[str, tuple[str, str | int]]
) -> tuple[str, str | int | None]:
    """Our parameter name and shard id for one checkpoint tensor.

    Args:
        name: e.g. ``"model.layers.0.self_attn.k_proj.bias"``.
        fused: checkpoint module -> (our fused module, shard id), e.g.
            ``{"k_proj": ("qkv_proj", "k")}``.

    Returns:
        e.g. ``("model.layers.0.self_attn.qkv_proj.bias", "k")``; names of
        unfused modules map to themselves with shard None.
    """
    *path, module, leaf = name.split(".")
    if module not in fused or not path:
        return name, None
    target, shard = fused[module]
    return ".".join([*path, target, leaf]), shard


def packed_modules(fused: dict[str, tuple[str, str | int]]) -> dict[str, list[str]]:
    """vLLM's ``packed_modules_mapping``: fused module -> checkpoint modules."""
    packed: dict[str, list[str]] = {}
    for module, (target, _) in fused.items():
        packed.setdefault(target, []).append(module)
    return packed


def meta_shapes(model_cls: type[nn.Module], config: Any) -> dict[str, torch.Size]:
    """Every tensor of the plain model's ``state_dict`` (the checkpoint's names),
    with its full shape, built on the meta device so nothing is allocated."""
    with torch.device("meta"):
        reference = model_cls(config)
    return {name: t.shape for name, t in reference.state_dict().items()}


def attend(
    layer: int,
    qkv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    rope: tuple[torch.Tensor, torch.Tensor],
    attn: StepAttention,
) -> torch.Tensor:
    """One layer's attention from its fused projection, this rank's heads.

    Args:
        qkv: (T, (Hq + 2 Hkv) * d / N), the ``QKVParallelLinear`` output.
        rope: cos, sin (1, 1, T, d) of the tokens' positions.

    Returns:
        (T, Hq/N * d), before the output projection.
    """
    d = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    q, k, v = qkv.split([num_heads * d, num_kv_heads * d, num_kv_heads * d], dim=-1)
    q = apply_rope(split_heads(q, num_heads), *rope)  # (1, Hq/N, T, d)
    k = apply_rope(split_heads(k, num_kv_heads), *rope)
    return attn(layer, q, k, split_heads(v, num_kv_heads))


def pool_layer(config: Any, tp: int, vllm_config: VllmConfig, prefix: str) -> nn.Module:
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


class DiffusionLMBase(nn.Module):
    """What every diffusion LM in vLLM's model interface shares (see module doc).

    A subclass builds ``self.model`` (the checkpoint's module tree plus
    ``kv_pool``) and says where its embedding, blocks, final norm and LM head
    are and how checkpoint tensors map to its parameters. The forward pass,
    the logits and the strict loader are the same for LLaDA and Dream.

    Args:
        vllm_config: the engine's config; ``read_config`` turns its
            ``hf_config`` into the validated architecture (``n_layers``,
            ``n_kv_heads``, ``head_dim``, ``rope_theta``, ``vocab_size``, ...).
        prefix: the module's name in vLLM's tree.
    """

    model_name = "a diffusion LM"
    """Named in errors."""
    reference_cls: type[nn.Module]
    """The plain torch model (the oracle), whose state_dict names the tensors."""
    fused_params: dict[str, tuple[str, str | int]]
    """Checkpoint module -> (our fused vLLM module, shard id for its loader)."""

    @staticmethod
    def read_config(hf_config: Any) -> Any:
        """The validated architecture from vLLM's ``hf_config``."""
        raise NotImplementedError

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        from vllm.model_executor.layers.logits_processor import LogitsProcessor

        super().__init__()
        config = self.read_config(vllm_config.model_config.hf_config)
        check_parallel(vllm_config, config, self.model_name)
        check_scheduler(vllm_config, self.model_name)
        self.config = config
        self.num_local_kv_heads = (
            config.n_kv_heads // vllm_config.parallel_config.tensor_parallel_size
        )
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self._attention = StepAttention()

    # -- what a subclass provides ---------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids -> (T, d_model) embeddings."""
        raise NotImplementedError

    def final_norm_and_head(self) -> tuple[nn.Module, nn.Module, Any]:
        """(final norm, LM head module, LM head bias or None)."""
        raise NotImplementedError

    def checkpoint_shapes(self) -> dict[str, torch.Size]:
        """Every tensor the checkpoint holds, by name, with its full shape."""
        return meta_shapes(self.reference_cls, self.config)

    def param_for_checkpoint(self, name: str) -> tuple[str, str | int | None]:
        """Our parameter name and shard id for one checkpoint tensor."""
        return fused_param_for(name, self.fused_params)

    # -- shared ---------------------------------------------------------------

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
                f"{type(self).__name__} takes token ids only (no pipeline "
                "parallelism, no prompt embeddings)"
            )
        x = self.embed_input_ids(input_ids)
        step = self._attention.step
        if step is not None and hasattr(step, "positions"):
            positions = step.positions(positions)
        # Built per call in fp32, as in the plain models: a buffer would be cast.
        inv_freq = rope_inv_freq(self.config.head_dim, self.config.rope_theta, x.device)
        cos, sin = rope_cos_sin(positions[None], inv_freq)  # (1, 1, T, d)
        if getattr(step, "adaptive", None) is not None:
            return self._split_forward(x, cos, sin, step)
        for block in self.blocks:
            x = block(x, cos, sin, self._attention)
        return x

    def _split_forward(self, x, cos, sin, step) -> torch.Tensor:
        """A step with adaptive canvas rows (``SplitStep``): the other rows'
        tokens go through the blocks as usual, the adaptive rows, padded to
        (B, W, D), through ``AdaptiveCanvasAttention.run_layer``."""
        out = torch.empty_like(x)
        idx = step.plain_index
        if idx.numel():
            xp, cp, sp = x[idx], cos[:, :, idx], sin[:, :, idx]
            self._attention.step = step.plain
            try:
                for block in self.blocks:
                    xp = block(xp, cp, sp, self._attention)
            finally:
                self._attention.step = step
            out[idx] = xp
        cols = step.adaptive_columns  # (B, W) flat token ids
        xa = x[cols]
        ca, sa = cos[0, :, cols].transpose(0, 1), sin[0, :, cols].transpose(0, 1)
        for block in self.blocks:
            xa = step.adaptive.run_layer(PaddedLayer(block), xa, ca, sa)
        for i, n in enumerate(step.adaptive_tokens):
            out[cols[i, :n]] = xa[i, :n]
        return out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, d_model) hidden states -> fp32 (N, vocab_size) logits on every rank.

        Row i is the output at row i, unshifted (a shifted model's runner picks
        the rows before the slots it reads). The vocabulary shards are
        all-gathered (vLLM's default on every platform but those that gather
        to rank 0 only), so each rank's sampler sees the same logits and keeps
        the same canvas.
        """
        norm, head, bias = self.final_norm_and_head()
        return self.logits_processor(head, norm(hidden_states), bias).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the checkpoint's tensors, each rank keeping its shard; strict.

        Args:
            weights: ``(name, tensor)`` pairs under the checkpoint's names, e.g.
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

        expected = self.checkpoint_shapes()
        params = dict(self.named_parameters())
        seen: set[str] = set()
        loaded: set[str] = set()
        for name, tensor in weights:
            check_tensor(name, tensor, expected, seen, self.model_name)
            target, shard = self.param_for_checkpoint(name)
            param = params[target]
            loader = getattr(param, "weight_loader", default_weight_loader)
            if shard is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard)
            loaded.add(target)
        return loaded


def check_tensor(
    name: str,
    tensor: torch.Tensor,
    expected: dict[str, torch.Size],
    seen: set[str],
    model_name: str = "LLaDA",
) -> None:
    """Refuse an unknown, repeated or mis-shaped checkpoint tensor by name."""
    if name not in expected:
        raise ValueError(f"unexpected tensor {name} for {model_name}")
    if name in seen:
        raise ValueError(f"tensor {name} appears twice")
    if tensor.shape != expected[name]:
        raise ValueError(
            f"tensor {name} has shape {tuple(tensor.shape)}, "
            f"expected {tuple(expected[name])}"
        )
    seen.add(name)


def join_prefix(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_tensor_parallel(config: Any, tp: int, model_name: str = "LLaDA") -> None:
    """Refuse a TP size that does not split the heads and MLP evenly.

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
                f"tensor_parallel_size={tp} does not divide {model_name}'s "
                f"{field}={size}"
            )


def check_scheduler(vllm_config: VllmConfig, model_name: str = "LLaDA") -> None:
    """Refuse an engine that would decode a diffusion LM autoregressively.

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
            f"{model_name} is a diffusion model: scheduler_cls={given!r} would decode "
            f"it autoregressively; run it with scheduler_cls={SCHEDULER_CLS!r} (set "
            "by maskkv_vllm.vllm_adapter.entrypoints.api.make_llm and "
            "`maskkv vllm-serve`)"
        )


def check_parallel(
    vllm_config: VllmConfig, config: Any, model_name: str = "LLaDA"
) -> None:
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size != 1:
        raise NotImplementedError(
            f"{model_name} in vLLM has no pipeline parallelism "
            f"(pipeline_parallel_size={parallel.pipeline_parallel_size})"
        )
    if vllm_config.quant_config is not None:
        raise NotImplementedError(
            f"{model_name} in vLLM loads unquantized checkpoints only "
            f"(quantization={vllm_config.model_config.quantization!r})"
        )
    check_tensor_parallel(config, parallel.tensor_parallel_size, model_name)
