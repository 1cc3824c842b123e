"""``firstlayer demo``: the offline demo on the bundled CIFAR-10 sample."""

from __future__ import annotations

import argparse
from typing import Any

from firstlayer.cli._options import add_command, add_out, common
from firstlayer.cli._output import emit

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "demo"
HELP = "offline demo on the bundled CIFAR-10 sample, ending in a comparison report"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer demo`` to ``subparsers``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common()],
        "Offline: patch statistics of the bundled CIFAR-10 sample, a small CNN trained with true "
        "and with random labels, their energy profiles, the theory fit and a comparison report.",
    )
    add_out(p, "the runs and the report", folder=True, default="firstlayer-demo")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 4)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs (default 0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer demo``."""
    from firstlayer.demo import run_demo

    result = run_demo(
        out_dir=args.out,
        epochs=args.epochs,
        quick=args.quick,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        quiet=bool(args.quiet),
        command=["firstlayer", *args.argv],
        echo=not args.json,
    )
    if args.json:  # otherwise the demo has already told its story on stdout
        emit(args, "", result)
    return 0
