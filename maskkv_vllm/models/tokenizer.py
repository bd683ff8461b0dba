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
IM_END = "<|im_end|>"
"""ChatML's end of turn (Dream's, from Qwen2.5): a stop token where it exists."""
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

    def __init__(
        self,
        tokenizer: HFTokenizer,
        config: ModelConfig,
        chat_template: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        """The checkpoint's template (a model that renders its own, e.g. Dream);
        None renders LLaDA's pinned template, or refuses chat for such a model."""
        self.checkpoint_chat = getattr(config, "checkpoint_chat_template", False)
        self.chat_source = "tokenizer_config.json"
        self.mask_token_id = config.mask_token_id
        self.eos_token_id = config.eos_token_id
        self.pad_token_id = config.pad_token_id
        self.bos_token_id = tokenizer.token_to_id(BOS)
        self.eot_token_id = tokenizer.token_to_id(EOT)
        self.im_end_token_id = tokenizer.token_to_id(IM_END)
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
        template = None
        if getattr(config, "checkpoint_chat_template", False):
            template = _checkpoint_chat_template(Path(model_dir))
        out = cls(tokenizer, config, template)
        out.chat_source = str(Path(model_dir) / "tokenizer_config.json")
        return out

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end an answer: EOS, and the end-of-turn tokens (LLaDA's EOT,
        ChatML's ``<|im_end|>``) the vocabulary has."""
        ids = (self.eos_token_id, self.eot_token_id, self.im_end_token_id)
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
        """The prompt of a conversation, the assistant's turn opened: LLaDA-Instruct's
        Llama-3 style template, or the checkpoint's own (Dream's ChatML)."""
        for m in messages:
            role, content = m.get("role"), m.get("content")
            if role not in CHAT_ROLES:
                raise ValueError(f"chat role {role!r} is not one of {CHAT_ROLES}")
            if not isinstance(content, str):
                raise ValueError(f"chat content for role {role!r} must be a string")
        if self.checkpoint_chat:
            return self._render_checkpoint_template(messages)
        parts = [BOS]
        for m in messages:
            parts.append(
                f"{HEADER_START}{m['role']}{HEADER_END}\n\n{m['content']}{EOT}"
            )
        parts.append(f"{HEADER_START}assistant{HEADER_END}\n\n")
        return "".join(parts)

    def _render_checkpoint_template(self, messages: list[dict[str, str]]) -> str:
        if self.chat_template is None:
            raise ValueError(
                f"chat needs the model's chat template: no chat_template in "
                f"{self.chat_source}"
            )
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # As Hugging Face renders chat templates (trim_blocks, lstrip_blocks).
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=True
        )

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # The rendered template already holds its special tokens (LLaDA's BOS).
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


def _checkpoint_chat_template(model_dir: Path) -> str | None:
    """``chat_template`` of the checkpoint's tokenizer_config.json, if any."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text()).get("chat_template")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{path}: chat_template must be a string")
    return template
