"""Every number of a comparison report, computed with firstlayer's public API.

Nothing here draws: :func:`compute_report` returns a JSON-ready ``dict`` (the future
``report.json``) from the resolved models and the patch statistics. Models are grouped by the
patches they see: kernel size, channels and input normalisation. Profiles are compared only within
a group, because a profile is a list of energies along that group's PCA components.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer.report.inputs import NORMALIZATIONS, ModelInput, Normalization
from firstlayer.stats import PatchStats

__all__ = ["StatsProvider", "compute_report", "group_stats", "stats_sha256"]


def stats_sha256(stats: PatchStats) -> str:
    """Hash the statistics' raw moments (the same for bit-identical statistics)."""
    h = hashlib.sha256()
    h.update(
        f"{stats.kernel_size}|{stats.stride}|{stats.padding}|{stats.channels}|{stats.exact}|"
        f"{stats.count}|{stats.n_images}|{stats.transform}|".encode()
    )
    for a in (stats.sum, stats.second_moment, stats.class_counts, stats.class_sums):
        arr = np.ascontiguousarray(a)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class StatsProvider:
    """Where the patch statistics of a report come from.

    Either fixed statistics (``--stats FILE``) or a dataset streamed once per kernel size
    (``--dataset NAME|PATH``).

    Attributes
    ----------
    stats : PatchStats or None
        Fixed statistics.
    dataset : str or None
        Dataset name or path for :func:`firstlayer.streaming.patch_stats`.
    description : dict
        Provenance of the data (name, path, file hashes).
    options : dict
        Extra keyword arguments for :func:`firstlayer.streaming.patch_stats` (root, batch size,
        quiet...).
    """

    stats: PatchStats | None = None
    dataset: str | None = None
    description: dict[str, Any] | None = None
    options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """Start with no statistics computed."""
        self._cache: dict[int, PatchStats] = {}

    def raw(self, kernel_size: int, channels: int, model: str) -> PatchStats:
        """Statistics of ``kernel_size`` patches (before any normalisation, when available)."""
        if self.stats is not None:
            s = self.stats
            if (s.kernel_size, s.channels) != (kernel_size, channels):
                msg = (
                    f"{model}: its first layer has {channels}x{kernel_size}x{kernel_size} filters "
                    f"but the statistics hold {s.channels}x{s.kernel_size}x{s.kernel_size} "
                    "patches; pass --dataset instead of --stats, or statistics of that size"
                )
                raise ValueError(msg)
            return s
        if kernel_size not in self._cache:
            from firstlayer.streaming import patch_stats

            assert self.dataset is not None
            self._cache[kernel_size] = patch_stats(
                self.dataset, kernel_size=kernel_size, **(self.options or {})
            )
        s = self._cache[kernel_size]
        if s.channels != channels:
            msg = (
                f"{model}: its first layer takes {channels} input channels but the dataset has "
                f"{s.channels}"
            )
            raise ValueError(msg)
        return s


def group_stats(raw: PatchStats, norm: Normalization) -> PatchStats:
    """Return the statistics of the patches as a network with normalisation ``norm`` saw them.

    Statistics that already carry a transform (saved after ``normalized``) are used as they are.
    """
    if raw.transform is not None:
        return raw
    return raw.normalized(list(norm.mean), list(norm.std), scale=norm.scale)


def _normalization_of(
    model: ModelInput, override: Normalization | None, raw: PatchStats
) -> Normalization:
    if raw.transform is not None:
        t = raw.transform
        return Normalization("from-stats", tuple(t["mean"]), tuple(t["std"]), float(t["scale"]))
    if override is not None:
        return override
    if model.normalization is not None:
        return model.normalization
    return NORMALIZATIONS["imagenet"] if model.kind == "torchvision" else NORMALIZATIONS["none"]


def _pca_block(stats: PatchStats) -> dict[str, Any]:
    pca = stats.pca()
    ev = pca.eigenvalues
    total = float(ev.sum())
    return {
        "eigenvalues": ev,
        "explained_variance_ratio": ev / total if total > 0 else np.zeros_like(ev),
        "patch_power_spectrum": stats.spectrum(),
    }


def _label_block(stats: PatchStats) -> dict[str, Any] | None:
    if len(stats.class_counts) == 0 or int(np.sum(stats.class_counts)) == 0:
        return None
    from firstlayer.theory import label_patch_correlation

    lc = label_patch_correlation(stats)
    return {
        "level": lc.level,
        "classes": lc.classes,
        "class_counts": np.asarray(stats.class_counts)[lc.classes].astype(np.int64),
        "coefficient": lc.coefficient,
        "max_abs_coefficient": lc.summary,
        "class_mean_distance": lc.class_mean_distance,
    }


