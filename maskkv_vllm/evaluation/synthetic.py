"""Synthetic long-context tasks whose answers hang on a few far-back prompt tokens.

Two tasks over one small word vocabulary:

- ``kv``: a haystack of ``kNNN : d d d ;`` records, then ``? kNNN``; the answer is
  that key's three digits.
- ``vt`` (variable tracking, multi-hop): the same haystack with a chain
  ``xA = d ; ... xB = xA ; ... xC = xB ;`` hidden in it, then ``? xC``; the answer is
  the digit the chain started from.

Answers are padded with EOS to the canvas length, as LLaDA's SFT data is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from maskkv_vllm.models.tokenizer import BOS, SPECIAL_TOKENS

NUM_KEYS = 512
NUM_VARS = 64
PUNCT = [":", ";", "?", "="]
DIGITS = [str(d) for d in range(10)]
KEYS = [f"k{i:03d}" for i in range(NUM_KEYS)]
VARS = [f"x{i:02d}" for i in range(NUM_VARS)]
WORDS = list(SPECIAL_TOKENS) + PUNCT + DIGITS + KEYS + VARS
TASKS = ("kv", "vt")


def word_tokenizer() -> HFTokenizer:
    """WordLevel tokenizer over ``WORDS`` (specials first, so BOS is id 0)."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS[1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return tok


@dataclass(frozen=True)
class Sample:
    task: str
    prompt: str
    answer: str


def _record(rng: random.Random, key: str) -> tuple[str, str]:
    digits = " ".join(rng.choice(DIGITS) for _ in range(3))
    return f"{key} : {digits} ;", digits


def make_sample(rng: random.Random, task: str, num_tokens: int) -> Sample:
    """One sample whose prompt is about ``num_tokens`` tokens long."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    n = max(2, min(NUM_KEYS, (num_tokens - 4) // 6))
    keys = rng.sample(KEYS, n)
    records = [_record(rng, k) for k in keys]
    parts = [r for r, _ in records]
    if task == "kv":
        i = rng.randrange(n)
        query, answer = keys[i], records[i][1]
    else:
        hops = rng.choice([2, 3])
        names = rng.sample(VARS, hops + 1)
        start = rng.choice(DIGITS)
        chain = [f"{names[0]} = {start} ;"]
        chain += [f"{names[j + 1]} = {names[j]} ;" for j in range(hops)]
        slots = sorted(rng.choices(range(len(parts) + 1), k=len(chain)))
        for offset, (slot, stmt) in enumerate(zip(slots, chain, strict=True)):
            parts.insert(slot + offset, stmt)
        query, answer = names[-1], start
    return Sample(task, " ".join(parts) + f" ? {query}", answer)


def make_samples(
    seed: int, count: int, num_tokens: int, tasks: tuple[str, ...] = TASKS
) -> list[Sample]:
    """``count`` samples alternating over ``tasks``; seeded and reproducible."""
    rng = random.Random(seed)
    return [make_sample(rng, tasks[i % len(tasks)], num_tokens) for i in range(count)]


def exact_match(predicted: str, answer: str) -> bool:
    """Whitespace-normalised exact match."""
    return predicted.split() == answer.split()
