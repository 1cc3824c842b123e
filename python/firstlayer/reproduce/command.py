"""The ``firstlayer reproduce`` command: its options, ``--plan``, and the printed summary.

``firstlayer.cli`` adds these options to its ``reproduce`` sub-parser with
:func:`add_reproduce_arguments` and runs the command with :func:`reproduce_from_args`.
"""

from __future__ import annotations

import argparse

from firstlayer._io import dumps
from firstlayer.reproduce.claims import format_claims
from firstlayer.reproduce.run import reproduce
from firstlayer.reproduce.scales import EXPERIMENTS, SCALES, plan

__all__ = ["add_reproduce_arguments", "reproduce_from_args"]


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``firstlayer reproduce`` to ``parser``."""
    parser.description = (parser.description or "") + (
        " Runs the experiments of Chowers & Weiss (ICML 2023) at a scale and writes a report "
        "with the paper's numbers and the measured ones side by side (claims.json, index.html)."
        "\n\nExperiments (--only N):\n"
        + "\n".join(f"  {n}  {t}" for n, t in EXPERIMENTS.items())
        + "\n\nExample: firstlayer reproduce --scale small --out repro --threads 2"
    )
    parser.add_argument(
        "--scale", choices=tuple(SCALES), default="small",
        help="tiny (a minute, for tests), small (2 CPU cores, < 45 min), paper (GPU); "
        "default small",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=int, action="append", choices=tuple(EXPERIMENTS), metavar="N",
        help="run only experiment N (1-8); repeat for several",
    )  # fmt: skip
    parser.add_argument("-o", "--out", default="firstlayer-reproduce", metavar="DIR",
                        help="output folder (default firstlayer-reproduce)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the training runs and a time estimate; run nothing",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="recompute finished experiments (finished runs are reused)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="training device (default auto)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for training")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="folder of the shared data files (default $FIRSTLAYER_DATA, "
                        "~/.cache/firstlayer, then <repo>/../shared/data)")  # fmt: skip


def reproduce_from_args(args: argparse.Namespace) -> int:
    """Run ``firstlayer reproduce`` from parsed arguments; print a summary; return 0."""
    if getattr(args, "plan", False):
        p = plan(args.scale, args.only)
        if getattr(args, "json", False):
            print(dumps(p, indent=None))
            return 0
        for name, r in p["runs"].items():
            est = r["estimated_seconds"]
            print(f"{name:<32} {r['epochs']:>4} epochs  " + (f"~{est:.0f}s" if est else ""))
        total = p["estimated_seconds"]
        text = "no CPU estimate" if total is None else f"~{total / 60:.0f} min on 2 CPU cores"
        print(f"{len(p['runs'])} runs for experiments {p['experiments']}: {text}")
        return 0
    res = reproduce(
        args.out,
        scale=args.scale,
        only=args.only,
        resume=bool(args.resume),
        force=bool(args.force),
        device=args.device,
        threads=args.threads,
        data_root=args.data_root,
        quiet=bool(getattr(args, "quiet", False)),
        command=["firstlayer", *getattr(args, "argv", [])],
    )
    if getattr(args, "json", False):
        payload = {"out": str(res.out_dir), "index": str(res.index), "seconds": res.seconds,
                   "claims": res.claims}  # fmt: skip
        print(dumps(payload, indent=None))
        return 0
    print(format_claims(res.claims))
    words = [c.get("verdict") for c in res.claims]
    counts = {w: words.count(w) for w in ("holds", "does not hold", "not comparable")}
    print(f"{counts['holds']} hold, {counts['does not hold']} do not hold, "
          f"{counts['not comparable']} not comparable; {res.seconds / 60:.1f} min")  # fmt: skip
    print(f"report: {res.index}")
    return 0
