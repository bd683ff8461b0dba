"""An answer's text as it reads after its prompt, the way vLLM detokenizes.

vLLM's front end decodes the generated ids incrementally after the prompt's
(``tokenizers.decoders.DecodeStream`` seeded with the prompt), so a decoder
that joins tokens with spaces (word-level, WordPiece) gives the first answer
word its leading space: ``" 0 7 0"`` after ``"? k042"``, where decoding the
answer alone gives ``"0 7 0"``. Both engines take the text from here, so the
same tokens give the same text. A byte-level BPE (real LLaDA) spells its own
spaces, and the two ways agree anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

CONTEXT_TOKENS = 4
"""Prompt tokens decoded before the answer (enough for any decoder's joins)."""


def continuation_text(
    decode: Callable[[list[int]], str],
    prompt_ids: Sequence[int],
    ids: Sequence[int],
) -> str:
    """``decode(tail + ids)`` minus ``decode(tail)``, ``tail`` the prompt's last
    ``CONTEXT_TOKENS`` ids; ``decode(ids)`` when the prompt is empty or the
    tail's text is not a prefix of the whole (a character split at the seam)."""
    ids = list(ids)
    tail = list(prompt_ids[-CONTEXT_TOKENS:])
    if not tail or not ids:
        return decode(ids)
    before, whole = decode(tail), decode(tail + ids)
    if whole.startswith(before):
        return whole[len(before) :]
    return decode(ids)
