"""LLaDA as a vLLM model: our torch blocks, vLLM's paged, non-causal attention.

``LLaDAForDiffusionLM`` reuses ``maskkv_vllm.models.llada`` unchanged (same
module tree, so the official tensor names load as they are) and swaps only the
attention callable: each layer's post-RoPE q/k/v go to a vLLM
``PrefillPrefixLMAttention`` layer, a decoder attention that always runs
non-causally and still writes the paged KV cache. Registered with vLLM by
``plugin.register`` as the lazy string ``"maskkv_vllm.vllm_adapter.model:
LLaDAForDiffusionLM"``.

Phase 1 limits: one rank (plain ``nn.Linear``, no tensor or pipeline
parallelism); under plain ``LLM.generate`` vLLM decodes autoregressively
(each new token attends to the cached prompt), which is not LLaDA's reverse
process. The denoising loop belongs to a custom scheduler and runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maskkv_vllm.models import llada_config
from maskkv_vllm.models.llada import LLaDAModel

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)


def llada_config_from_hf(hf_config: Any) -> llada_config.LLaDAConfig:
    """Our validated ``LLaDAConfig`` from the transformers config vLLM parsed.

    Works for ``hf_config.LLaDAConfig`` and for a remote-code config alike,
    since both serialise LLaDA's own field names.
    """
    return llada_config.LLaDAConfig.from_dict(hf_config.to_dict())


class _VllmAttention:
    """Adapts vLLM attention layers to our ``Attention`` protocol.

    vLLM's layers take flat ``(num_tokens, heads * head_dim)`` tensors of the
    whole scheduled batch; our blocks pass ``(1, heads, num_tokens, head_dim)``.
    Which tokens see which keys (per-request boundaries, paged KV, causality) is
    decided by the attention metadata vLLM sets for the step.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.after_attention: Callable[..., torch.Tensor] | None = None
        """Set by the MaskKV runner for one step (``evicting_attention``)."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        _, n_heads, t, head_dim = q.shape
        out = self.layers[layer](_flat(q), _flat(k), _flat(v))  # (T, Hq * d)
        if self.after_attention is not None:
            out = self.after_attention(layer, self.layers[layer], q, k, v, out)
        return out.view(1, t, n_heads, head_dim).transpose(1, 2)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(1, H, T, d) -> (T, H * d)."""
    _, h, t, d = x.shape
    return x[0].transpose(0, 1).reshape(t, h * d)


class LLaDAForDiffusionLM(LLaDAModel):
    """LLaDA mask predictor in vLLM's model interface.

    A ``LLaDAModel`` (same parameters, names and forward pass) whose attention
    runs through vLLM; only the signatures vLLM calls are added.

    Args:
        vllm_config: the engine's config; ``model_config.hf_config`` is LLaDA's.
        prefix: name prefix of this module inside vLLM (usually "").
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        from vllm.model_executor.layers.attention.prefill_prefix_lm_attention import (  # noqa: E501
            PrefillPrefixLMAttention,
        )

        _require_single_rank(vllm_config)
        super().__init__(llada_config_from_hf(vllm_config.model_config.hf_config))
        c = self.config
        attn_layers = []
        for i, block in enumerate(self.blocks):
            # An attribute of the block, so the module path equals the layer name
            # vLLM binds the KV cache to.
            block.attn = PrefillPrefixLMAttention(
                num_heads=c.n_heads,
                head_size=c.head_dim,
                scale=c.head_dim**-0.5,
                num_kv_heads=c.n_kv_heads,
                cache_config=vllm_config.cache_config,
                prefix=_join(prefix, f"model.transformer.blocks.{i}.attn"),
            )
            attn_layers.append(block.attn)
        self._vllm_attention = _VllmAttention(attn_layers)

    def set_after_attention(self, hook: Callable[..., torch.Tensor] | None) -> None:
        """Install (or clear, with None) a per-layer hook for the next forwards.

        ``hook(layer, attn_layer, q, k, v, out) -> out`` runs after vLLM's
        attention of each layer; ``out`` is the flat (T, Hq * d) result.
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
            (T, d_model) hidden states before the final norm.
        """
        if intermediate_tensors is not None or inputs_embeds is not None:
            raise NotImplementedError(
                "LLaDAForDiffusionLM takes token ids only (no pipeline parallelism, "
                "no prompt embeddings)"
            )
        hidden = super().forward(input_ids[None], positions[None], self._vllm_attention)
        return hidden[0]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(N, d_model) hidden states -> fp32 (N, vocab_size) logits."""
        return self.logits(hidden_states)[..., : self.config.vocab_size]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors under their official names; strict.

        Args:
            weights: ``(name, tensor)`` pairs, e.g.
                ``("model.transformer.blocks.0.q_proj.weight", (D, D) tensor)``.

        Returns:
            The names loaded (vLLM checks that every parameter is among them).

        Raises:
            ValueError: an unknown name, a name given twice, or a shape mismatch.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            param = params.get(name)
            if param is None:
                raise ValueError(f"unexpected tensor {name} for LLaDA")
            if name in loaded:
                raise ValueError(f"tensor {name} appears twice")
            if param.shape != tensor.shape:
                raise ValueError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
            param.data.copy_(tensor)
            loaded.add(name)
        return loaded


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _require_single_rank(vllm_config: VllmConfig) -> None:
    parallel = vllm_config.parallel_config
    tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
    if tp != 1 or pp != 1:
        raise NotImplementedError(
            f"LLaDAForDiffusionLM runs on one rank only "
            f"(tensor_parallel_size={tp}, pipeline_parallel_size={pp})"
        )
