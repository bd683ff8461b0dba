"""``maskkv eval``: accuracy vs KV budget of the eviction policies on the
synthetic tasks."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli.command import add_command
from maskkv_vllm.cli.results import add_out_dir_args, results_dir
from maskkv_vllm.engine.engine_args import EngineArgs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = add_command(
        subparsers,
        "eval",
        "accuracy vs KV budget of the eviction policies on the synthetic tasks",
    )
    ev.add_argument(
        "--model", default="retrieval", help="checkpoint directory or built-in name"
    )
    EngineArgs.add_cli_args(
        ev, ("model", "device", "cache", "scheduler", "maskkv"), model=False
    )
    add_sweep_args(ev)
    add_out_dir_args(ev, "eval")
    ev.set_defaults(func=cmd_eval)


def add_sweep_args(ev: argparse.ArgumentParser) -> None:
    """The prompts, the budgets and the policies compared."""
    from maskkv_vllm.evaluation.harness import FRACTIONS, POLICIES, SOLVED_AT

    ev.add_argument(
        "--samples",
        type=int,
        default=64,
        help="prompts in all, drawn in turn from the tasks (kv, vt, needle)",
    )
    ev.add_argument(
        "--solved-at",
        type=float,
        default=SOLVED_AT,
        help="score only the tasks the full cache answers at least this often "
        "(0: every task)",
    )
    ev.add_argument(
        "--prompt-tokens", type=int, default=1024, help="about this long each"
    )
    ev.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(FRACTIONS),
        help="budgets as fractions of the prompt",
    )
    ev.add_argument(
        "--policies", nargs="+", default=list(POLICIES), help="policies compared"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.evaluation import harness

    out_dir = results_dir(args.out_dir, "eval", args.force)
    config = EngineArgs.from_cli_args(args).create_engine_config()
    llm = LLM.from_engine(LLMEngine(config))
    total = len(args.policies) * len(args.fractions)
    try:
        with tqdm(total=total, desc="policy x budget") as bar:
            result = harness.evaluate(
                llm,
                args.samples,
                args.prompt_tokens,
                tuple(args.policies),
                tuple(args.fractions),
                progress=bar,
                solved_at=args.solved_at,
            )
    except BaseException:
        if not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty results folder
        raise
    print(harness.format_table(result))
    title = f"{args.model}: {args.samples} samples, ~{args.prompt_tokens}-token prompts"
    harness.write_outputs(result, out_dir, title)
    print(f"wrote {out_dir}/eval.json, eval.txt, eval.png")
    return 0
