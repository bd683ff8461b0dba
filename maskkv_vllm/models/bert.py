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

Two tokenizers for the checkpoints shipped inside wheels: a SMILES regex tokenizer
(``rxnfp``) and a residue tokenizer (``antiberty``); both use a BERT ``vocab.txt``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskkv_vllm.models.attention import Attention, DenseAttention

CLS, SEP, PAD, MASK, UNK = "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"
SPECIALS = (CLS, SEP, PAD, MASK, UNK)

IGNORED_PREFIXES = (
    "bert.pooler.",  # pooled [CLS] output: not used by the MLM head
    "cls.seq_relationship.",  # next-sentence head
    "cls.species.",  # AntiBERTy's species / chain / graft classifiers
    "cls.chain.",
    "cls.graft.",
)
IGNORED_KEYS = ("bert.embeddings.position_ids",)  # an arange buffer, not a weight
"""Checkpoint tensors that ``load_bert`` drops on purpose (listed in its result)."""

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


# ---------------------------------------------------------------------------------
# Vocabularies and tokenizers


def read_vocab(path: str | Path) -> dict[str, int]:
    """token -> id from a BERT ``vocab.txt`` (one token a line, id = line number)."""
    tokens = Path(path).read_text(encoding="utf-8").splitlines()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ValueError(f"{path}: token {tok!r} appears twice")
        vocab[tok] = i
    for special in (CLS, SEP, PAD, MASK):
        if special not in vocab:
            raise ValueError(f"{path} has no {special} token")
    return vocab


def special_ids(vocab: dict[str, int]) -> dict[str, int]:
    """The ids a ``BertConfig`` needs, from a vocabulary."""
    suppress = sorted(
        i
        for t, i in vocab.items()
        if t in (CLS, PAD, MASK, UNK) or re.fullmatch(r"\[unused\d+\]", t)
    )
    return {
        "mask_token_id": vocab[MASK],
        "eos_token_id": vocab[SEP],
        "pad_token_id": vocab[PAD],
        "cls_token_id": vocab[CLS],
        "suppress_token_ids": tuple(suppress),
    }


class VocabTokenizer:
    """Text <-> ids over a BERT vocabulary; subclasses split text into tokens.

    ``encode`` adds ``[CLS]`` in front (and ``[SEP]`` at the end when asked);
    ``decode`` drops the special tokens and joins with ``joiner``.
    """

    joiner = ""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = dict(vocab)
        self.tokens = {i: t for t, i in vocab.items()}
        self.cls_token_id = vocab[CLS]
        self.sep_token_id = self.eos_token_id = vocab[SEP]
        self.pad_token_id = vocab[PAD]
        self.mask_token_id = vocab[MASK]
        self.unk_token_id = vocab.get(UNK)
        self.vocab_size = len(vocab)
        self._special = {
            t for t in vocab if t in SPECIALS or re.fullmatch(r"\[unused\d+\]", t)
        }

    @classmethod
    def from_file(cls, path: str | Path) -> VocabTokenizer:
        return cls(read_vocab(path))

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return (self.sep_token_id,)

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` alone, no special tokens; unknown pieces are errors
        unless the vocabulary has ``[UNK]``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = []
        for piece in self.split(text):
            if piece in self.vocab:
                ids.append(self.vocab[piece])
            elif self.unk_token_id is not None:
                ids.append(self.unk_token_id)
            else:
                raise ValueError(f"token {piece!r} is not in the vocabulary")
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``[CLS] text`` (no trailing ``[SEP]``: a prompt is followed by a canvas)."""
        ids = self.tokenize(text)
        return [self.cls_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            tok = self.tokens.get(int(i))
            if tok is not None and tok not in self._special:
                out.append(tok)
        return self.joiner.join(out)


SMILES_REGEX = (
    r"(\%\([0-9]{3}\)|\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\||\(|\)|\.|=|#|-|"
    r"\+|\\|\/|:|~|@|\?|>>?|\*|\$|\%[0-9]{2}|[0-9])"
)
"""rxnfp's ``SMI_REGEX_PATTERN`` (Schwaller et al.)."""


class SmilesTokenizer(VocabTokenizer):
    """Reaction SMILES, split by the SMILES regex (the split must cover the text)."""

    _regex = re.compile(SMILES_REGEX)

    def split(self, text: str) -> list[str]:
        pieces = self._regex.findall(text)
        if "".join(pieces) != text:
            raise ValueError(f"SMILES regex does not cover {text!r:.80}")
        return pieces


class ResidueTokenizer(VocabTokenizer):
    """Protein sequences, one token per residue letter (whitespace ignored)."""

    def split(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


# ---------------------------------------------------------------------------------
# Loading


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


__all__ = [
    "BertConfig",
    "BertMaskedLM",
    "LoadReport",
    "ResidueTokenizer",
    "SmilesTokenizer",
    "VocabTokenizer",
    "load_antiberty",
    "load_bert",
    "load_rxnfp",
]
