"""The ``maskkv`` command line.

``main`` runs it; ``build_parser`` (``parser.py``) asks each subcommand's module
(``generate.py``, ``serve.py``, ...) to add its parser, in ``--help`` order.
"""

from __future__ import annotations

import sys

from maskkv_vllm.cli import vllm_serve
from maskkv_vllm.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vllm-serve"]:
        # Everything after the subcommand is vLLM's own `vllm serve` command line.
        return vllm_serve.run(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"maskkv: error: {e}", file=sys.stderr)
        return 2
