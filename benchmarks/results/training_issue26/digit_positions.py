"""Which answer digit does a policy lose? (issue 26, r26e)

    OMP_NUM_THREADS=1 python benchmarks/results/training_issue26/digit_positions.py \\
        --model benchmarks/results/training_issue26/r26e_checkpoint_step2000 \\
        --prompt-tokens 256 --budget 64

``maskkv eval``'s held-out ``kv`` prompts and canvas, the embedded engine, greedy,
one token a step; per answer position, how many prompts each policy gets right,
and how many answers have another number of words than the truth.
"""

from __future__ import annotations

import argparse

from maskkv_vllm.engine.llm import LLM
from maskkv_vllm.evaluation import harness
from maskkv_vllm.sampling_params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--budget", type=int, default=64, help="entries per head")
    ap.add_argument("--policies", nargs="+", default=["full", "maskkv", "snapkv"])
    args = ap.parse_args()
    llm = LLM(args.model, dtype="float32", device="cpu", kv_cache_memory="256MiB")
    samples = harness.make_samples(
        harness.HELD_OUT_SEED, args.samples, args.prompt_tokens, ("kv",), 4
    )
    base = harness.canvas_params(samples, None, None)
    for policy in args.policies:
        budget = {} if policy == "full" else {"kv_budget": args.budget}
        params = SamplingParams(**base, kv_policy=policy, **budget)
        outs = llm.generate([s.prompt for s in samples], params, use_tqdm=False)
        got = [o.text.split() for o in outs]
        want = [s.answer.split() for s in samples]
        pairs = list(zip(got, want, strict=True))
        right = [sum(len(g) > j and g[j] == w[j] for g, w in pairs) for j in range(3)]
        other = sum(len(g) != len(w) for g, w in pairs)
        print(f"{policy} (B={budget.get('kv_budget', 'all')}): right per digit "
              f"position {right} of {len(samples)}; answers of another length "
              f"{other}")  # fmt: skip


if __name__ == "__main__":
    main()
