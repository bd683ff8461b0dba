"""Time per denoising step for ``none``, ``prefix`` and ``paged``, side by side.

    python benchmarks/step_time.py --prompt-lens 64 512 1024 2048

Prints, per prompt length, the median time of the steps after the first (the first
computes the prompt KV in every mode) and the ratios none/prefix and paged/prefix,
plus the bytes of one page.
A small random LLaDA-shaped model is written to a temp dir and loaded like a real
checkpoint; the numbers measure the engine, not answer quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from maskkv_vllm.config import CacheConfig
from maskkv_vllm.models.loader import load_checkpoint
from maskkv_vllm.models.tiny import write_tiny_checkpoint
from maskkv_vllm.sampler.diffusion_sampler import DiffusionSampler
from maskkv_vllm.sampling_params import SamplingParams


def time_steps(sampler, prompt_ids, params, device):
    """Seconds of every denoising step of one request."""
    seq = sampler.make_sequence(0, prompt_ids, params)
    times = []
    while not seq.is_finished:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        sampler.step([seq])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    sampler.free(seq)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[64, 512, 1024, 2048])
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16, help="paged: slots/page")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(
            tmp,
            seed=0,
            n_layers=args.layers,
            n_heads=args.heads,
            head_dim=args.head_dim,
            max_sequence_length=max(args.prompt_lens) + args.gen_length,
        )
        model, _ = load_checkpoint(path, args.dtype, args.device)
    params = SamplingParams(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.gen_length,
    )
    c = model.config
    print(
        f"model: {c.n_layers} layers, {c.n_heads} heads x {c.head_dim}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{args.dtype} on {args.device}, torch threads {torch.get_num_threads()}; "
        f"gen_length {args.gen_length}, block {args.block_length}, one token per step"
    )
    header = (
        f"{'prompt':>7} | {'none ms':>8} | {'prefix ms':>9} | {'paged ms':>8} | "
        f"{'first ms':>8} | {'none/prefix':>11} | {'paged/prefix':>12}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for m in args.prompt_lens:
        prompt = torch.randint(0, 256, (m,), generator=gen).tolist()
        result = {"prompt_len": m}
        for mode in ("none", "prefix", "paged"):
            cache = CacheConfig(
                mode, block_size=args.block_size, kv_cache_memory="1GiB"
            )
            sampler = DiffusionSampler(model, cache_config=cache)
            time_steps(sampler, prompt[: min(m, 16)], params, args.device)  # warm-up
            times = time_steps(sampler, prompt, params, args.device)
            result[f"{mode}_first_ms"] = 1e3 * times[0]
            result[f"{mode}_step_ms"] = 1e3 * statistics.median(times[1:])
            if mode == "paged":
                page_bytes = sampler.prompt_cache.cache.store.page_bytes
        result["none_over_prefix"] = result["none_step_ms"] / result["prefix_step_ms"]
        result["paged_over_prefix"] = result["paged_step_ms"] / result["prefix_step_ms"]
        rows.append(result)
        print(
            f"{m:>7} | {result['none_step_ms']:>8.2f} | "
            f"{result['prefix_step_ms']:>9.2f} | {result['paged_step_ms']:>8.2f} | "
            f"{result['prefix_first_ms']:>8.2f} | "
            f"{result['none_over_prefix']:>10.1f}x | "
            f"{result['paged_over_prefix']:>11.2f}x"
        )
    print(
        f"page: {args.block_size} slots x 1 KV head x {c.head_dim} dims = "
        f"{page_bytes} bytes (K, V and int32 positions)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
