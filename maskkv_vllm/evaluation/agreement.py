"""Token agreement of two ``maskkv eval`` runs over the same samples, e.g. a canvas
cache against ``none``: how often each (policy, budget) row answers the same.

Usage: ``python -m maskkv_vllm.evaluation.agreement A/eval.json B/eval.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def word_agreement(a: str, b: str) -> tuple[int, int]:
    """(positions where the two answers' words are equal, positions of the longer)."""
    wa, wb = a.split(), b.split()
    same = sum(x == y for x, y in zip(wa, wb, strict=False))
    return same, max(len(wa), len(wb))


def answer_rows(run: dict) -> dict[str, list[str]]:
    """An eval.json's answer texts per row: ``full``, then ``policy@fraction``."""
    rows = {"full": run["answers"]["full"]}
    for policy, by in run["answers"].items():
        if policy != "full":
            rows.update({f"{policy}@{f}": texts for f, texts in by.items()})
    return rows


def agreement(a: dict, b: dict) -> dict[str, dict]:
    """Per row both runs answered (``full`` and ``policy@fraction``): ``answers``,
    the share of samples answered identically, and ``words``, the share of answer
    word positions (over the longer answer) holding the same word.

    Raises:
        ValueError: the runs did not score the same samples, or one recorded no
            answers.
    """
    for key in ("prompt_tokens", "num_samples", "solved_tasks"):
        if a[key] != b[key]:
            raise ValueError(f"the runs differ in {key}: {a[key]!r} vs {b[key]!r}")
    for key in ("drawn", "canvas"):  # recorded since 2026-12-07; compared if both
        if key in a and key in b and a[key] != b[key]:
            raise ValueError(f"the runs differ in {key}: {a[key]!r} vs {b[key]!r}")
    if "answers" not in a or "answers" not in b:
        raise ValueError("a run has no answers (eval.json from before they were kept)")
    theirs = answer_rows(b)
    rows = {name: (texts, theirs[name])
            for name, texts in answer_rows(a).items() if name in theirs}  # fmt: skip
    out = {}
    for name, (ta, tb) in rows.items():
        same = [word_agreement(x, y) for x, y in zip(ta, tb, strict=True)]
        words = sum(s for s, _ in same) / max(1, sum(n for _, n in same))
        answers = sum(x == y for x, y in zip(ta, tb, strict=True)) / len(ta)
        out[name] = {"answers": answers, "words": words}
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="eval.json of the reference run")
    ap.add_argument("b", type=Path, help="eval.json of the other run")
    args = ap.parse_args(argv)
    rows = agreement(*(json.loads(p.read_text()) for p in (args.a, args.b)))
    print(f"{'row':>28} | same answer | same word")
    for name, r in rows.items():
        print(f"{name:>28} | {r['answers']:>11.3f} | {r['words']:>9.3f}")
    return rows


if __name__ == "__main__":
    main()
