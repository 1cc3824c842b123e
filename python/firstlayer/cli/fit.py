"""``firstlayer fit``: fit the linear-CNN theory to a first layer's energy profile."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._io import read_npy
from firstlayer.cli._inputs import load_model, profile_for, provider
from firstlayer.cli._options import (
    MODEL_HELP,
    add_command,
    add_out,
    check_data_args,
    common,
    data_options,
)
from firstlayer.cli._output import emit, write_profile
from firstlayer.exceptions import UsageError

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "fit"
HELP = "fit the linear-CNN theory to a first layer's energy profile"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer fit`` to ``subparsers``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common()],
        "Example: firstlayer fit pretrained.npz:resnet18 --normalize imagenet",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP + ", or a profile .npy with --stats")
    data_options(p, stats=True, positional=False)
    g = p.add_argument_group("fit")
    g.add_argument("--eta", type=float, default=None, help="step size (default 0.01 / max eig)")
    g.add_argument("--n-components", type=int, default=None, help="fit the first N only")
    g.add_argument("--init", metavar="FILE", help="initial weights (.npy) to subtract")
    g.add_argument("--no-init", action="store_true", help="do not subtract a run's init")
    add_out(g, "the fit (.json)")
    p.set_defaults(handler=run, basis="pca")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer fit``."""
    check_data_args(args)
    from firstlayer.theory import fit

    path = Path(args.model)
    arr = read_npy(path, "MODEL") if path.suffix == ".npy" and path.is_file() else None
    if arr is not None and arr.ndim == 1:
        from firstlayer.report.compute import group_stats
        from firstlayer.report.inputs import NORMALIZATIONS, parse_normalization

        source = provider(args)
        if source.stats is None:
            msg = "a profile (.npy of one dimension) needs --stats: the statistics it was made with"
            raise UsageError(msg)
        norm = parse_normalization(args.normalize) or NORMALIZATIONS["none"]
        stats = group_stats(source.stats, norm)
        profile = arr.astype(np.float64)
        info: dict[str, Any] = {"model": path.stem, "input": args.model, "data": source.description}
    else:
        profile, stats, info = profile_for(args, load_model(args))
    r = fit(profile, stats, eta=args.eta, n_components=args.n_components)
    payload = {
        **info,
        "t": r.t,
        "eta": r.eta,
        "eta_t": r.eta_t,
        "correlation": r.correlation,
        "profile": profile,
        "curve": r.curve,
    }
    if args.out:
        write_profile(args.out, payload)
    text = (
        f"{info['model']}: linear-CNN theory fit t = {r.t:.6g} steps at eta = {r.eta:.4g} "
        f"(eta*t = {r.eta_t:.6g}), correlation r = {r.correlation:.6f}"
    )
    emit(args, text, payload)
    return 0
