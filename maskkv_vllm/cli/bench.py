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
        "--model-shape", choices=SHAPES, default="llada-small",
        help="llada-small: the suite's random 4 x 8 x 64 LLaDA; dream-7b: a few "
        "layers of Dream-7B's shape (GQA, 28 query over 4 KV heads), random "
        "weights, its rows only (bytes, step time, pool, canvas cache)",
    )  # fmt: skip
    bench.add_argument(
        "--layers", type=int, default=None, help="layers of the random model"
    )
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


SHAPES = ("llada-small", "dream-7b")


def _lane(args: argparse.Namespace):
    """The suite module for ``--model-shape`` and its config for the flags."""
    import dataclasses

    from maskkv_vllm import machine_defaults
    from maskkv_vllm.bench import dream, suite

    if args.model_shape == "dream-7b":
        lane, cfg = dream, dream.QUICK if args.quick else dream.FULL
    else:
        lane, cfg = suite, suite.QUICK if args.quick else suite.BenchConfig()
    if args.prompt_lens:
        cfg = dataclasses.replace(cfg, prompt_lens=tuple(args.prompt_lens))
    if args.layers:
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, layers=args.layers)
        )
    return lane, dataclasses.replace(cfg, device=machine_defaults.device(args.device))


def cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    if args.peer_fast_dllm and args.model_shape != "llada-small":
        print("maskkv: error: --peer-fast-dllm runs Fast-dLLM's LLaDA code: only "
              "with --model-shape llada-small", file=sys.stderr)  # fmt: skip
        return 2
    lane, cfg = _lane(args)
    out_dir = results_dir(args.out_dir, "bench", args.force)
    if args.peer_fast_dllm:
        from maskkv_vllm.bench.peer_fast_dllm import PeerCode

        try:
            PeerCode(args.peer_fast_dllm)  # fail now, not after the other lanes
        except RuntimeError as e:
            print(f"maskkv: error: {e}", file=sys.stderr)
            return 2
        path = str(Path(args.peer_fast_dllm).expanduser().resolve())
        cfg = dataclasses.replace(cfg, peer_fast_dllm=path)
    results = lane.run(cfg)
    print(lane.report(results))
    names = lane.save(results, out_dir)
    print(f"wrote {out_dir}/{', '.join(names)}")
    return 0
