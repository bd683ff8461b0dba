"""Engine throughput, full cache vs MaskKV, same long-prompt workload and pool size.

    python benchmarks/engine_throughput.py --requests 24 --prompt-len 1536 --pool 48MiB

Runs the same requests through two embedded engines that differ only in the eviction
policy, each with a page pool of the same size, and prints requests/s, generated
tokens/s, and the peak number of requests each engine ran at once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pydoc_data.topics import topics

import torch

from maskkv_vllm.config import CacheConfig, EngineConfig
from maskkv_vllm.engine.llm_engine import LLMEngine
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny import write_tiny_checkpoint
from maskkv_vllm.sampling_params import SamplingParams


def run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> dict:
    start = time.perf_counter()
    for p in prompts:
        engine.add_request(engine.make_request(p, params))
    tokens, done = 0, 0
    while engine.has_unfinished:
        for out in engine.step():
            if out.finished:
                done += 1
                tokens += len(out.token_ids)
    seconds = time.perf_counter() - start
    pool = engine.pool
    assert pool.num_free_blocks == pool.num_usable_blocks
    return {
        "seconds": seconds,
        "requests_per_s": done / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_running": engine.scheduler.max_running,
        "peak_pages": pool.max_used_blocks,
        "pool_pages": pool.num_usable_blocks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--prompt-len", type=int, default=1536)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--pool", default="48MiB")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(
            tmp, seed=0, n_layers=args.layers, n_heads=args.heads,
            head_dim=args.head_dim,
            max_sequence_length=args.prompt_len + args.gen_length + 64,
        )  # fmt: skip
        model, tok = load_checkpoint(path)
    ids = tok.encode(" ".join(topics.values()))
    prompts = [
        ids[i * 97 : i * 97 + args.prompt_len - (i % 4) * 64]
        for i in range(args.requests)
    ]
    g = args.gen_length
    print(
        f"{args.requests} requests, prompts {min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens, gen {g} (block 8, {g} steps), "
        f"pool {args.pool}, model {args.layers}x{args.heads}x{args.head_dim}, CPU "
        f"{torch.get_num_threads()} threads"
    )
    results = {}
    for name, policy, budget in (
        ("full", "full", None),
        (f"maskkv B={args.budget}", "maskkv", args.budget),
    ):
        config = EngineConfig(
            max_num_seqs=args.max_num_seqs,
            cache=CacheConfig("paged", kv_cache_memory=args.pool),
        )
        engine = LLMEngine(config, model, tok)
        params = SamplingParams(
            gen_length=g, block_length=8, steps=g, kv_policy=policy, kv_budget=budget
        )
        results[name] = r = run(engine, prompts, params)
        print(
            f"{name:>14}: {r['requests_per_s']:.2f} req/s, "
            f"{r['tokens_per_s']:.1f} tok/s, peak {r['peak_running']} concurrent "
            f"requests ({r['peak_pages']}/{r['pool_pages']} pages), "
            f"{r['seconds']:.1f} s"
        )
    full, mk = results["full"], results[f"maskkv B={args.budget}"]
    print(
        f"maskkv / full: {mk['requests_per_s'] / full['requests_per_s']:.2f}x req/s, "
        f"{mk['tokens_per_s'] / full['tokens_per_s']:.2f}x tok/s, "
        f"{mk['peak_running'] / full['peak_running']:.1f}x concurrent requests"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