def _model_block(m: ModelInput, stats: PatchStats, group: str) -> dict[str, Any]:
    from firstlayer.profile import dft_profile, energy_profile, profile_correlation
    from firstlayer.theory import fit

    profile = energy_profile(m.weight, stats, init=m.init)
    out: dict[str, Any] = {
        "name": m.name,
        "input": m.spec,
        "kind": m.kind,
        "layer": m.layer,
        "group": group,
        "shape": list(m.weight.shape),
        "init_known": m.init is not None,
        "meta": dict(m.meta),
        "files": dict(m.files),
        "weight_norm": float(np.linalg.norm(m.weight)),
        "profile": profile,
    }
    if m.init is not None:
        raw = energy_profile(m.weight, stats)
        init_profile = energy_profile(m.init, stats)
        init_norm = float(np.linalg.norm(m.init))
        out["init"] = {
            "profile_raw": raw,
            "init_profile": init_profile,
            "init_norm": init_norm,
            "relative_change": float(np.linalg.norm(m.weight - m.init)) / init_norm
            if init_norm > 0
            else None,
            "correlation_delta_vs_init": profile_correlation(profile, init_profile),
            "correlation_raw_vs_init": profile_correlation(raw, init_profile),
            "correlation_delta_vs_raw": profile_correlation(profile, raw),
        }
    dft = dft_profile(m.weight, init=m.init)
    out["dft"] = {
        "total": dft.total,
        "per_channel": dft.per_channel,
        "radii": dft.radii,
        "radial": dft.radial,
    }
    try:
        r = fit(profile, stats)
    except ValueError as exc:  # a constant profile cannot be fitted
        out["fit"] = {"error": str(exc)}
    else:
        out["fit"] = {
            "t": r.t,
            "eta": r.eta,
            "eta_t": r.eta_t,
            "correlation": r.correlation,
            "curve": r.curve,
        }
    return out


def compute_report(
    models: list[ModelInput],
    provider: StatsProvider,
    *,
    normalization: Normalization | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All the numbers of a comparison report.

    Parameters
    ----------
    models : list of ModelInput
        Resolved inputs (unique names).
    provider : StatsProvider
        The patch statistics.
    normalization : Normalization, optional
        Input normalisation for every model; by default each model's own (run configuration),
        ImageNet's for torchvision models, and pixels in [0, 1] otherwise.
    progress : callable, optional
        Called with a short message before each stage.

    Returns
    -------
    dict
        ``{"groups": [...], "models": [...], "pairs": [...]}`` with numpy arrays (see
        :func:`firstlayer._io.jsonable`). ``pairs`` holds, for every two training runs of a
        group, ``trajectory`` (step, correlation, each run's fitted ``eta_t``) and ``aligned``
        (``eta_t``, correlation; beyond the paper), and each run's model block gains ``regime``
        (:func:`firstlayer.trajectory.compare_runs`).

    Raises
    ------
    ValueError
        If a model does not fit the statistics.
    """
    from firstlayer.profile import correlation_matrix

    say = progress or (lambda _msg: None)
    groups: dict[str, dict[str, Any]] = {}
    group_of: dict[str, str] = {}
    group_st: dict[str, PatchStats] = {}
    for m in models:
        say(f"patch statistics for {m.name} ({m.channels}x{m.kernel_size}x{m.kernel_size})")
        raw = provider.raw(m.kernel_size, m.channels, m.name)
        norm = _normalization_of(m, normalization, raw)
        key = f"k{m.kernel_size}-c{m.channels}-{norm.key}"
        if key in groups and groups[key]["normalization"] != norm.to_dict():
            key = f"{key}-{len(groups)}"
        if key not in groups:
            st = group_stats(raw, norm)
            group_st[key] = st
            groups[key] = {
                "key": key,
                "kernel_size": m.kernel_size,
                "channels": m.channels,
                "normalization": norm.to_dict(),
                "count": st.count,
                "n_images": st.n_images,
                "stats_sha256": stats_sha256(raw),
                "models": [],
                **_pca_block(st),
                "labels": _label_block(st),
            }
        groups[key]["models"].append(m.name)
        group_of[m.name] = key
    out_models = []
    for m in models:
        say(f"profiles, spectra and theory fit of {m.name}")
        key = group_of[m.name]
        out_models.append(_model_block(m, group_st[key], key))
    by_name = {b["name"]: b for b in out_models}
    for g in groups.values():
        profiles = [by_name[n]["profile"] for n in g["models"]]
        g["correlation"] = correlation_matrix(profiles)
    pairs = _trajectory_blocks(models, group_of, group_st, by_name, say)
    return {"groups": list(groups.values()), "models": out_models, "pairs": pairs}


def _trajectory_blocks(
    models: list[ModelInput],
    group_of: dict[str, str],
    group_st: dict[str, PatchStats],
    by_name: dict[str, dict[str, Any]],
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Each run's regime (``models[].regime``) and, for every pair of runs of a group, the
    comparison along training (``trajectory``) and at matched fitted eta*t (``aligned``).

    Only training-run folders carry snapshots; other inputs get neither block.
    """
    from pathlib import Path

    from firstlayer.trajectory import SETTLE_RULE, compare_runs, run_trajectory

    trajs: dict[str, Any] = {}
    for m in models:
        if m.kind != "run":
            continue
        say(f"trajectory of {m.name}")
        try:
            t = run_trajectory(Path(m.spec), group_st[group_of[m.name]], name=m.name)
        except FileNotFoundError:  # a run trained without snapshots
            continue
        trajs[m.name] = t
        by_name[m.name]["regime"] = {**t.regime(), "rule": SETTLE_RULE}
    pairs = []
    names = list(trajs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if group_of[a] != group_of[b]:
                continue
            block = compare_runs(trajs[a], trajs[b]).to_dict()
            block["group"] = group_of[a]
            block.pop("regime")  # each run's regime is in models[].regime
            pairs.append(block)
    return pairs
