"""Write complete tiny LLaDA checkpoints (config, safetensors, tokenizer) offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors
from torch import nn

from maskkv_vllm.models.dream_config import DreamConfig
from maskkv_vllm.models.llada import LLaDAModel
from maskkv_vllm.models.llada_config import LLaDAConfig
from maskkv_vllm.models.loader import INDEX_FILE, SINGLE_FILE
from maskkv_vllm.models.tokenizer import BOS, CHAT_TEMPLATE, SPECIAL_TOKENS

TOKENIZER_CONFIG = "tokenizer_config.json"
"""Where Hugging Face tokenizers (and vLLM's front end) find the chat template."""


def byte_tokenizer() -> HFTokenizer:
    """Byte-level tokenizer: 256 byte tokens, then LLaDA's special tokens (256..261)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = HFTokenizer(
        models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[])
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def tiny_config(
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    head_dim: int = 32,
    mlp_hidden_size: int | None = None,
    max_sequence_length: int = 4096,
    weight_tying: bool = False,
) -> LLaDAConfig:
    """A LLaDA config over the byte tokenizer (vocab 262, mask 261, eos/pad 257)."""
    vocab = byte_tokenizer().get_vocab_size(with_added_tokens=True)
    d_model = n_heads * head_dim
    return LLaDAConfig(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads or n_heads,
        n_layers=n_layers,
        mlp_hidden_size=mlp_hidden_size or 2 * d_model,
        vocab_size=vocab,
        embedding_size=vocab,
        mask_token_id=vocab - 1,
        eos_token_id=257,
        pad_token_id=257,
        max_sequence_length=max_sequence_length,
        weight_tying=weight_tying,
    )


def random_state_dict(
    config: LLaDAConfig, seed: int, scale: float = 2.0
) -> dict[str, torch.Tensor]:
    """Seeded random LLaDA weights under the official names (``random_weights``)."""
    return random_weights(LLaDAModel(config), seed, scale)


def random_weights(
    model: nn.Module, seed: int, scale: float = 2.0
) -> dict[str, torch.Tensor]:
    """Seeded random values for every tensor of ``model.state_dict()`` (fp32,
    contiguous), drawn in state-dict order.

    Norm weights are ``1 + 0.1 N(0, 1)``, embeddings ``0.5 N(0, 1)``, biases
    ``0.1 scale N(0, 1)``, and linear weights have std ``scale / sqrt(fan_in)``.
    The default of twice the usual scale lets context move the logits enough that
    a random model's answers vary by prompt and position.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.state_dict().items():
        if name.endswith(("norm.weight", "ln_f.weight")):
            t = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith(("wte.weight", "embed_tokens.weight")):
            t = 0.5 * torch.randn(p.shape, generator=gen)
        elif name.endswith(".bias"):
            t = 0.1 * scale * torch.randn(p.shape, generator=gen)
        else:
            fan_in = p.shape[-1]
            t = scale * torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
        out[name] = t.contiguous()
    return out


def save_checkpoint(
    out_dir: str | Path,
    config: LLaDAConfig | DreamConfig,
    state_dict: dict[str, torch.Tensor],
    tokenizer: HFTokenizer,
    shards: int = 1,
    chat_template: str = CHAT_TEMPLATE,
) -> Path:
    """Write config.json (``config.to_dict()``), tokenizer.json,
    tokenizer_config.json (``chat_template``, by default LLaDA's pinned one,
    where real checkpoints carry theirs and where vLLM's front end looks) and
    safetensors (sharded when shards > 1)."""
    if shards < 1:
        raise ValueError(f"shards={shards} must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Weights of an earlier checkpoint here would be loaded beside the new ones.
    for stale in [*out.glob("*.safetensors"), out / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    tokenizer.save(str(out / "tokenizer.json"))
    write_tokenizer_config(out, chat_template)
    names = sorted(state_dict)
    if shards == 1:
        save_file(state_dict, str(out / SINGLE_FILE), metadata={"format": "pt"})
        return out
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state_dict[n] for n in names[i::shards]}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return out


def write_tokenizer_config(out_dir: str | Path, template: str = CHAT_TEMPLATE) -> Path:
    """``tokenizer_config.json`` holding a chat template (LLaDA's pinned one)."""
    path = Path(out_dir) / TOKENIZER_CONFIG
    path.write_text(json.dumps({"chat_template": template}, indent=2) + "\n")
    return path


def write_tiny_checkpoint(
    out_dir: str | Path, seed: int = 0, shards: int = 1, **overrides
) -> Path:
    """Write a complete random tiny LLaDA checkpoint directory and return its path.

    Args:
        out_dir: target directory (created).
        seed: weight seed; the same seed writes the same weights.
        shards: number of safetensors shards (> 1 writes model.safetensors.index.json).
        **overrides: ``tiny_config`` size overrides (n_layers, n_heads, n_kv_heads,
            head_dim, mlp_hidden_size, max_sequence_length, weight_tying).
    """
    config = tiny_config(**overrides)
    return save_checkpoint(
        out_dir, config, random_state_dict(config, seed), byte_tokenizer(), shards
    )
