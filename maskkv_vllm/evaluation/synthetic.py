"""Synthetic long-context tasks whose answers hang on a few far-back prompt tokens.

Three tasks over one small word vocabulary:

- ``kv``: a haystack of ``kNNN : d d d ;`` records, then ``? kNNN``; the answer is
  that key's three digits.
- ``vt`` (variable tracking, multi-hop): the same haystack with ``NUM_CHAINS`` chains
  ``xA = d ; ... xB = xA ; ... xC = xB ;`` hidden in it, each from its own digit, then
  ``? xC`` naming the end of one; the answer is the digit that chain started from. The
  distractor chains make the hops necessary: the first ``= d`` in the prompt is the
  right digit only by chance.
- ``needle`` (passkey / multi-needle retrieval, the long-context test LongLLaDA and
  the KV-eviction papers report): a fixed filler sentence repeated to length, with
  1 to ``MAX_NEEDLES`` ``kNNN : d d d ;`` needles hidden at random depths, then
  ``? kNNN`` naming one of them; the answer is its three digits. The easy retrieval
  task beside ``kv``, whose every record is a distractor.

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
NUM_CHAINS = 2
MAX_NEEDLES = 4
VT_HOPS = (2, 3)
"""Hops of a ``vt`` chain (one drawn per chain): 3 to 4 lookups in a row."""
PUNCT = [":", ";", "?", "="]
DIGITS = [str(d) for d in range(10)]
KEYS = [f"k{i:03d}" for i in range(NUM_KEYS)]
VARS = [f"x{i:02d}" for i in range(NUM_VARS)]
UNK = "<unk>"
"""What a word outside the vocabulary becomes (last, so the ids before it are
those the shipped checkpoint was trained with; it was EOS before)."""
WORDS = list(SPECIAL_TOKENS) + PUNCT + DIGITS + KEYS + VARS + [UNK]
TASKS = ("kv", "vt", "needle")
"""The tasks the shipped model was trained on (``benchmarks/train_model.py``)."""
HARD_TASKS = ("multi", "qfirst")
"""Issue 26's harder tasks: several keys answered in one canvas (an answer over
several diffusion blocks), and the question before the records."""
ALL_TASKS = TASKS + HARD_TASKS
MULTI_QUERIES = 4
"""Keys a ``multi`` prompt asks for: answers ``d d d ; d d d ; ...`` (4 words each)."""
# The repeated filler (like "The grass is green. The sky is blue."): fixed words that
# state no fact, so ``facts`` finds only the needles.
FILLER = " ".join(VARS[:11]) + " ;"


def word_tokenizer() -> HFTokenizer:
    """WordLevel tokenizer over ``WORDS`` (specials first, so BOS is id 0)."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([*SPECIAL_TOKENS, UNK])
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


def _chain(
    rng: random.Random, names: list[str], start: str, hops: tuple[int, ...] = VT_HOPS
) -> list[str]:
    """``xA = d ;`` then one of ``hops`` hops ``xB = xA ;`` over ``names``."""
    hops = rng.choice(hops)
    chain = [f"{names[0]} = {start} ;"]
    return chain + [f"{names[j + 1]} = {names[j]} ;" for j in range(hops)]


def _hide(rng: random.Random, parts: list[str], chains: list[list[str]]) -> None:
    """Insert every chain's statements into ``parts`` in order, at random places."""
    for chain in chains:
        slots = sorted(rng.choices(range(len(parts) + 1), k=len(chain)))
        for offset, (slot, stmt) in enumerate(zip(slots, chain, strict=True)):
            parts.insert(slot + offset, stmt)


