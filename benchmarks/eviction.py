"""Pages held, step time and agreement with the full cache, per policy and budget.

    python benchmarks/eviction.py --prompt-len 2048 --budgets 64 128 256 512

One run on a small random LLaDA-shaped model and one long prompt (English text from
CPython's pydoc topics). For each policy and budget B it prints the prompt pages the
request holds after the first step, the median time of the later denoising steps,
and the share of generated tokens equal to the full cache's (greedy). A random model
says nothing about answer quality; the trained-model evaluation does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from maskkv_vllm.bench.common import ModelSize, bench_model, english_ids
from maskkv_vllm.config import CacheConfig
from maskkv_vllm.sampling_params import SamplingParams
from maskkv_vllm.worker.model_runner import ModelRunner


def run(sampler, prompt_ids, params):
    """(generated ids, pages held after step 0, median later-step ms)."""
    seq = sampler.make_sequence(0, prompt_ids, params)
    pool = sampler.prompt_cache.page_pool
    times, pages = [], None
    while not seq.is_finished:
        start = time.perf_counter()
        sampler.step([seq])
        times.append(time.perf_counter() - start)
        if pages is None:
            pages = pool.num_used_pages
    sampler.free(seq)
    assert pool.num_free_pages == pool.num_usable_pages
    return seq.canvas.tolist(), pages, 1e3 * statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--policies", nargs="+", default=["maskkv", "snapkv", "streaming"])
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    size = ModelSize(args.layers, args.heads, args.head_dim)
    model, tok = bench_model(size, args.prompt_len + args.gen_length)
    prompt = english_ids(tok, args.prompt_len)
    cache = CacheConfig("paged", page_size=args.page_size, kv_cache_memory="2GiB")
    sampler = ModelRunner(model, tok, cache)
    page_bytes = sampler.prompt_cache.pool_stats()["bytes_per_page"]
    g = args.gen_length
    base = {"gen_length": g, "block_length": 8, "steps": g}
    c = model.config
    print(
        f"model: {c.n_layers} layers x {c.n_kv_heads} KV heads x {c.head_dim}, "
        f"prompt {len(prompt)} tokens, gen {g}, block 8, greedy; "
        f"page = {args.page_size} slots = {page_bytes} bytes"
    )
    full_ids, full_pages, full_ms = run(sampler, prompt, SamplingParams(**base))
    header = (
        f"{'policy':>10} | {'B':>5} | {'pages':>6} | {'MiB':>7} | {'pages/full':>10} | "
        f"{'step ms':>7} | {'step/full':>9} | {'agree':>6}"
    )
    print(header)
    print("-" * len(header))

    def show(policy, budget, pages, ms, agree):
        print(
            f"{policy:>10} | {budget:>5} | {pages:>6} | "
            f"{pages * page_bytes / 2**20:>7.2f} | {pages / full_pages:>10.3f} | "
            f"{ms:>7.2f} | {ms / full_ms:>9.2f} | {agree:>6.2f}"
        )

    rows = [{"policy": "full", "budget": None, "pages": full_pages, "step_ms": full_ms}]
    show("full", "-", full_pages, full_ms, 1.0)
    for budget in args.budgets:
        for policy in args.policies:
            params = SamplingParams(**base, kv_policy=policy, kv_budget=budget)
            ids, pages, ms = run(sampler, prompt, params)
            agree = sum(a == b for a, b in zip(ids, full_ids, strict=True)) / g
            rows.append(
                {"policy": policy, "budget": budget, "pages": pages, "step_ms": ms,
                 "agreement": agree}
            )  # fmt: skip
            show(policy, budget, pages, ms, agree)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
