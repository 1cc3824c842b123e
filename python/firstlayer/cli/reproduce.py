"""``firstlayer reproduce``: the paper's experiments (options from :mod:`firstlayer.reproduce`)."""

from __future__ import annotations

import argparse
from typing import Any

from firstlayer.cli._options import add_command, common

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "reproduce"
HELP = "reproduce the paper's experiments"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer reproduce``; its options only when ``command`` is ``reproduce``."""
    p = add_command(subparsers, NAME, HELP, [common()])
    if command == NAME:
        from firstlayer.reproduce import add_reproduce_arguments

        add_reproduce_arguments(p)
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer reproduce``."""
    from firstlayer.reproduce import reproduce_from_args

    result = reproduce_from_args(args)
    return int(result) if isinstance(result, int) else 0
