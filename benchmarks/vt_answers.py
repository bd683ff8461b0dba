"""What a model answers on ``vt``: the queried chain's start digit, another
chain's start digit (a guess among the chains), or neither.

Usage: ``python benchmarks/vt_answers.py CKPT [--length 128] [--hops 1]
[--chains 2] [--samples 64]``. Greedy answers of the training script's sampler
(LLaDA's or Dream's, one block of ``GEN_LENGTH``) on held-out prompts of seed
``SEED``; only the first answer word counts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_model as tm  # noqa: E402

from maskkv_vllm.evaluation.synthetic import NUM_CHAINS, word_tokenizer  # noqa: E402

SEED = 123


def chain_starts(prompt: str) -> list[str]:
    """The digits the prompt's chains start from (``xA = d ;``)."""
    w = prompt.split()
    return [
        w[i + 2] for i in range(len(w) - 2) if w[i + 1] == "=" and w[i + 2].isdigit()
    ]


def classify(model, length: int, hops: tuple[int, ...], chains: int, n: int) -> dict:
    """Counts of ``right`` / ``other_start`` / ``neither`` over ``n`` prompts."""
    tok = word_tokenizer()
    rng = random.Random(SEED)
    prompts = tm.VtPrompts(hops, chains)
    samples = [prompts.sample(rng, length) for _ in range(n)]
    answers = tm.sampled_answers(model, [tok.encode(s.prompt).ids for s in samples])
    out = {"right": 0, "other_start": 0, "neither": 0}
    for s, a in zip(samples, answers, strict=True):
        words = tok.decode(a).split()
        first = words[0] if words else ""
        if first == s.answer:
            out["right"] += 1
        elif first in chain_starts(s.prompt):
            out["other_start"] += 1
        else:
            out["neither"] += 1
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--length", type=int, default=128, help="prompt tokens")
    ap.add_argument("--hops", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--chains", type=int, default=NUM_CHAINS)
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = tm.load_model(a.checkpoint).float()
    counts = classify(model, a.length, tuple(a.hops), a.chains, a.samples)
    row = {"checkpoint": a.checkpoint, "length": a.length, "hops": a.hops,
           "chains": a.chains, **counts}  # fmt: skip
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
