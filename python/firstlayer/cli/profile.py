"""``firstlayer profile``: the energy profile of a network's first layer."""

from __future__ import annotations

import argparse
from typing import Any

from firstlayer.cli._inputs import load_model, profile_for
from firstlayer.cli._options import (
    MODEL_HELP,
    add_command,
    add_out,
    check_data_args,
    common,
    data_options,
)
from firstlayer.cli._output import emit, write_profile

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "profile"
HELP = "energy profile of a network's first layer (PCA or DFT basis)"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer profile`` to ``subparsers``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common()],
        "Example: firstlayer profile runs/true --dataset sample --out profile.csv",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    data_options(p, stats=True, positional=False)
    g = p.add_argument_group("profile")
    g.add_argument("--basis", choices=("pca", "dft"), default="pca", help="default pca")
    g.add_argument("--init", metavar="FILE", help="initial weights (.npy) to subtract")
    g.add_argument("--no-init", action="store_true", help="do not subtract a run's initial weights")
    add_out(g, "the profile (.csv, .npy or .json)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer profile``."""
    check_data_args(args)
    model = load_model(args)
    profile, stats, info = profile_for(args, model)
    payload = {**info, "profile": profile}
    if args.basis == "pca":
        payload["eigenvalues"] = stats.pca().eigenvalues
    if args.out:
        write_profile(args.out, payload)
    lines = [
        f"{model.name}: {info['layer']} {tuple(info['shape'])}, {args.basis.upper()} basis, "
        f"normalisation {info['normalization']['name']}"
        + (", init subtracted" if info["init_subtracted"] else ""),
        "component  energy (max-normalised)",
    ]
    lines += [f"  {i + 1:4d}  {v:.6f}" for i, v in enumerate(profile)]
    if args.out:
        lines.append(f"saved to {args.out}")
    emit(args, "\n".join(lines), payload)
    return 0
