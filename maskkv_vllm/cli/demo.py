"""``maskkv demo``: the shipped retrieval model with the full cache and with
MaskKV keeping ~5% of the prompt KV."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli.command import add_command
from maskkv_vllm.engine.engine_args import EngineArgs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    dm = add_command(
        subparsers,
        "demo",
        "the shipped retrieval model answers long key-value prompts with the full "
        "cache and with MaskKV keeping ~5% of the prompt KV",
    )
    EngineArgs.add_cli_args(dm, ("model", "device", "cache"))
    dm.set_defaults(model="retrieval", kv_cache_memory="64MiB", func=cmd_demo)
    dm.add_argument("--prompt-tokens", type=int, default=1024, help="per prompt")
    dm.add_argument(
        "--fraction", type=float, default=0.05, help="share of the prompt KV kept"
    )
    dm.add_argument("--samples", type=int, default=4, help="prompts answered")
    dm.add_argument(
        "--policy", default="maskkv", help="the evicting policy beside the full cache"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from maskkv_vllm.engine.llm import LLM
    from maskkv_vllm.evaluation import demo

    cfg = demo.DemoConfig(args.prompt_tokens, args.fraction, args.samples, args.policy)
    llm = LLM.from_engine_args(EngineArgs.from_cli_args(args))
    demo.run(llm, cfg)
    return 0
