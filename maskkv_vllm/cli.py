"""The ``maskkv`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from maskkv_vllm.config import CACHE_MODES, CacheConfig
from maskkv_vllm.sampling_params import REMASKING, SamplingParams


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="checkpoint dir, or 'tiny'")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--rope-scaling", type=float, default=1.0, help="NTK factor")
    p.add_argument("--max-model-len", type=int, default=None)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    d = SamplingParams()
    p.add_argument("--gen-length", type=int, default=d.gen_length)
    p.add_argument("--block-length", type=int, default=d.block_length)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--cfg-scale", type=float, default=d.cfg_scale)
    p.add_argument("--remasking", choices=REMASKING, default=d.remasking)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--seed", type=int, default=d.seed)


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.steps,
        temperature=args.temperature,
        cfg_scale=args.cfg_scale,
        remasking=args.remasking,
        threshold=args.threshold,
        seed=args.seed,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from maskkv_vllm.models.builtin import resolve_model
    from maskkv_vllm.models.loader import load_checkpoint
    from maskkv_vllm.sampler.diffusion_sampler import DiffusionSampler

    params = sampling_params(args)
    cache = CacheConfig(
        args.cache_mode,
        args.prompt_refresh_interval,
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
    )
    model_dir = resolve_model(args.model)
    model, tok = load_checkpoint(model_dir, args.dtype, args.device, args.rope_scaling)
    sampler = DiffusionSampler(model, tok, cache, args.max_model_len, args.max_num_seqs)
    prompts = list(args.prompts)
    if args.chat:
        prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    outputs = sampler.generate(prompts, params, use_tqdm=len(prompts) > 1)
    pool = getattr(sampler.prompt_cache, "cache", None)
    for o in outputs:
        if args.json:
            print(json.dumps(o.__dict__))
            continue
        print(f"--- request {o.request_id} ({len(o.prompt_token_ids)} prompt tokens)")
        print(o.text)
        print(
            f"[{o.finish_reason}; {o.num_steps} denoising steps; "
            f"prompt KV held: {o.prompt_kv_bytes} bytes ({args.cache_mode})]"
        )
    if pool is not None and not args.json:
        stats = pool.pool_stats()
        print(
            f"[page pool: {stats['num_blocks']} pages of {stats['bytes_per_block']} "
            f"bytes, peak {stats['max_used_blocks']} used, "
            f"{stats['num_free_blocks']} free now]"
        )
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from maskkv_vllm.models.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(
        args.out,
        seed=args.seed,
        shards=args.shards,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        max_sequence_length=args.max_sequence_length,
    )
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="denoise prompts and print the answers")
    gen.add_argument("prompts", nargs="+", help="prompt text(s)")
    add_model_args(gen)
    add_sampling_args(gen)
    gen.add_argument("--chat", action="store_true", help="wrap in the chat template")
    gen.add_argument("--cache-mode", choices=CACHE_MODES, default="prefix")
    gen.add_argument("--prompt-refresh-interval", type=int, default=None)
    gen.add_argument("--block-size", type=int, default=16, help="paged: slots/page")
    gen.add_argument("--kv-cache-memory", default=None, help="paged: pool, e.g. 1GiB")
    gen.add_argument("--max-num-seqs", type=int, default=8)
    gen.add_argument("--json", action="store_true", help="one JSON object per output")
    gen.set_defaults(func=cmd_generate)

    tiny = sub.add_parser("make-tiny", help="write a random tiny LLaDA checkpoint")
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--shards", type=int, default=1)
    tiny.add_argument("--n-layers", type=int, default=2)
    tiny.add_argument("--n-heads", type=int, default=4)
    tiny.add_argument("--n-kv-heads", type=int, default=None)
    tiny.add_argument("--head-dim", type=int, default=32)
    tiny.add_argument("--max-sequence-length", type=int, default=4096)
    tiny.set_defaults(func=cmd_make_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"maskkv: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
