"""Dream in plain PyTorch: a Qwen2-style decoder run bidirectionally.

RMSNorm, grouped-query attention with biases on q/k/v (not on o), RoPE, SwiGLU.
Module names match the Hugging Face checkpoints (``model.layers.N.self_attn.q_proj``
...), so ``state_dict()`` keys are the tensor names and loading is a strict match.
The forward pass is LLaDA's protocol: explicit positions, post-RoPE q/k/v handed
to a pluggable attention callable, no causal mask anywhere.

Dream's logits are shifted (``DreamConfig.shifted_logits``): ``logits()`` returns
the output at each position unshifted, and ``shift_logits`` maps them to the
token each position predicts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models.attention import Attention
from maskkv_vllm.models.blocks import run_blocks
from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.llada import RMSNorm
from maskkv_vllm.models.rope import apply_rope


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream's shift: the token at position i is read from output i - 1.

    Args:
        logits: (B, T, V) outputs of ``DreamModel.logits`` over whole rows.

    Returns:
        (B, T, V): row t is input row t - 1; row 0 stays row 0.
    """
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class DreamSelfAttention(nn.Module):
    """q/k/v projections with biases and the bias-free output projection."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        c = config
        kv_dim = c.n_kv_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=True)
        self.k_proj = nn.Linear(c.hidden_size, kv_dim, bias=True)
        self.v_proj = nn.Linear(c.hidden_size, kv_dim, bias=True)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)


class DreamMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        d, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, inner, bias=False)
        self.up_proj = nn.Linear(d, inner, bias=False)
        self.down_proj = nn.Linear(inner, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., hidden_size) -> (..., hidden_size)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nn.Module):
    """One pre-norm decoder layer: bidirectional attention then SwiGLU."""

    def __init__(self, config: DreamConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamSelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-RoPE q (B, Hq, T, d) and k, v (B, Hkv, T, d) from x (B, T, D).

        cos, sin: (B, 1, T, d) fp32 tables of the tokens' absolute positions.
        """
        b, t, _ = x.shape
        a, sa = self.input_layernorm(x), self.self_attn
        q = sa.q_proj(a).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = sa.k_proj(a).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = sa.v_proj(a).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    @property
    def attn_out(self) -> nn.Linear:
        """The attention output projection, under LLaDA's name (``maskkv profile``
        hooks it on either model)."""
        return self.self_attn.o_proj

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Values alone, (B, Hkv, T, d) from x (B, T, D) (the adaptive canvas
        cache compares every row's before recomputing a few)."""
        b, t, _ = x.shape
        v = self.self_attn.v_proj(self.input_layernorm(x))
        return v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)

    def attn_proj(self, o: torch.Tensor) -> torch.Tensor:
        """Attention output (B, Hq, T, d) -> its residual update (B, T, D)."""
        b, _, t, _ = o.shape
        return self.self_attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP's residual update of x (B, T, D)."""
        return self.mlp(self.post_attention_layernorm(x))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: Attention
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``attn`` sees this layer's post-RoPE q/k/v."""
        q, k, v = self.qkv(x, cos, sin)
        x = x + self.attn_proj(attn(self.layer, q, k, v))
        return x + self.ffn(x)


class _Decoder(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DreamLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(nn.Module):
    """Dream mask predictor (Dream-v0-Instruct-7B's architecture).

    Args:
        config: the architecture.
        rope_scaling: NTK factor λ; the RoPE base becomes ``rope_theta * λ``.
    """

    def __init__(self, config: DreamConfig, rope_scaling: float = 1.0) -> None:
        super().__init__()
        if not rope_scaling > 0:
            raise ValueError(f"rope_scaling={rope_scaling} must be positive")
        self.config = config
        self.rope_scaling = float(rope_scaling)
        self.model = _Decoder(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: Attention | None = None,
    ) -> torch.Tensor:
        """Run all layers.

        Args:
            input_ids: (B, T) token ids.
            positions: (B, T) absolute positions (prompt 0..M-1, canvas M..M+L-1).
            attn: attention callable; default is dense attention over all T tokens.

        Returns:
            (B, T, hidden_size) hidden states before the final norm.
        """
        x = self.model.embed_tokens(input_ids)
        theta = self.config.rope_theta * self.rope_scaling
        return run_blocks(self.blocks, x, positions, self.config.head_dim, theta, attn)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head, unshifted: (..., hidden_size) -> fp32 (..., V).

        Row i is Dream's prediction for the token at i + 1 (``shifted_logits``).
        """
        head = (
            self.model.embed_tokens.weight
            if self.config.tie_word_embeddings
            else self.lm_head.weight
        )
        return F.linear(self.model.norm(hidden), head).float()

    def token_logits(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: Attention | None = None,
    ) -> torch.Tensor:
        """A full forward's logits for the token at each position (shift applied).

        Args:
            input_ids, positions: (B, T), as ``forward``.
            attn: as ``forward``.

        Returns:
            (B, T, V) fp32: row t predicts token t (read from output t - 1).
        """
        return shift_logits(self.logits(self(input_ids, positions, attn)))
