"""``maskkv bench``: speed and memory figures, measured side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskkv_vllm.cli.command import add_command
from maskkv_vllm.cli.results import add_out_dir_args, results_dir
from maskkv_vllm.engine.engine_args import EngineArgs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = add_command(
        subparsers, "bench", "speed and memory figures, measured side by side"
    )
    bench.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    bench.add_argument(
        "--prompt-lens", type=int, nargs="+", default=None, help="prompt lengths"
    )
    bench.add_argument(
        "--peer-fast-dllm", metavar="PATH", default=None,
        help="a checkout of NVlabs/Fast-dLLM: time its prefix and dual cache on the "
        "same checkpoint beside ours (needs the [peer] extra)",
    )  # fmt: skip
    EngineArgs.add_cli_args(bench, ("device",), skip=("dtype",))
    add_out_dir_args(bench, "bench")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from maskkv_vllm.bench import suite

    cfg = suite.QUICK if args.quick else suite.BenchConfig()
    if args.prompt_lens:
        cfg = dataclasses.replace(cfg, prompt_lens=tuple(args.prompt_lens))
    out_dir = results_dir(args.out_dir, "bench", args.force)
    from maskkv_vllm import machine_defaults

    cfg = dataclasses.replace(cfg, device=machine_defaults.device(args.device))
    if args.peer_fast_dllm:
        from maskkv_vllm.bench.peer_fast_dllm import PeerCode

        try:
            PeerCode(args.peer_fast_dllm)  # fail now, not after the other lanes
        except RuntimeError as e:
            print(f"maskkv: error: {e}", file=sys.stderr)
            return 2
        path = str(Path(args.peer_fast_dllm).expanduser().resolve())
        cfg = dataclasses.replace(cfg, peer_fast_dllm=path)
    results = suite.run(cfg)
    print(suite.report(results))
    suite.save(results, out_dir)
    print(f"wrote {out_dir}/bench.json, bench.txt, bench.png")
    return 0
