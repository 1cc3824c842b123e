"""The inputs of ``profile``, ``fit`` and ``compare``: first layers and the statistics to read them.

A first layer comes from :func:`firstlayer.report.resolve_model`; the statistics from saved
``--stats`` or from a dataset (by default the one the runs were trained on), as the comparison
report computes them.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from firstlayer.cli._options import dataset_of, stream_options
from firstlayer.exceptions import UsageError

if TYPE_CHECKING:
    from firstlayer.report.compute import StatsProvider
    from firstlayer.report.inputs import ModelInput
    from firstlayer.stats import PatchStats

__all__ = ["load_model", "profile_for", "provider", "runs_dataset"]


def provider(args: argparse.Namespace, runs_dataset: str | None = None) -> StatsProvider:
    """The statistics the options name: ``--stats``, else the dataset (or ``runs_dataset``)."""
    from firstlayer.report.build import dataset_description
    from firstlayer.report.compute import StatsProvider
    from firstlayer.report.inputs import file_sha256
    from firstlayer.stats import PatchStats

    dataset = dataset_of(args, default=None)
    if args.stats and dataset:
        msg = "give either --stats or --dataset, not both"
        raise UsageError(msg)
    if args.stats:
        stats = PatchStats.load(args.stats)
        desc = {
            "name": f"statistics {Path(args.stats).name}",
            "stats_file": str(Path(args.stats).resolve()),
            "sha256": file_sha256(args.stats),
            "images": stats.n_images,
        }
        return StatsProvider(stats=stats, description=desc)
    dataset = dataset or runs_dataset or "sample"
    return StatsProvider(
        dataset=dataset,
        description=dataset_description(dataset, root=args.data_root),
        options=stream_options(args),
    )


def runs_dataset(models: list[ModelInput]) -> str | None:
    """Return the dataset every run input was trained on, when they agree."""
    names = {m.meta.get("dataset") for m in models if m.kind == "run"}
    names.discard(None)
    if len(names) == 1:
        name = names.pop()
        return name if isinstance(name, str) else None
    return None


def profile_for(
    args: argparse.Namespace, model: ModelInput
) -> tuple[np.ndarray, PatchStats, dict[str, Any]]:
    """(profile, stats, info) of one resolved model, as ``compare`` computes it."""
    from firstlayer.profile import energy_profile
    from firstlayer.report.compute import _normalization_of, group_stats
    from firstlayer.report.inputs import parse_normalization

    source = provider(args, runs_dataset([model]))
    raw = source.raw(model.kernel_size, model.channels, model.name)
    norm = _normalization_of(model, parse_normalization(args.normalize), raw)
    stats = group_stats(raw, norm)
    init = None if getattr(args, "no_init", False) else model.init
    basis: Literal["pca", "dft"] = "dft" if getattr(args, "basis", "pca") == "dft" else "pca"
    profile = energy_profile(model.weight, stats, basis=basis, init=init)
    info = {
        "model": model.name,
        "input": model.spec,
        "layer": model.layer,
        "shape": list(model.weight.shape),
        "init_subtracted": init is not None,
        "normalization": norm.to_dict(),
        "data": source.description,
        "basis": basis,
    }
    return profile, stats, info


def load_model(args: argparse.Namespace) -> ModelInput:
    """The first layer ``MODEL`` names, with the initial weights of ``--init`` when given."""
    from firstlayer.report.inputs import resolve_model

    model = resolve_model(args.model)
    if getattr(args, "init", None):
        from firstlayer._io import read_npy

        init = read_npy(args.init, "--init").astype(np.float64)
        if init.shape != model.weight.shape:
            msg = f"--init: shape {init.shape} differs from the first layer {model.weight.shape}"
            raise ValueError(msg)
        model = dataclasses.replace(model, init=init)
    return model
