"""A BERT-family masked LM behind the same interface as ``LLaDAModel``.

Trained bidirectional masked LMs (BERT with an MLM head) are mask predictors just
like LLaDA, so the diffusion sampler, the paged prompt cache and every eviction
policy run on them unchanged. The differences are all inside the model:

- absolute learned position embeddings (no RoPE): ``positions`` index the position
  table, so a key cached after a layer's projection is position-correct, as a
  post-RoPE LLaDA key is;
- token type 0 everywhere, post-LayerNorm blocks with biases, GELU MLP;
- the MLM head: dense + activation + LayerNorm, then the decoder (tied to the word
  embeddings in the checkpoints read here) plus an output bias.

Module names match Hugging Face ``BertForMaskedLM`` tensor names
(``bert.encoder.layer.N.attention.self.query.weight`` ...), so loading is a strict
dict match. ``transformers`` is not needed.

Tokenizers in ``tokenizers.py``, strict loading of the wheels' checkpoints in
``loader.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models.attention import Attention, DenseAttention

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class BertConfig:
    """The architecture plus the special ids, with ``LLaDAConfig``'s attribute names."""

    n_layers: int
    n_heads: int
    d_model: int
    mlp_hidden_size: int
    vocab_size: int
    mask_token_id: int
    eos_token_id: int
    """``[SEP]``: ends an answer, as EOS does for LLaDA."""
    pad_token_id: int
    cls_token_id: int
    max_sequence_length: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    suppress_token_ids: tuple[int, ...] = ()
    """Ids ``logits`` never proposes ([PAD], [CLS], [MASK], [UNK], [unusedN]):
    committing ``[MASK]`` would leave a slot masked forever."""

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_model", "mlp_hidden_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}"
            )
        ids = {
            "mask_token_id": self.mask_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "cls_token_id": self.cls_token_id,
        }
        for name, value in ids.items():
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside [0, {self.vocab_size})")
        if self.pad_token_id == self.mask_token_id:
            raise ValueError("pad_token_id must differ from mask_token_id")
        if self.mask_token_id not in self.suppress_token_ids:
            raise ValueError("suppress_token_ids must hold mask_token_id")

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embedding_size(self) -> int:
        return self.vocab_size


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.query = nn.Linear(c.d_model, c.d_model)
        self.key = nn.Linear(c.d_model, c.d_model)
        self.value = nn.Linear(c.d_model, c.d_model)


class _DenseNorm(nn.Module):
    """``dense`` then residual add and ``LayerNorm`` (post-LN)."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _AttentionBlock(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c.d_model, c.d_model, c.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.mlp_hidden_size)


class BertLayer(nn.Module):
    """One post-LN encoder layer; attention is delegated to the ``Attention``."""

    def __init__(self, config: BertConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.act = ACTIVATIONS[config.hidden_act]
        self.attention = _AttentionBlock(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNorm(
            config.mlp_hidden_size, config.d_model, config.layer_norm_eps
        )

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v (B, H, T, d) from x (B, T, D); positions are already in x."""
        b, t, _ = x.shape
        s = self.attention.self

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        return heads(s.query), heads(s.key), heads(s.value)

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x)
        o = attn(self.layer, q, k, v).transpose(1, 2).reshape(b, t, d)
        x = self.attention.output(o, x)
        return self.output(self.act(self.intermediate.dense(x)), x)


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.position_embeddings = nn.Embedding(c.max_sequence_length, c.d_model)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.d_model)
        self.LayerNorm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor):
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings.weight[0])


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c, i) for i in range(c.n_layers))


class _Bert(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)


class _Transform(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.d_model)
        self.LayerNorm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)


class _Predictions(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.transform = _Transform(c)
        self.decoder = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))


class _Cls(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.predictions = _Predictions(c)


class BertMaskedLM(nn.Module):
    """BERT mask predictor with ``LLaDAModel``'s call signature.

    ``model(input_ids, positions, attn)`` returns the last encoder layer's output
    (B, T, d_model); ``model.logits(hidden)`` applies the MLM head.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.rope_scaling = 1.0  # no RoPE; kept for callers that read it
        self.act = ACTIVATIONS[config.hidden_act]
        self.bert = _Bert(config)
        self.cls = _Cls(config)
        suppress = torch.zeros(config.vocab_size, dtype=torch.bool)
        suppress[list(config.suppress_token_ids)] = True
        self.register_buffer("_suppress", suppress, persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: Attention | None = None,
    ) -> torch.Tensor:
        """Run all layers.

        Args:
            input_ids: (B, T) token ids.
            positions: (B, T) absolute positions (prompt 0..M-1, canvas M..M+L-1),
                indices into the position embeddings (< max_sequence_length).
            attn: attention callable; default is dense attention over all T tokens.
        """
        attn = attn if attn is not None else DenseAttention()
        x = self.bert.embeddings(input_ids, positions)
        for block in self.blocks:
            x = block(x, attn)
        return x

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head as trained: (..., d_model) -> fp32 (..., vocab_size)."""
        p = self.cls.predictions
        h = self.act(p.transform.dense(hidden))
        h = p.transform.LayerNorm(h)
        return (p.decoder(h) + p.bias).float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``mlm_logits`` with ``config.suppress_token_ids`` at -inf."""
        return self.mlm_logits(hidden).masked_fill(self._suppress, -torch.inf)
