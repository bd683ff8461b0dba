"""Accuracy of a ``maskkv eval`` per task: a mix's average can hide a policy that keeps
one task and loses another.

Usage: ``python -m maskkv_vllm.evaluation.by_task RUN/eval.json``. The samples are
drawn again from what eval.json records (``drawn``, the prompt length, the solved
tasks), as ``by_block`` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskkv_vllm.evaluation.agreement import answer_rows
from maskkv_vllm.evaluation.harness import hits_of, scored_samples


def by_task(run: dict) -> dict[str, dict[str, tuple[int, int]]]:
    """Per row (``full`` and ``policy@fraction``), per scored task, the (right,
    asked) samples.

    Raises:
        ValueError: eval.json records no ``drawn`` or ``canvas``, or the draw
            differs from what it scored.
    """
    scored = scored_samples(run)
    out = {}
    for name, texts in answer_rows(run).items():
        tally = {task: [0, 0] for task in run["solved_tasks"]}
        for hit, sample in zip(hits_of(texts, scored), scored, strict=True):
            cell = tally[sample.task]
            cell[0] += hit
            cell[1] += 1
        out[name] = {task: tuple(c) for task, c in tally.items()}
    return out


def row_label(name: str, run: dict) -> str:
    """``policy@fraction`` as ``policy B=budget``; ``full`` as it is."""
    if "@" not in name:
        return name
    policy, fraction = name.split("@")
    return f"{policy} B={run['budgets'][fraction]}"


def ordered(rows: dict, run: dict) -> list[str]:
    """``full``, then each policy's rows (in run order) by rising budget."""
    policies = list(dict.fromkeys(n.split("@")[0] for n in rows))

    def key(name: str) -> tuple[int, int]:
        policy, _, fraction = name.partition("@")
        return policies.index(policy), run["budgets"][fraction] if fraction else 0

    return sorted(rows, key=key)


def main(argv: list[str] | None = None) -> dict[str, dict[str, tuple[int, int]]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="eval.json of a maskkv eval")
    run = json.loads(ap.parse_args(argv).run.read_text())
    rows = by_task(run)
    tasks, full = run["solved_tasks"], rows["full"]
    print("accuracy (retention vs the task's full cache)")
    print(f"{'row':>28} | " + " | ".join(f"{t:>13}" for t in tasks))
    for name in ordered(rows, run):
        tally, cells = rows[name], []
        for t in tasks:
            acc = tally[t][0] / tally[t][1]
            kept = tally[t][0] / full[t][0] if full[t][0] else 0.0
            cells.append(f"{acc:.2f} ({100 * kept:>3.0f}%)")
        print(f"{row_label(name, run):>28} | " + " | ".join(f"{c:>13}" for c in cells))
    print(f"{'samples':>28} | " + " | ".join(f"{full[t][1]:>13}" for t in tasks))
    return rows


if __name__ == "__main__":
    main()
