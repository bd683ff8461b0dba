"""``add_command``: one subcommand's parser, in the house help format."""

from __future__ import annotations

import argparse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default once: not when its help already says it, nor
    when it is None (the help then says what None means, or nothing is set)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is None:
            return text
        return super()._get_help_string(action)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``; ``help`` is its line in ``maskkv --help``
    and, without ``description``, the top of its own ``--help``."""
    # argparse %-formats a subcommand's help in the top-level --help.
    return subparsers.add_parser(
        name,
        help=help.replace("%", "%%"),
        description=description or help,
        formatter_class=_HelpFormatter,
    )
