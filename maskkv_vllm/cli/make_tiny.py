"""``maskkv make-tiny``: write a random tiny LLaDA checkpoint (for tests)."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli.command import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tiny = add_command(
        subparsers, "make-tiny", "write a random tiny LLaDA checkpoint (for tests)"
    )
    tiny.add_argument("out", help="directory to write (empty, or --force)")
    tiny.add_argument(
        "--force", action="store_true", help="write into a non-empty directory"
    )
    tiny.add_argument("--seed", type=int, default=0, help="weight seed")
    tiny.add_argument(
        "--shards", type=int, default=1, help="safetensors files (> 1: sharded)"
    )
    tiny.add_argument("--n-layers", type=int, default=2, help="transformer blocks")
    tiny.add_argument("--n-heads", type=int, default=4, help="query heads")
    tiny.add_argument(
        "--n-kv-heads", type=int, default=None, help="KV heads (default: --n-heads)"
    )
    tiny.add_argument("--head-dim", type=int, default=32, help="per head")
    tiny.add_argument(
        "--max-sequence-length", type=int, default=4096, help="trained length"
    )
    tiny.set_defaults(func=cmd_make_tiny)


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from maskkv_vllm.models.tiny import write_tiny_checkpoint

    out_dir = Path(args.out)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise ValueError(
            f"{out_dir} is not empty: pass --force to write a new checkpoint there "
            "(its old weights are removed), or choose an empty directory"
        )
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
