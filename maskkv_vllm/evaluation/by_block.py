"""Accuracy of a ``multi`` eval per answer block: does a policy's one-shot selection at
step 0 still hold for the keys answered late in the canvas?

Usage: ``python -m maskkv_vllm.evaluation.by_block RUN/eval.json``. The samples are
drawn again from what eval.json records (``drawn``, the prompt length, the solved
tasks), so a run from before 2026-12-07, which records no ``drawn``, is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskkv_vllm.evaluation.agreement import answer_rows
from maskkv_vllm.evaluation.harness import scored_samples


def key_hits(answer: str, want: str) -> list[bool]:
    """Per asked key (``d d d`` of ``want``'s ``d d d ; d d d ; ...``), whether the
    answer has its three digits where ``want`` does."""
    got, ref = answer.split(), want.split()
    return [got[4 * i : 4 * i + 3] == ref[4 * i : 4 * i + 3]
            for i in range((len(ref) + 1) // 4)]  # fmt: skip


def by_block(run: dict) -> dict[str, list[tuple[int, int]]]:
    """Per row (``full`` and ``policy@fraction``), per diffusion block, the (right,
    asked) keys of the ``multi`` samples whose last digit falls in that block.

    Raises:
        ValueError: eval.json records no ``drawn`` or ``canvas``, or scored no
            ``multi`` sample.
    """
    scored = scored_samples(run)
    block = run["canvas"]["block_length"]
    multi = [i for i, s in enumerate(scored) if s.task == "multi"]
    if not multi:
        raise ValueError(f"no multi sample was scored (tasks {run['solved_tasks']})")
    blocks = run["canvas"]["gen_length"] // block
    out = {}
    for name, texts in answer_rows(run).items():
        tally = [[0, 0] for _ in range(blocks)]
        for i in multi:
            for k, hit in enumerate(key_hits(texts[i], scored[i].answer)):
                cell = tally[(4 * k + 2) // block]
                cell[0] += hit
                cell[1] += 1
        out[name] = [tuple(c) for c in tally]
    return out


def main(argv: list[str] | None = None) -> dict[str, list[tuple[int, int]]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="eval.json of a maskkv eval with multi")
    rows = by_block(json.loads(ap.parse_args(argv).run.read_text()))
    blocks = len(next(iter(rows.values())))
    used = [b for b in range(blocks) if any(r[b][1] for r in rows.values())]
    print(f"{'row':>28} | " + " | ".join(f"block {b:>2}" for b in used))
    for name, tally in rows.items():
        cells = (f"{tally[b][0] / tally[b][1]:>8.3f}" for b in used)
        print(f"{name:>28} | " + " | ".join(cells))
    asked = next(iter(rows.values()))
    print(f"{'keys asked':>28} | " + " | ".join(f"{asked[b][1]:>8}" for b in used))
    return rows


if __name__ == "__main__":
    main()
