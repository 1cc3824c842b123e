"""``firstlayer stats``: exact patch statistics of a dataset, on this machine or a Dask cluster."""

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
    patch_options,
    positive_int,
    stream_options,
)
from firstlayer.cli._output import emit
from firstlayer.exceptions import UsageError

if TYPE_CHECKING:
    from firstlayer.stats import PatchStats

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "stats"
HELP = "exact patch statistics of a dataset (count, mean, covariance, PCA)"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer stats`` to ``subparsers``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common()],
        "Example: firstlayer stats cifar10 -k 3 --out cifar10_k3.npz",
    )
    data_options(p, stats=False, positional=True)
    patch_options(p)
    g = p.add_argument_group("image folders (as torchvision's Resize / CenterCrop)")
    g.add_argument(
        "--resize",
        type=int,
        metavar="N",
        help="resize each image so that its shorter side is N (bilinear, as Pillow)",
    )
    g.add_argument("--center-crop", type=int, metavar="N", help="then keep the central N x N")
    g.add_argument("--grayscale", action="store_true", help="convert to one luminance channel")
    g.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="unreadable images (or smaller than the window): stop with the path (raise, the "
        "default) or count and list them (skip)",
    )
    g.add_argument(
        "--decoder",
        choices=("auto", "rust", "pillow"),
        default="auto",
        help="JPEG decoder: auto (Rust for baseline JPEGs, Pillow otherwise), rust, pillow",
    )
    g = p.add_argument_group("result")
    add_out(g, "the statistics (.npz)")
    g.add_argument(
        "--normalize",
        default=None,
        metavar="N",
        help="save the statistics of normalised images: none, imagenet, cifar10 or "
        "M1,M2,M3/S1,S2,S3 (default: raw pixels, exact)",
    )
    g.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="resume file for long runs (with --scheduler/--workers: a folder of finished shards)",
    )
    g.add_argument("--top", type=positive_int, default=10, help="eigenvalues to print (default 10)")
    g = p.add_argument_group("cluster (dask.distributed)")
    g.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="run the shards on a running Dask cluster, e.g. tcp://host:8786",
    )
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run the shards on a local cluster of N worker processes",
    )
    p.set_defaults(handler=run)
    return p


def _summary(stats: PatchStats, top: int) -> dict[str, Any]:
    """The JSON result of ``firstlayer stats``: geometry, counts, mean, PCA and a hash."""
    from firstlayer.report.compute import stats_sha256

    ev = stats.pca().eigenvalues
    total = float(ev.sum())
    return {
        "kernel_size": stats.kernel_size,
        "stride": stats.stride,
        "padding": stats.padding,
        "channels": stats.channels,
        "dim": stats.dim,
        "n_images": stats.n_images,
        "count": stats.count,
        "exact": stats.exact,
        "transform": stats.transform,
        "mean": stats.mean,
        "eigenvalues": ev,
        "explained_variance_ratio_top": (ev[:top] / total) if total > 0 else ev[:top] * 0,
        "class_counts": np.asarray(stats.class_counts, dtype=np.int64),
        "skipped": list(stats.skipped),
        "sha256": stats_sha256(stats),
    }


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer stats``."""
    from firstlayer._io import check_writable
    from firstlayer.report.inputs import parse_normalization

    dataset = dataset_of(args)
    norm = parse_normalization(args.normalize) if args.normalize else None
    if args.normalize and norm is None:
        msg = "--normalize auto needs a network; name the normalisation"
        raise UsageError(msg)
    options = stream_options(args)
    # Folder options only where given, so that other sources never see them.
    folder = {
        "resize": args.resize,
        "center_crop": args.center_crop,
        "grayscale": args.grayscale or None,
        "decoder": None if args.decoder == "auto" else args.decoder,
    }
    options.update({k: v for k, v in folder.items() if v is not None})
    if args.on_error != "raise":
        options["on_error"] = args.on_error
    if args.out:
        check_writable(args.out, "--out")  # before the work: a result is never lost at the end
    t0 = time.monotonic()
    if args.scheduler or args.workers is not None:
        from firstlayer.distributed import sharded_stats

        stats = sharded_stats(
            dataset,
            args.kernel_size,
            scheduler=args.scheduler,
            workers=args.workers,
            stride=args.stride,
            padding=args.padding,
            labels=args.labels,
            checkpoint_dir=args.checkpoint,
            **options,
        )
    else:
        from firstlayer.streaming import patch_stats

        if args.checkpoint:
            options["checkpoint"] = args.checkpoint
        stats = patch_stats(
            dataset,
            kernel_size=args.kernel_size,
            stride=args.stride,
            padding=args.padding,
            labels=args.labels,
            **options,
        )
    seconds = time.monotonic() - t0
    if norm is not None:
        stats = stats.normalized(list(norm.mean), list(norm.std), scale=norm.scale)
    if args.out:
        stats.save(args.out)
    result = _summary(stats, args.top)
    result.update({"dataset": dataset, "seconds": seconds, "out": args.out})
    ev = result["eigenvalues"]
    ratio = result["explained_variance_ratio_top"]
    lines = [
        f"{stats!r}",
        f"computed in {seconds:.2f} s" + (f", saved to {args.out}" if args.out else ""),
        f"top {len(ratio)} PCA eigenvalues (share of variance):",
    ]
    lines += [f"  {i + 1:3d}  {ev[i]:.6g}  ({ratio[i]:.2%})" for i in range(len(ratio))]
    counts = result["class_counts"]
    if len(counts):
        lines.append(f"patches per class: {', '.join(str(int(c)) for c in counts)}")
    if stats.skipped:
        lines.append(f"skipped {len(stats.skipped)} unreadable inputs, e.g. {stats.skipped[0]}")
    emit(args, "\n".join(lines), result)
    return 0
