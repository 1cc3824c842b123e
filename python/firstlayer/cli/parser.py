"""The ``firstlayer`` argument parser: one sub-parser per command module.

Each command module (``firstlayer.cli.stats``, ``.spectrum``, ...) has ``NAME``, ``HELP``,
``add_parser(subparsers, command) -> ArgumentParser`` (which sets ``handler=run``) and
``run(args) -> int``. The shared options are in :mod:`firstlayer.cli._options`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from firstlayer._core import __version__
from firstlayer.cli import compare, demo, fit, info, profile, reproduce, spectrum, stats, train
from firstlayer.cli._options import EPILOG

__all__ = ["COMMANDS", "build_parser", "command_of"]

_MODULES = (stats, spectrum, profile, fit, compare, train, reproduce, demo, info)

#: Sub-commands and their one-line help.
COMMANDS: dict[str, str] = {m.NAME: m.HELP for m in _MODULES}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the ``firstlayer`` argument parser.

    Parameters
    ----------
    command : str, optional
        The sub-command about to be parsed. ``train`` and ``reproduce`` take their options from
        modules that import torch; they are loaded only when ``command`` names them.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="firstlayer",
        description="What CNNs learn in their first layer, and why: exact patch statistics, "
        "energy profiles, the linear-CNN theory, training and comparison reports.",
        epilog="Start with 'firstlayer demo'. Options mean the same in every command, e.g. "
        "--out is the output file or folder. " + EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"firstlayer {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in _MODULES:
        sub = module.add_parser(subparsers, command)
        sub.set_defaults(_subparser=sub)  # for the usage line of errors found after parsing
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command in ``argv`` (the first argument that is not an option), if known."""
    for a in argv:
        if a in COMMANDS:
            return a
        if not a.startswith("-"):
            return None
    return None
