"""Calibration prompts for ``maskkv profile`` from the synthetic tasks (issue 26,
item 4): the generator of ``maskkv eval`` under a seed of its own, so the profile
is fitted on neither the training streams nor the held-out samples.

    python benchmarks/synthetic_calibration.py --tasks kv --samples 32 \\
        --prompt-tokens 1024 -o /tmp/calibration.jsonl
    maskkv profile --model CKPT --data /tmp/calibration.jsonl --gen-length 8 \\
        -o profile.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskkv_vllm.evaluation.synthetic import ALL_TASKS, make_samples

CALIBRATION_SEED = 7_000_001
"""Neither the held-out seed nor a training stream's (``random.Random(0..)``)."""


def write_prompts(path: Path, tasks: list[str], samples: int, tokens: int) -> int:
    """One ``{"prompt": ...}`` line per sample; returns how many were written."""
    rows = make_samples(CALIBRATION_SEED, samples, tokens, tuple(tasks))
    path.write_text("".join(json.dumps({"prompt": s.prompt}) + "\n" for s in rows))
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", choices=ALL_TASKS, default=["kv"])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args(argv)
    n = write_prompts(a.output, a.tasks, a.samples, a.prompt_tokens)
    print(f"wrote {n} prompts to {a.output}")


if __name__ == "__main__":
    main()
