"""Dream's config.json (Qwen2's field names, ``model_type: "Dream"``), read strictly."""

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

MODEL_TYPE = "Dream"
ARCHITECTURE = "DreamModel"

# Fields whose only supported value is fixed: anything else (another activation,
# YaRN or dynamic RoPE, sliding-window layers) would silently run another network.
_FIXED_VALUES: dict[str, tuple[Any, ...]] = {
    "model_type": (MODEL_TYPE,),
    "hidden_act": ("silu",),
    "rope_scaling": (None,),
    "use_sliding_window": (False,),
}
_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "mask_token_id",
    "eos_token_id",
)
_SIZES = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)


@dataclass(frozen=True)
class DreamConfig:
    """Architecture and special ids of a Dream checkpoint (Hugging Face names).

    The properties give the names the rest of the engine reads (``n_layers``,
    ``n_kv_heads``, ``head_dim``, ``embedding_size``, ...), as ``LLaDAConfig`` has.
    """

    hidden_size: int
    """Model width."""
    num_attention_heads: int
    """Query heads per layer."""
    num_key_value_heads: int
    """Key/value heads per layer (Dream-7B: 4 shared by 28 query heads)."""
    num_hidden_layers: int
    """Decoder layers."""
    intermediate_size: int
    """SwiGLU inner width."""
    vocab_size: int
    """Rows of the embedding and LM head (Dream-7B pads past the tokenizer's ids)."""
    mask_token_id: int
    """Id of the mask token that fills the canvas (Dream-7B: 151666)."""
    eos_token_id: int
    """End of text."""
    pad_token_id: int
    """Pad id (attention never sees it); defaults to ``eos_token_id``."""
    bos_token_id: int | None = None
    """Beginning of text, when the checkpoint names one."""
    rope_theta: float = 10000.0
    """RoPE base before NTK scaling (Dream-7B: 1e6)."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    max_position_embeddings: int = 32768
    """Longest sequence (prompt + canvas) the checkpoint declares."""
    tie_word_embeddings: bool = False
    """The LM head shares the embedding matrix (no ``lm_head.weight``)."""
    shifted_logits: ClassVar[bool] = True
    """Dream was initialised from an autoregressive model: the token at position i
    is read from the output at position i - 1 (position 0 from output 0).
    ``DreamModel.logits`` does NOT shift; whoever reads per-position logits applies
    ``maskkv_vllm.models.dream.shift_logits`` when this is True."""
    checkpoint_chat_template: ClassVar[bool] = True
    """Chat prompts render the checkpoint's own template (tokenizer_config.json's
    ``chat_template``)."""

    def __post_init__(self) -> None:
        for name in _SIZES:
            require_positive(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        self._check_ids()
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(
                f"rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} "
                "must be positive"
            )

    def _check_ids(self) -> None:
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside [0, {self.vocab_size})")
        if self.mask_token_id == self.pad_token_id:
            raise ValueError(
                f"mask_token_id and pad_token_id are both {self.pad_token_id}"
            )

    # The names the model runner, caches and policies read (``ModelConfig``).
    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def mlp_hidden_size(self) -> int:
        return self.intermediate_size

    @property
    def embedding_size(self) -> int:
        return self.vocab_size

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DreamConfig:
        """Build from a config.json mapping; unsupported values raise, naming them."""
        check_fixed_values(raw, _FIXED_VALUES)
        check_required(raw, _REQUIRED)
        kwargs = {
            f.name: raw[f.name]
            for f in dataclasses.fields(cls)
            if raw.get(f.name) is not None
        }
        kwargs.setdefault("num_key_value_heads", raw["num_attention_heads"])
        kwargs.setdefault("pad_token_id", raw["eos_token_id"])
        theta = _rope_parameters_theta(raw)
        if theta is not None:
            kwargs.setdefault("rope_theta", theta)
        check_types(cls, kwargs)
        config = cls(**kwargs)
        head_dim = raw.get("head_dim")
        if head_dim is not None and head_dim != config.head_dim:
            raise ValueError(
                f"config.json: head_dim={head_dim!r} is not supported (Dream's is "
                f"hidden_size / num_attention_heads = {config.head_dim})"
            )
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> DreamConfig:
        return cls.from_dict(read_config_json(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json mapping Dream's own code reads, fixed fields included."""
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURE],
            "model_type": MODEL_TYPE,
            "hidden_act": "silu",
            "rope_scaling": None,
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "use_cache": False,
        }
        out.update(dataclasses.asdict(self))
        return out


def _rope_parameters_theta(raw: dict[str, Any]) -> float | None:
    """``rope_theta`` from transformers 5's ``rope_parameters``, which must be plain
    RoPE; None when the mapping is absent."""
    params = raw.get("rope_parameters")
    if params is None:
        return None
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default":
        raise ValueError(
            f"config.json: rope_parameters={params!r} is not supported "
            "(supported: rope_type 'default')"
        )
    return params.get("rope_theta")
