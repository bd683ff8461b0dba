"""Eviction policies on real pretrained masked LMs (rxnfp's reaction BERT, AntiBERTy).

    python benchmarks/bert_testbed.py            # every sample, ~10-20 min on 2 cores
    python benchmarks/bert_testbed.py --quick    # a few samples, a smoke test

Needs ``pip install --no-deps rxnfp==0.1.0 antiberty==0.1.3`` (the weights ship in
the wheels) and matplotlib for the plot. For each model, the infilling task of
``maskkv_vllm.testbeds.bert.tasks`` runs through ``ModelRunner`` with the
paged cache, greedy, one token unmasked per step, under every policy at budgets
B = fraction x prompt length (entries kept per head per layer); retention is
accuracy / full-cache accuracy. Writes ``benchmarks/results/bert_testbed.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.testbeds.bert import load_antiberty, load_rxnfp
from maskkv_vllm.testbeds.bert.tasks import evaluate, make_samples
from maskkv_vllm.worker.model_runner import ModelRunner

POLICIES = (
    "maskkv",
    "snapkv",
    "pyramidkv",
    "adakv",
    "squeezeattention",
    "streaming",
    "random",
)
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.25)
MODELS = {
    # task, loader, context (other sequences before the query)
    "rxnfp": ("rxn", load_rxnfp, True),
    "antiberty": ("ab", load_antiberty, False),
}
RESULTS = Path(__file__).parent / "results"


def run_model(name: str, args) -> dict:
    task, loader, context = MODELS[name]
    model, tok = loader()
    samples = make_samples(task, tok, context=context)
    if args.quick:
        samples = samples[: args.quick_samples]
    c = model.config
    longest = max(len(s.prompt_ids) + s.gen_length for s in samples)
    block = 16
    pages = args.max_num_seqs * c.n_layers * c.n_kv_heads * math.ceil(longest / block)
    cache = CacheConfig("paged", page_size=block, num_pages=pages + 1)
    sampler = ModelRunner(
        model, tok, cache, max_num_seqs=args.max_num_seqs, early_stop=False
    )
    prompt_lens = [len(s.prompt_ids) for s in samples]
    mean_prompt = sum(prompt_lens) / len(prompt_lens)
    out = {
        "task": task,
        "context": context,
        "num_samples": len(samples),
        "prompt_len_mean": mean_prompt,
        "prompt_len_range": [min(prompt_lens), max(prompt_lens)],
        "canvas_len_mean": sum(s.gen_length for s in samples) / len(samples),
        "layers": c.n_layers,
        "heads": c.n_heads,
        "budgets_mean": {
            str(f): sum(max(1, round(f * m)) for m in prompt_lens) / len(prompt_lens)
            for f in args.fractions
        },
        "accuracy": {},
        "exact": {},
        "edit_similarity": {},
        "retention": {},
    }
    start = time.perf_counter()
    full = evaluate(sampler, samples, "full")
    out["full"] = {
        "accuracy": full.accuracy,
        "exact": full.exact,
        "edit_similarity": full.edit_similarity,
    }
    print(
        f"\n{name}: {len(samples)} samples, prompt ~{mean_prompt:.0f} tokens, "
        f"canvas ~{out['canvas_len_mean']:.1f}; full cache acc {full.accuracy:.3f} "
        f"exact {full.exact:.3f} edit-sim {full.edit_similarity:.3f}"
    )
    head = "policy".ljust(18) + "".join(
        f"{f:>7.0%}({out['budgets_mean'][str(f)]:>4.0f})" for f in args.fractions
    )
    print(head + "   <- accuracy (retention) at fraction (mean B)")
    for policy in args.policies:
        accs, exact, ret, sims = {}, {}, {}, {}
        for f in args.fractions:
            r = evaluate(sampler, samples, policy, f)
            accs[str(f)], exact[str(f)] = r.accuracy, r.exact
            sims[str(f)] = r.edit_similarity
            ret[str(f)] = r.accuracy / full.accuracy if full.accuracy else 0.0
        out["accuracy"][policy], out["exact"][policy] = accs, exact
        out["retention"][policy] = ret
        out["edit_similarity"][policy] = sims
        cells = "".join(
            f"{accs[str(f)]:>6.3f}({ret[str(f)]:>4.2f})" for f in args.fractions
        )
        print(policy.ljust(18) + cells, flush=True)
    out["seconds"] = time.perf_counter() - start
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    axes = [axes] if len(results) == 1 else list(axes)
    for ax, (name, r) in zip(axes, results.items(), strict=True):
        fracs = [float(f) for f in next(iter(r["accuracy"].values()))]
        for policy, accs in r["accuracy"].items():
            ax.plot(
                [100 * f for f in fracs],
                list(accs.values()),
                marker="o",
                lw=2.2 if policy == "maskkv" else 1.2,
                label=policy,
            )
        ax.axhline(r["full"]["accuracy"], color="k", ls="--", label="full cache")
        ax.set_xscale("log")
        ax.set_xlabel("KV budget (% of prompt, per head per layer)")
        ax.set_ylabel("token accuracy of the recovered span")
        ax.set_title(
            f"{name} ({r['task']}): {r['num_samples']} samples, "
            f"prompt ~{r['prompt_len_mean']:.0f} tok"
        )
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few samples per model")
    ap.add_argument("--quick-samples", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="stem; default results/bert_testbed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    default = "bert_testbed_quick" if args.quick else "bert_testbed"
    stem = Path(args.out) if args.out else RESULTS / default
    stem.parent.mkdir(parents=True, exist_ok=True)
    results = {name: run_model(name, args) for name in args.models}
    meta = {
        "greedy": True,
        "steps": "one token per step, one block",
        "cache": "paged, page_size 16",
        "torch": torch.__version__,
        "threads": args.threads,
    }
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    try:
        plot(results, Path(f"{stem}.png"))
    except ImportError:
        print("matplotlib is not installed: no plot")
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
