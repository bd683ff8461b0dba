"""``build_parser``: the ``maskkv`` parser, each subcommand added by its module."""

from __future__ import annotations

import argparse

from maskkv_vllm.cli import (
    bench,
    demo,
    evaluate,
    generate,
    longbench,
    make_tiny,
    profile,
    serve,
    vllm_serve,
)

DESCRIPTION = "The ``maskkv`` command line."

COMMANDS = (
    generate,
    profile,
    serve,
    evaluate,
    demo,
    vllm_serve,
    bench,
    longbench,
    make_tiny,
)
"""The subcommand modules, in ``maskkv --help`` order; each has ``add_parser``."""


def build_parser() -> argparse.ArgumentParser:
    from maskkv_vllm import __version__

    parser = argparse.ArgumentParser(prog="maskkv", description=DESCRIPTION)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser
