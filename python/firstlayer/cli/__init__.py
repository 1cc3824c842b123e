"""The ``firstlayer`` command line.

``firstlayer stats | spectrum | profile | fit | compare | train | reproduce | demo | info``, each
with ``--help``. Options mean the same everywhere: ``--dataset``/``--data`` (a dataset name such as
``sample`` or ``cifar10``, or a path), ``--kernel-size``, ``--out`` (the output file or folder),
``--device``, ``--quiet`` (no progress lines), ``--json`` (one JSON document on stdout instead of
text) and ``--debug`` (full traceback on failure).

Exit codes: 0 success, 2 usage error (argparse's convention), 1 failure, reported as one line
``firstlayer: error: ...`` on stderr. ``main`` returns the code instead of exiting, so tests and
other programs can call ``main([...])``; ``python -m firstlayer`` and the ``firstlayer`` script
exit with it.

Layout: :mod:`~firstlayer.cli.parser` builds the parser from one module per command
(:mod:`~firstlayer.cli.stats`, ``spectrum``, ``profile``, ``fit``, ``compare``, ``train``,
``reproduce``, ``demo``, ``info``, each with ``add_parser`` and ``run``);
:mod:`~firstlayer.cli._options` holds the shared options, :mod:`~firstlayer.cli._output` the
printing and result files, :mod:`~firstlayer.cli._inputs` the first layers and statistics that
``profile``, ``fit`` and ``compare`` read.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from firstlayer.cli._output import one_line
from firstlayer.cli.parser import COMMANDS, build_parser, command_of
from firstlayer.exceptions import UsageError

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

#: Failures whose message says it all; others get a hint about ``--debug``.
_EXPECTED = (ValueError, TypeError, OSError, RuntimeError, ImportError, LookupError)


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``firstlayer`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on failure, 2 on a usage error.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        parser = build_parser(command_of(args_list))
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    except Exception as exc:  # noqa: BLE001 - e.g. the train module failing to import
        if debug:
            traceback.print_exc()
        print(f"firstlayer: error: {one_line(exc)}", file=sys.stderr)
        return 1
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = args_list
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        args._subparser.print_usage(sys.stderr)
        print(f"firstlayer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        print("firstlayer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `firstlayer stats | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if debug:
            traceback.print_exc()
        hint = "" if debug or isinstance(exc, _EXPECTED) else " (--debug for the traceback)"
        # The library's advice names its keyword; on the command line it is an option.
        text = one_line(exc).replace("on_error='skip'", "--on-error skip")
        print(f"firstlayer: error: {text}{hint}", file=sys.stderr)
        return 1
