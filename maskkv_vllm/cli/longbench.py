"""``maskkv longbench``: LongBench on local data and a checkpoint (its flags and
its run are ``maskkv_vllm.evaluation.longbench``'s)."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli.command import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from maskkv_vllm.evaluation import longbench

    lb = add_command(
        subparsers, "longbench", "LongBench on local data and a checkpoint"
    )
    longbench.add_arguments(lb)
    lb.set_defaults(func=longbench.run_from_args)
