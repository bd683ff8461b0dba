"""LLaDA's and Dream's ``config.json`` as transformers configs, so vLLM parses them.

transformers 5.x knows neither ``model_type = "llada"`` nor ``"Dream"`` (Dream's
checkpoints ship a remote-code config); ``plugin.register`` adds these classes to
``AutoConfig``, so ``vllm serve DIR`` needs no ``--trust-remote-code``. LLaDA's
fields keep LLaDA's own names (the checkpoint's ``config.json`` round-trips
unchanged); ``attribute_map`` exposes the
Hugging Face standard names vLLM reads (``hidden_size`` -> ``d_model``, ...).
Other keys of ``config.json`` (``activation_type``, ``rope``, ...) become plain
attributes and are validated by ``to_llada_config``.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PretrainedConfig

from maskkv_vllm.models import dream_config, llada_config

logger = logging.getLogger(__name__)

MODEL_TYPE = "llada"
"""The ``model_type`` of LLaDA checkpoints."""
DREAM_MODEL_TYPE = dream_config.MODEL_TYPE
"""The ``model_type`` of Dream checkpoints ("Dream")."""


class LLaDAConfig(PretrainedConfig):
    """transformers config for LLaDA; defaults are LLaDA-8B's (``llada.md`` §2).

    The values ``vllm`` reads under standard names: ``hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``, ``num_hidden_layers``,
    ``intermediate_size``, ``max_position_embeddings``, ``vocab_size``,
    ``rms_norm_eps``, ``rope_theta``, ``head_dim`` and ``tie_word_embeddings``.
    """

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
    }

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = None
    n_layers: int = 32
    mlp_hidden_size: int | None = 12288
    mlp_ratio: float | None = None
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    mask_token_id: int = 126336
    eos_token_id: int | None = 126081
    pad_token_id: int | None = 126081
    bos_token_id: int | None = None
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    weight_tying: bool = False
    include_bias: bool = False
    include_qkv_bias: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        # config.json files written by other tools may carry head_dim; it is
        # derived here, so accept it only when it agrees.
        head_dim = kwargs.pop("head_dim", None)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        if self.mlp_hidden_size is None and self.mlp_ratio:
            self.mlp_hidden_size = int(self.mlp_ratio * self.d_model)
        super().__post_init__(**kwargs)
        if head_dim is not None and head_dim != self.head_dim:
            raise ValueError(
                f"head_dim={head_dim} disagrees with d_model={self.d_model} / "
                f"n_heads={self.n_heads}"
            )

    @property
    def head_dim(self) -> int:
        """Per-head width, ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    def to_llada_config(self) -> llada_config.LLaDAConfig:
        """The strictly validated architecture our torch model is built from.

        Raises:
            ValueError: a field asks for something LLaDA's forward pass does not
                support (ALiBi, LayerNorm, ...), or the sizes are inconsistent.
        """
        return llada_config.LLaDAConfig.from_dict(self.to_dict())


class DreamHFConfig(PretrainedConfig):
    """transformers config for Dream; defaults are Dream-v0-Instruct-7B's.

    Qwen2's field names, which are the standard ones vLLM reads. Validated
    strictly by ``to_dream_config`` (when the model is built).
    """

    model_type = DREAM_MODEL_TYPE

    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int | None = 4
    vocab_size: int = 152064
    mask_token_id: int = 151666
    eos_token_id: int | None = 151643
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    rope_scaling: dict | None = None
    use_sliding_window: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        """Per-head width, ``hidden_size // num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads

    def to_dream_config(self) -> dream_config.DreamConfig:
        """The strictly validated architecture our torch model is built from.

        Raises:
            ValueError: a field asks for something Dream's forward pass here
                does not support (RoPE scaling, sliding windows, ...).
        """
        return dream_config.DreamConfig.from_dict(self.to_dict())
