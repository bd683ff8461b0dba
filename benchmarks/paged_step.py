"""Per-step time of the paged prompt cache against the dense prefix cache, side by
side in one run (issue 18: a paged step should cost what a dense step costs).

    python benchmarks/paged_step.py --prompt-lens 1024 2048 4096 --threads 1

Random LLaDA-shaped model (4 layers x 8 heads x 64), gen 32, block 8, one token per
step; each mode runs ``--repeats`` times in turn and the best median counts.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from maskkv_vllm.bench.common import (
    ModelSize,
    bench_model,
    english_ids,
    median_ms,
    step_times,
)
from maskkv_vllm.bench.figures import params, sampler_for

MODES = ("prefix", "paged")


def measure(model, tok, prompt_len: int, repeats: int) -> dict[str, float]:
    ids = english_ids(tok, prompt_len)
    best = dict.fromkeys(MODES, float("inf"))
    for _ in range(repeats):
        for mode in MODES:  # interleaved: both see the same machine load
            s = sampler_for(model, tok, mode, "2GiB")
            seq = s.make_sequence(0, ids, params(32))
            best[mode] = min(best[mode], median_ms(step_times(s, seq, "cpu")[1:]))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = bench_model(ModelSize(), max(args.prompt_lens) + 64)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, torch "
          f"{torch.__version__}, {args.threads} thread(s); median ms per step "
          "after the first")  # fmt: skip
    print(" prompt | prefix |  paged | paged/prefix")
    for n in args.prompt_lens:
        r = measure(model, tok, n, args.repeats)
        ratio = r["paged"] / r["prefix"]
        print(f" {n:6d} | {r['prefix']:6.2f} | {r['paged']:6.2f} | {ratio:11.2f}x")


if __name__ == "__main__":
    main()
