"""BERT vocabularies and the two tokenizers of the checkpoints shipped inside wheels:
a SMILES regex tokenizer (``rxnfp``) and a residue tokenizer (``antiberty``); both
read a BERT ``vocab.txt``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

CLS, SEP, PAD, MASK, UNK = "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"
SPECIALS = (CLS, SEP, PAD, MASK, UNK)


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
