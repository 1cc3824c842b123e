"""``firstlayer compare``: compare first layers in an HTML/JSON/CSV/PNG report."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from firstlayer.cli._inputs import provider, runs_dataset
from firstlayer.cli._options import (
    MODEL_HELP,
    add_command,
    add_out,
    check_data_args,
    common,
    data_options,
)
from firstlayer.cli._output import emit, say

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "compare"
HELP = "compare first layers and write an HTML/JSON/CSV/PNG report"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer compare`` to ``subparsers``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common()],
        "Inputs: run directories, checkpoints, state dicts, FILE:KEY, ARCH=WEIGHTS or torchvision "
        "names; a folder of checkpoints or an .npz of several layers stands for each model in it "
        "(a zoo, grouped by patch geometry).\nExample: firstlayer compare runs/true runs/random "
        "--dataset sample --out report",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=MODEL_HELP)
    data_options(p, stats=True, positional=False)
    g = p.add_argument_group("report")
    add_out(g, "the report", folder=True, required=True)
    g.add_argument("--names", metavar="A,B,..", help="display names, one per input")
    g.add_argument("--title", help="page title")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer compare``."""
    check_data_args(args)
    from firstlayer.report import build_report, parse_normalization, resolve_models

    progress = say(args)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    progress(f"reading {len(args.inputs)} input(s)")
    models = resolve_models(list(args.inputs), names)
    report = build_report(
        models,
        args.out,
        provider=provider(args, runs_dataset(models)),
        normalization=parse_normalization(args.normalize),
        title=args.title,
        command=["firstlayer", *args.argv],
        progress=progress,
    )
    fits = {m["name"]: m["fit"] for m in report.data["models"]}
    lines = [f"report written to {report.index}"]
    for name, f in fits.items():
        if "t" in f:
            lines.append(f"  {name}: theory fit t = {f['t']:.4g}, r = {f['correlation']:.4f}")
    for g in report.data["groups"]:
        if len(g["models"]) > 1:
            r = np.asarray(g["correlation"])
            off = r[~np.eye(len(r), dtype=bool)]
            lines.append(
                f"  group {g['key']}: profile correlations {off.min():.4f} .. {off.max():.4f}"
            )
    for p in report.data.get("pairs", []):
        tr, al = p["trajectory"], p["aligned"]
        line = f"  {p['a']} vs {p['b']}: r = {p['final']:.4f} at the end"
        if tr["correlation"]:
            line += (
                f", {min(tr['correlation']):.4f}..{max(tr['correlation']):.4f} over "
                f"{len(tr['step'])} matched steps"
            )
        if al["correlation"]:
            line += (
                f"; at matched fitted eta*t (beyond the paper) r = {al['correlation'][-1]:.4f} "
                f"at eta*t = {al['eta_t'][-1]:.3g}"
            )
        lines.append(line)
    for m in report.data["models"]:
        g = m.get("regime")
        if g:
            acc = "n/a" if g["train_acc"] is None else f"{g['train_acc']:.1%}"
            lines.append(
                f"  {m['name']}: train acc {acc}, fitted eta*t {g['eta_t']:.3g}, "
                f"|W - W0|/|W0| {g['relative_change']:.3g}, {g['settling']}"
            )
    payload = {
        "index": str(report.index),
        "report_json": str(report.folder / "report.json"),
        "profiles_csv": str(report.folder / "profiles.csv"),
        "figures": [f["file"] for f in report.data["figures"]],
        "fits": fits,
        "pairs": [{k: p[k] for k in ("a", "b", "final", "trajectory", "aligned")}
                  for p in report.data.get("pairs", [])],
        "regimes": {m["name"]: m["regime"] for m in report.data["models"] if m.get("regime")},
    }  # fmt: skip
    emit(args, "\n".join(lines), payload)
    return 0