def make_sample(
    rng: random.Random,
    task: str,
    num_tokens: int,
    queries: int = MULTI_QUERIES,
    hops: tuple[int, ...] = VT_HOPS,
    chains: int = NUM_CHAINS,
) -> Sample:
    """One sample whose prompt is about ``num_tokens`` tokens long (``hops``: the
    hop counts a ``vt`` chain draws from; ``chains``: the ``vt`` chains, the
    queried one and its distractors; both a training curriculum's knobs)."""
    if task not in ALL_TASKS:
        raise ValueError(f"task={task!r} is not one of {ALL_TASKS}")
    if not hops or not set(hops) <= set(range(1, 4)):
        raise ValueError(f"hops={hops!r} must be drawn from 1, 2 and 3")
    if not 1 <= chains <= len(DIGITS):
        raise ValueError(f"chains={chains} must be within [1, {len(DIGITS)}]")
    if task == "needle":
        return _needle_sample(rng, num_tokens)
    if task in HARD_TASKS:
        return _hard_sample(rng, task, num_tokens, queries)
    n = max(2, min(NUM_KEYS, (num_tokens - 4) // 6))
    keys = rng.sample(KEYS, n)
    records = [_record(rng, k) for k in keys]
    parts = [r for r, _ in records]
    if task == "kv":
        i = rng.randrange(n)
        query, answer = keys[i], records[i][1]
    else:
        names = rng.sample(VARS, 4 * chains)
        starts = rng.sample(DIGITS, chains)
        chains = [
            _chain(rng, names[4 * c : 4 * c + 4], starts[c], hops)
            for c in range(chains)
        ]
        # Drop the records the statements' tokens (4 each) displace, keeping at least 1.
        del parts[max(1, n - 4 * sum(map(len, chains)) // 6) :]
        _hide(rng, parts, chains)
        query, answer = chains[0][-1].split()[0], starts[0]
    return Sample(task, " ".join(parts) + f" ? {query}", answer)


def _hard_sample(
    rng: random.Random, task: str, num_tokens: int, queries: int
) -> Sample:
    """``multi``: records, then ``? kA ; kB ; ...`` asking for ``queries`` keys,
    answered ``d d d ; d d d ; ...``; ``qfirst``: ``? kA ;`` before the records."""
    if queries < 1:
        raise ValueError(f"queries={queries} must be >= 1")
    asked = queries if task == "multi" else 1
    n = max(asked + 1, min(NUM_KEYS, (num_tokens - 2 - 2 * asked) // 6))
    keys = rng.sample(KEYS, n)
    records = [_record(rng, k) for k in keys]
    picked = rng.sample(range(n), asked)
    question = "? " + " ; ".join(keys[i] for i in picked)
    answer = " ; ".join(records[i][1] for i in picked)
    body = " ".join(r for r, _ in records)
    prompt = f"{question} ; {body}" if task == "qfirst" else f"{body} {question}"
    return Sample(task, prompt, answer)


def _needle_sample(rng: random.Random, num_tokens: int) -> Sample:
    """Fixed filler to about ``num_tokens`` tokens with 1-``MAX_NEEDLES`` needles."""
    count = rng.randint(1, MAX_NEEDLES)
    needles = [_record(rng, k) for k in rng.sample(KEYS, count)]
    filler_len = len(FILLER.split())
    repeats = max(1, (num_tokens - 4 - 6 * count) // filler_len)
    parts = [FILLER] * repeats
    for needle, _ in needles:
        parts.insert(rng.randint(0, len(parts)), needle)
    record, answer = rng.choice(needles)
    return Sample("needle", " ".join(parts) + f" ? {record.split()[0]}", answer)


def make_samples(
    seed: int,
    count: int,
    num_tokens: int,
    tasks: tuple[str, ...] = TASKS,
    queries: int = MULTI_QUERIES,
) -> list[Sample]:
    """``count`` samples alternating over ``tasks``; seeded and reproducible."""
    rng = random.Random(seed)
    return [
        make_sample(rng, tasks[i % len(tasks)], num_tokens, queries)
        for i in range(count)
    ]


def facts(words: list[str]) -> dict[str, list[str]]:
    """Every key's digits and every variable's resolved digit stated in ``words``."""
    out = {}
    for i, w in enumerate(words[:-2]):
        if words[i + 1] == ":":
            out[w] = words[i + 2 : i + 5]
        elif words[i + 1] == "=":
            out[w] = out.get(words[i + 2], [words[i + 2]])
    return out


def with_recall_queries(
    rng: random.Random, prompt: str, count: int
) -> tuple[list[str], list[int]]:
    """Insert ``count`` answered ``? name value ;`` queries before the final query.

    Dense training signal for the retrieval circuit (many lookups per haystack,
    like multi-query associative recall); the value words are returned as targets
    to be masked, so the prompt's own answers are learned with LLaDA's objective.
    """
    words = prompt.split()
    known = facts(words)
    known.pop(words[-1])  # never give away the final query's answer
    names = rng.sample(sorted(known), min(count, len(known)))
    extra, targets = [], []
    start = len(words) - 2  # before the final "? name"
    for name in names:
        extra += ["?", name]
        targets += range(start + len(extra), start + len(extra) + len(known[name]))
        extra += known[name] + [";"]
    return words[:start] + extra + words[start:], targets


def exact_match(predicted: str, answer: str) -> bool:
    """Whitespace-normalised exact match."""
    return predicted.split() == answer.split()
