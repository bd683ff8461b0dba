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
        "--policies", nargs="*", default=list(POLICIES),
        help="policies compared (none named: the full cache alone)",
    )  # fmt: skip
    add_task_args(ev)


def add_task_args(ev: argparse.ArgumentParser) -> None:
    """The tasks, absolute budgets and the canvas's shape (issue 26's harder
    settings: several keys in one canvas, the question first, small B)."""
    from maskkv_vllm.evaluation.synthetic import ALL_TASKS, MULTI_QUERIES, TASKS

    ev.add_argument(
        "--tasks", nargs="+", choices=ALL_TASKS, default=list(TASKS),
        help="the synthetic tasks drawn",
    )  # fmt: skip
    ev.add_argument(
        "--queries", type=int, default=MULTI_QUERIES,
        help="keys a multi prompt asks for (its answer is 4 words each)",
    )  # fmt: skip
    ev.add_argument(
        "--budgets", type=int, nargs="+", default=[],
        help="budgets B (entries per head) besides --fractions, e.g. 1 2 5",
    )  # fmt: skip
    ev.add_argument(
        "--block-length", type=int,
        help="diffusion block (default: one block, the whole canvas)",
    )  # fmt: skip
    ev.add_argument(
        "--gen-length", type=int,
        help="answer slots (default: the longest answer and its EOS, in whole "
             "blocks)",
    )  # fmt: skip


def check_policies(canvas_cache: str, policies: list[str]) -> None:
    """Refuse, before any prompt runs, a sweep the canvas cache cannot run."""
    from maskkv_vllm.eviction.registry import check_policy_name, policy_evicts

    for name in policies:
        check_policy_name(name)
    evicting = [p for p in policies if policy_evicts(p)]
    if canvas_cache == "dual_refresh" and evicting:
        raise SystemExit(
            "maskkv eval: --canvas-cache dual_refresh recomputes the full prompt at "
            f"every block boundary, so only the full cache runs with it; --policies "
            f"{' '.join(evicting)} evict (name none of them, or use --canvas-cache "
            "dual)"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.engine.llm_engine import LLMEngine
    from maskkv_vllm.evaluation import harness

    config = EngineArgs.from_cli_args(args).create_engine_config()
    check_policies(config.canvas_cache, args.policies)
    out_dir = results_dir(args.out_dir, "eval", args.force)
    llm = LLM.from_engine(LLMEngine(config))
    for b in args.budgets:
        if b < 1:
            raise SystemExit(f"maskkv eval: --budgets {b}: a budget is >= 1 entry")
    fractions = [*args.fractions, *(b / args.prompt_tokens for b in args.budgets)]
    total = len(args.policies) * len(fractions)
    try:
        with tqdm(total=total, desc="policy x budget") as bar:
            result = harness.evaluate(
                llm,
                args.samples,
                args.prompt_tokens,
                tuple(args.policies),
                tuple(fractions),
                progress=bar,
                solved_at=args.solved_at,
                tasks=tuple(args.tasks),
                queries=args.queries,
                block_length=args.block_length,
                gen_length=args.gen_length,
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
