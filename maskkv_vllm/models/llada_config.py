"""LLaDA's config.json, read with LLaDA's own field names and validated strictly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from maskkv_vllm.models.config_json import (
    check_fixed_values,
    check_required,
    check_types,
    read_config_json,
    require_positive,
)

# Fields whose only supported value is fixed: a checkpoint that asks for anything else
# (ALiBi, LayerNorm, QK-norm, ...) would silently run a different network.
_FIXED_VALUES: dict[str, tuple[Any, ...]] = {
    "model_type": ("llada",),
    "activation_type": ("silu", "swiglu"),
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "rope": (True,),
    "alibi": (False,),
    "attention_layer_norm": (False,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "multi_query_attention": (None, False),
    "clip_qkv": (None,),
    "bias_for_layer_norm": (None, False),
    "layer_norm_with_affine": (True,),
    "attention_layer_norm_with_affine": (True, False),
    "block_group_size": (1,),
}


@dataclass(frozen=True)
class LLaDAConfig:
    """Architecture of a LLaDA checkpoint (the subset the forward pass depends on)."""

    d_model: int
    """Hidden size."""
    n_heads: int
    """Query heads per layer."""
    n_kv_heads: int
    """Key/value heads per layer; fewer than ``n_heads`` is grouped-query attention."""
    n_layers: int
    """Transformer blocks."""
    mlp_hidden_size: int
    """SwiGLU inner width."""
    vocab_size: int
    """Tokenizer vocabulary size (ids a tokenizer can produce)."""
    embedding_size: int
    """Rows of the embedding and LM head (>= ``vocab_size``; LLaDA pads it)."""
    mask_token_id: int
    """Id of the ``[MASK]`` token that fills the canvas."""
    eos_token_id: int
    """End of text; also LLaDA's pad and the filler of unused answer slots."""
    pad_token_id: int
    """Id used to pad batched prompts (attention never sees it)."""
    rope_theta: float = 500000.0
    """RoPE base before NTK scaling."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    max_sequence_length: int = 4096
    """Length the model was trained at (prompt + canvas)."""
    weight_tying: bool = False
    """LM head shares the embedding matrix (no ``model.transformer.ff_out``)."""
    include_bias: bool = False
    """Every linear layer has a bias."""
    include_qkv_bias: bool = False
    """Only the q/k/v projections have a bias (Dream/Qwen style)."""
    shifted_logits: ClassVar[bool] = False
    """LLaDA reads the token at position i from output i (Dream's are shifted)."""
    checkpoint_chat_template: ClassVar[bool] = False
    """Chat prompts render LLaDA's pinned template (``tokenizer.CHAT_TEMPLATE``)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size"):
            require_positive(name, getattr(self, name))
        require_positive("vocab_size", self.vocab_size)
        require_positive("max_sequence_length", self.max_sequence_length)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of "
                f"n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"embedding_size={self.embedding_size} < vocab_size={self.vocab_size}"
            )
        size = self.embedding_size
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < size:
                raise ValueError(f"{name}={value} is outside [0, {size})")
        if self.mask_token_id == self.pad_token_id:
            raise ValueError(
                f"mask_token_id and pad_token_id are both {self.pad_token_id}"
            )
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(
                f"rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} "
                "must be positive"
            )

    # Standard Hugging Face names, which vLLM and generic tooling read.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.n_kv_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def intermediate_size(self) -> int:
        return self.mlp_hidden_size

    @property
    def max_position_embeddings(self) -> int:
        return self.max_sequence_length

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LLaDAConfig:
        """Build from a config.json mapping; unknown values of known fields raise."""
        check_fixed_values(raw, _FIXED_VALUES)
        if raw.get("rope_full_precision") is False:
            raise ValueError("config.json: rope_full_precision=False is not supported")
        check_required(
            raw, ("d_model", "n_heads", "n_layers", "vocab_size", "mask_token_id")
        )
        n_heads = raw["n_heads"]
        eos = raw.get("eos_token_id", 50256)
        kwargs = {
            "d_model": raw["d_model"],
            "n_heads": n_heads,
            "n_kv_heads": raw.get("n_kv_heads") or n_heads,
            "n_layers": raw["n_layers"],
            "mlp_hidden_size": _mlp_hidden_size(raw),
            "vocab_size": raw["vocab_size"],
            "embedding_size": raw.get("embedding_size") or raw["vocab_size"],
            "mask_token_id": raw["mask_token_id"],
            "eos_token_id": eos,
            "pad_token_id": raw.get("pad_token_id", eos),
        }
        names = {f.name for f in dataclasses.fields(cls)}
        for key in names - kwargs.keys():
            if raw.get(key) is not None:
                kwargs[key] = raw[key]
        check_types(cls, kwargs)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> LLaDAConfig:
        return cls.from_dict(read_config_json(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json mapping LLaDA's own code reads, fixed fields included."""
        out: dict[str, Any] = {
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "activation_type": "silu",
            "block_type": "llama",
            "layer_norm_type": "rms",
            "rope": True,
            "rope_full_precision": True,
            "alibi": False,
            "attention_layer_norm": False,
            "input_emb_norm": False,
            "scale_logits": False,
            "flash_attention": False,
            "use_cache": False,
        }
        out.update(dataclasses.asdict(self))
        return out


def _mlp_hidden_size(raw: dict[str, Any]) -> int:
    if raw.get("mlp_hidden_size"):
        return raw["mlp_hidden_size"]
    if raw.get("mlp_ratio"):
        return int(raw["mlp_ratio"] * raw["d_model"])
    raise ValueError("config.json: neither mlp_hidden_size nor mlp_ratio is set")
