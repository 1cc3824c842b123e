"""``firstlayer spectrum``: the power spectrum of a dataset's images, or of saved statistics."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from firstlayer.cli._options import (
    add_command,
    add_out,
    common,
    data_options,
    dataset_of,
    positive_int,
)
from firstlayer.cli._output import emit
from firstlayer.exceptions import UsageError

if TYPE_CHECKING:
    from firstlayer.spectrum import ImageSpectrum

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "spectrum"
HELP = "power spectrum of a dataset's images, or of its patches from saved statistics"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer spectrum`` to ``subparsers``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common()],
        "Example: firstlayer spectrum cifar10-test, or firstlayer spectrum --stats s.npz",
    )
    data_options(p, stats=False, positional=True)
    g = p.add_argument_group("spectrum")
    g.add_argument(
        "--stats", metavar="FILE", help="patch power spectrum from saved statistics instead"
    )
    g.add_argument(
        "--bins", type=positive_int, default=None, help="radial bins (default: size / 2)"
    )
    add_out(g, "the spectrum (.npz, or .json)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer spectrum``."""
    if args.stats:
        if getattr(args, "source", None) or args.dataset:
            msg = "give either --stats or a dataset, not both"
            raise UsageError(msg)
        return _patch_spectrum(args)
    from firstlayer._progress import Progress
    from firstlayer.sources import open_source
    from firstlayer.spectrum import ImageSpectrum

    dataset = dataset_of(args)
    src = open_source(dataset, root=args.data_root)
    spec: ImageSpectrum | None = None
    progress = Progress(src.total, name=src.name, quiet=bool(args.quiet))
    t0 = time.monotonic()
    try:
        for step in src.steps(0, args.batch_size):
            for part in step.parts:
                if part.images.shape[0] == 0:
                    continue
                if spec is None:
                    spec = ImageSpectrum(np.zeros(0), 0)
                spec.update(part.images, layout=part.layout)
            progress.update(step.consumed)
    finally:
        progress.close()
        src.close()
    if spec is None or spec.count == 0:
        msg = f"dataset {dataset!r} yielded no images"
        raise ValueError(msg)
    if args.out:
        spec.save(args.out)
    f, p = spec.radial(args.bins)
    alpha = spec.alpha
    payload = {
        "dataset": dataset,
        "images": spec.count,
        "channels": spec.channels,
        "size": list(spec.shape),
        "alpha": alpha,
        "radial_frequency": f,
        "radial_power": p,
        "seconds": time.monotonic() - t0,
        "out": args.out,
    }
    lines = [
        f"{spec!r}",
        f"power ~ f^-alpha with alpha = {alpha:.4f} (least squares over the radial average)",
        "radial average (cycles/px, power):",
    ]
    lines += [f"  {fi:.4f}  {pi:.6g}" for fi, pi in zip(f, p, strict=True)]
    if args.out:
        lines.append(f"saved to {args.out}")
    emit(args, "\n".join(lines), payload)
    return 0


def _patch_spectrum(args: argparse.Namespace) -> int:
    from firstlayer._io import write_json
    from firstlayer.profile import radial_average
    from firstlayer.stats import PatchStats

    stats = PatchStats.load(args.stats)
    power = stats.spectrum()
    radii, radial = radial_average(power.sum(axis=0))
    payload = {
        "stats": args.stats,
        "kernel_size": stats.kernel_size,
        "channels": stats.channels,
        "patch_power": power,
        "radii": radii,
        "radial_power": radial,
    }
    if args.out:
        write_json(args.out, payload)
    lines = [
        f"patch DFT power of {stats!r}",
        "radial average over the k x k frequency grid (cycles/px, power summed over channels):",
    ]
    lines += [f"  {r:.4f}  {v:.6g}" for r, v in zip(radii, radial, strict=True)]
    emit(args, "\n".join(lines), payload)
    return 0
