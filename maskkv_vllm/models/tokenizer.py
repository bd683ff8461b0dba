"""Tokenizer from a checkpoint's tokenizer.json, plus LLaDA's pinned chat template."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from maskkv_vllm.models.protocol import ModelConfig

logger = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
HEADER_START = "<|start_header_id|>"
HEADER_END = "<|end_header_id|>"
EOT = "<|eot_id|>"
MASK = "<|mdm_mask|>"
SPECIAL_TOKENS = (BOS, EOS, HEADER_START, HEADER_END, EOT, MASK)
CHAT_ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    BOS + "{% for m in messages %}"
    + HEADER_START + "{{ m['role'] }}" + HEADER_END + "\n\n{{ m['content'] }}" + EOT
    + "{% endfor %}{% if add_generation_prompt %}"
    + HEADER_START + "assistant" + HEADER_END + "\n\n{% endif %}"
)  # fmt: skip
"""``render_chat`` as a Jinja template (what vLLM's front end renders)."""


class Tokenizer:
    """Text <-> ids with the special ids the sampler needs.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        config: the model config (mask, eos and pad ids come from it).
    """

    def __init__(self, tokenizer: HFTokenizer, config: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.mask_token_id = config.mask_token_id
        self.eos_token_id = config.eos_token_id
        self.pad_token_id = config.pad_token_id
        self.bos_token_id = tokenizer.token_to_id(BOS)
        self.eot_token_id = tokenizer.token_to_id(EOT)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.max_token_bytes = _max_token_bytes(tokenizer)
        self.unk_token = _unk_token(tokenizer)
        self.unk_token_id = (
            tokenizer.token_to_id(self.unk_token) if self.unk_token else None
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path, config: ModelConfig) -> Tokenizer:
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception
            raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from e
        return cls(tokenizer, config)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end an answer: EOS, and EOT when the vocabulary has it."""
        ids = (self.eos_token_id, self.eot_token_id)
        return tuple(i for i in ids if i is not None)

    def fewest_tokens(self, text: str) -> int:
        """A lower bound on ``len(encode(text))`` without tokenizing (0 if unknown):
        a byte-level BPE token covers at most ``max_token_bytes`` bytes."""
        if not self.max_token_bytes:
            return 0
        return -(-len(text.encode("utf-8", "surrogatepass")) // self.max_token_bytes)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        encoding = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if self.unk_token_id is not None and self.unk_token_id in encoding.ids:
            self._warn_unknown(text, encoding)
        return encoding.ids

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary (each became ``unk_token``)."""
        if self.unk_token_id is None:
            return []
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return self._unknown(text, encoding)

    def _unknown(self, text: str, encoding: Any) -> list[str]:
        spans = zip(encoding.ids, encoding.offsets, strict=True)
        words = [text[a:b] for i, (a, b) in spans if i == self.unk_token_id]
        return [w for w in words if w and w != self.unk_token]

    def _warn_unknown(self, text: str, encoding: Any) -> None:
        words = self._unknown(text, encoding)
        if words:
            shown = ", ".join(repr(w) for w in words[:8])
            more = f" and {len(words) - 8} more" if len(words) > 8 else ""
            logger.warning(
                "%d word(s) outside the model's vocabulary became %s: %s%s",
                len(words), self.unk_token, shown, more,
            )  # fmt: skip

    def decode(self, ids: list[int]) -> str:
        known = [i for i in ids if 0 <= i < self.vocab_size]
        return self.tokenizer.decode(known, skip_special_tokens=True)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """LLaDA-Instruct's Llama-3 style template with the assistant header opened."""
        parts = [BOS]
        for m in messages:
            role, content = m.get("role"), m.get("content")
            if role not in CHAT_ROLES:
                raise ValueError(f"chat role {role!r} is not one of {CHAT_ROLES}")
            if not isinstance(content, str):
                raise ValueError(f"chat content for role {role!r} must be a string")
            parts.append(f"{HEADER_START}{role}{HEADER_END}\n\n{content}{EOT}")
        parts.append(f"{HEADER_START}assistant{HEADER_END}\n\n")
        return "".join(parts)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # The rendered template already holds BOS.
        return self.encode(self.render_chat(messages), add_special_tokens=False)


def _unk_token(tokenizer: HFTokenizer) -> str | None:
    """The model's unknown token (word-level and WordPiece vocabularies); None
    for a byte-level BPE, which can spell anything."""
    model = json.loads(tokenizer.to_str()).get("model") or {}
    return model.get("unk_token") or None


def _max_token_bytes(tokenizer: HFTokenizer) -> int | None:
    """Bytes of the longest token of a byte-level BPE without a normalizer (whose
    vocabulary maps each byte to one character); None for any other tokenizer,
    where a token can stand for more (a word-level ``[UNK]``)."""
    spec = json.loads(tokenizer.to_str())
    if spec.get("normalizer") or (spec.get("model") or {}).get("type") != "BPE":
        return None
    if '"ByteLevel"' not in json.dumps(spec.get("pre_tokenizer")):
        return None
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    added = [t["content"] for t in spec.get("added_tokens") or []]
    return max([len(t) for t in vocab] + [len(t.encode()) for t in added], default=0)
