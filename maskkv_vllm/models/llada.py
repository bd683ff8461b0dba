"""LLaDA in plain PyTorch, with module names that match the official checkpoints.

``state_dict()`` keys are exactly the Hugging Face tensor names
(``model.transformer.blocks.N.q_proj.weight`` ...), so loading is a strict dict match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models.attention import Attention
from maskkv_vllm.models.blocks import run_blocks
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.rope import apply_rope


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back before the weight (as OLMo/LLaDA do)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class LLaDABlock(nn.Module):
    """One pre-norm block: bidirectional attention then SwiGLU."""

    def __init__(self, config: LLaDAConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = (
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
        )
        kv_dim = c.n_kv_heads * c.head_dim
        bias, qkv_bias = c.include_bias, c.include_bias or c.include_qkv_bias
        self.attn_norm = RMSNorm(c.d_model, c.rms_norm_eps)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(c.d_model, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(c.d_model, kv_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(c.d_model, c.d_model, bias=bias)
        self.ff_norm = RMSNorm(c.d_model, c.rms_norm_eps)
        # Upstream naming trap: ff_proj is the gate, ff_out the down projection.
        self.ff_proj = nn.Linear(c.d_model, c.mlp_hidden_size, bias=bias)
        self.up_proj = nn.Linear(c.d_model, c.mlp_hidden_size, bias=bias)
        self.ff_out = nn.Linear(c.mlp_hidden_size, c.d_model, bias=bias)

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-RoPE q (B, Hq, T, d) and k, v (B, Hkv, T, d) from x (B, T, D)."""
        b, t, _ = x.shape
        a = self.attn_norm(x)
        q = self.q_proj(a).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(a).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(a).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Values alone, (B, Hkv, T, d) from x (B, T, D) (the adaptive canvas
        cache compares every row's before recomputing a few)."""
        b, t, _ = x.shape
        v = self.v_proj(self.attn_norm(x))
        return v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)

    def attn_proj(self, o: torch.Tensor) -> torch.Tensor:
        """Attention output (B, Hq, T, d) -> its residual update (B, T, D)."""
        b, _, t, _ = o.shape
        return self.attn_out(o.transpose(1, 2).reshape(b, t, -1))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The SwiGLU's residual update of x (B, T, D)."""
        f = self.ff_norm(x)
        return self.ff_out(F.silu(self.ff_proj(f)) * self.up_proj(f))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: Attention
    ) -> torch.Tensor:
        q, k, v = self.qkv(x, cos, sin)
        x = x + self.attn_proj(attn(self.layer, q, k, v))
        return x + self.ffn(x)


class _Transformer(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.embedding_size, config.d_model)
        self.blocks = nn.ModuleList(
            LLaDABlock(config, i) for i in range(config.n_layers)
        )
        self.ln_f = RMSNorm(config.d_model, config.rms_norm_eps)
        if not config.weight_tying:
            self.ff_out = nn.Linear(
                config.d_model, config.embedding_size, bias=config.include_bias
            )


class _Model(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.transformer = _Transformer(config)


class LLaDAModel(nn.Module):
    """LLaDA mask predictor.

    Args:
        config: the architecture.
        rope_scaling: NTK factor λ; the RoPE base becomes ``rope_theta * λ``
            (LongLLaDA uses λ = 4 for 8K prompts).
    """

    def __init__(self, config: LLaDAConfig, rope_scaling: float = 1.0) -> None:
        super().__init__()
        if not rope_scaling > 0:
            raise ValueError(f"rope_scaling={rope_scaling} must be positive")
        self.config = config
        self.rope_scaling = float(rope_scaling)
        self.model = _Model(config)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: Attention | None = None,
    ) -> torch.Tensor:
        """Run all blocks.

        Args:
            input_ids: (B, T) token ids.
            positions: (B, T) absolute positions (prompt 0..M-1, canvas M..M+L-1).
            attn: attention callable; default is dense attention over all T tokens.

        Returns:
            (B, T, d_model) hidden states before the final norm.
        """
        x = self.model.transformer.wte(input_ids)
        theta = self.config.rope_theta * self.rope_scaling
        return run_blocks(self.blocks, x, positions, self.config.head_dim, theta, attn)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: (..., d_model) -> fp32 (..., embedding_size)."""
        t = self.model.transformer
        h = t.ln_f(hidden)
        head = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        bias = None if self.config.weight_tying else t.ff_out.bias
        return F.linear(h, head, bias).float()
