"""Write complete tiny Dream checkpoints (config, safetensors, tokenizer) offline.

Same byte tokenizer and file layout as the tiny LLaDA (``tiny.py``); grouped-query
attention by default (4 query heads over 2 KV heads), as Dream-7B has 28 over 4.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maskkv_vllm.models.dream import DreamModel
from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.tiny import byte_tokenizer, random_weights, save_checkpoint
from maskkv_vllm.models.tokenizer import BOS, EOS, MASK

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
"""ChatML, the turn format of Dream's (Qwen2.5's) template, without its default
system prompt; the tiny checkpoints carry it as a real one carries its own."""


def tiny_dream_config(
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = False,
    rope_theta: float = 1e6,
) -> DreamConfig:
    """A Dream config over the byte tokenizer (vocab 262: bos 256, eos/pad 257,
    mask 261), RoPE base 1e6 and eps 1e-6 as Dream-7B."""
    tok = byte_tokenizer()
    hidden = n_heads * head_dim
    return DreamConfig(
        hidden_size=hidden,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        num_hidden_layers=n_layers,
        intermediate_size=intermediate_size or 2 * hidden,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        mask_token_id=tok.token_to_id(MASK),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(EOS),
        bos_token_id=tok.token_to_id(BOS),
        rope_theta=rope_theta,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )


def random_dream_state_dict(
    config: DreamConfig, seed: int, scale: float = 2.0
) -> dict[str, torch.Tensor]:
    """Seeded random Dream weights under the Hugging Face names (``random_weights``)."""
    with torch.device("meta"):  # only the names and shapes are read
        model = DreamModel(config)
    return random_weights(model, seed, scale)


def write_tiny_dream_checkpoint(
    out_dir: str | Path, seed: int = 0, shards: int = 1, **overrides
) -> Path:
    """Write a complete random tiny Dream checkpoint directory and return its path.

    Args:
        out_dir: target directory (created).
        seed: weight seed; the same seed writes the same weights.
        shards: number of safetensors shards (> 1 writes model.safetensors.index.json).
        **overrides: ``tiny_dream_config`` arguments (n_layers, n_heads, n_kv_heads,
            head_dim, intermediate_size, max_position_embeddings,
            tie_word_embeddings, rope_theta).
    """
    config = tiny_dream_config(**overrides)
    weights = random_dream_state_dict(config, seed)
    return save_checkpoint(
        out_dir, config, weights, byte_tokenizer(), shards, CHATML_TEMPLATE
    )
