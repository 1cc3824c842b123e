"""Build a comparison report: compute, draw, render, and write the folder atomically."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from firstlayer.report.compute import StatsProvider, compute_report, tolist
from firstlayer.report.inputs import ModelInput, Normalization, file_sha256

__all__ = ["REPORT_FORMAT", "REPORT_VERSION", "Report", "build_report", "versions"]

REPORT_FORMAT = "firstlayer.report"
REPORT_VERSION = 1


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote.

    Attributes
    ----------
    folder : pathlib.Path
        The report folder.
    index : pathlib.Path
        ``index.html`` in it.
    data : dict
        The content of ``report.json``.
    """

    folder: Path
    index: Path
    data: dict[str, Any]


def versions() -> dict[str, str]:
    """Versions of firstlayer, Python, the platform and the packages a report depends on."""
    import firstlayer

    out = {
        "firstlayer": firstlayer.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in ("numpy", "torch", "torchvision", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    from firstlayer import _core

    out["rust core threads"] = str(_core.num_threads())
    return out


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return s[:60]


def _figures(
    report: dict[str, Any],
    models: list[ModelInput],
    say: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    from firstlayer.report import plots

    figs: list[dict[str, Any]] = []
    pngs: dict[str, bytes] = {}
    used: set[str] = set()

    def add(section: str, stem: str, title: str, caption: str, png: bytes, **refs: Any) -> None:
        name, i = f"{stem}.png", 2
        while name in used:
            name, i = f"{stem}-{i}.png", i + 1
        used.add(name)
        pngs[name] = png
        figs.append({"file": name, "section": section, "title": title, "caption": caption, **refs})

    by_name = {m["name"]: m for m in report["models"]}
    inputs = {m.name: m for m in models}
    class_names = report["data"].get("class_names")
    for g in report["groups"]:
        say(f"plots of group {g['key']}")
        ms = [by_name[n] for n in g["models"]]
        gs = _slug(g["key"])
        add(
            "profiles",
            f"profiles_{gs}",
            f"Energy profiles, group {g['key']}",
            "Left: linear axis; right: log axis. Values: report.json models[].profile.",
            plots.profiles_figure(g, ms),
            group=g["key"],
        )
        add(
            "correlation",
            f"correlation_{gs}",
            f"Profile correlations, group {g['key']}",
            "Pearson correlation of every pair of profiles: groups[].correlation.",
            plots.correlation_figure(g),
            group=g["key"],
        )
        add(
            "patches",
            f"eigenspectrum_{gs}",
            f"Patch eigen-spectrum, group {g['key']}",
            "Eigenvalues of the patch covariance, their cumulative share and the patch DFT "
            "power (summed over channels): groups[].eigenvalues, .explained_variance_ratio, "
            ".patch_power_spectrum.",
            plots.eigenspectrum_figure(g),
            group=g["key"],
        )
        if g.get("labels"):
            add(
                "labels",
                f"labels_{gs}",
                f"Label/patch assumption check, group {g['key']}",
                "Correlation of each one-vs-all label with each PCA coefficient, and distance of "
                "each class-mean patch from the mean: groups[].labels.",
                plots.labels_figure(g, class_names),
                group=g["key"],
            )
    for m in report["models"]:
        say(f"plots of {m['name']}")
        stem = _slug(m["name"])
        if "t" in m["fit"]:
            add(
                "fit",
                f"fit_{stem}",
                f"Theory fit, {m['name']}",
                "The profile and the linear-CNN formula at the fitted t: models[].fit.",
                plots.fit_figure(m),
                model=m["name"],
            )
        if m.get("init"):
            add(
                "init",
                f"init_{stem}",
                f"{m['name']} against its initialisation",
                "Profiles of the change from init, of the raw final weights and of the init: "
                "models[].profile and models[].init.",
                plots.init_figure(m),
                model=m["name"],
            )
        add(
            "dft",
            f"dft_{stem}",
            f"DFT energy, {m['name']}",
            "Filter energy per spatial frequency: models[].dft.",
            plots.dft_figure(m),
            model=m["name"],
        )
        mi = inputs[m["name"]]
        add(
            "filters",
            f"filters_{stem}",
            f"Filters, {m['name']}",
            "Each filter scaled to its own maximum, grey = 0.",
            plots.filters_figure(m["name"], mi.weight, mi.init),
            model=m["name"],
        )
    return figs, pngs


def _profiles_csv(report: dict[str, Any]) -> str:
    groups = {g["key"]: g for g in report["groups"]}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "model",
            "group",
            "component",
            "eigenvalue",
            "profile",
            "profile_raw",
            "init_profile",
            "theory",
        ]
    )
    for m in report["models"]:
        ev = groups[m["group"]]["eigenvalues"]
        init = m.get("init") or {}
        curve = m["fit"].get("curve")
        for i, v in enumerate(m["profile"]):
            w.writerow(
                [
                    m["name"],
                    m["group"],
                    i + 1,
                    repr(ev[i]),
                    repr(v),
                    repr(init["profile_raw"][i]) if init else "",
                    repr(init["init_profile"][i]) if init else "",
                    repr(curve[i]) if curve is not None else "",
                ]
            )
    return buf.getvalue()


def _write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``out`` so that readers never see a half-written report.

    Everything is written and flushed in a staging folder beside ``out`` first. A new ``out`` is
    then one rename; an existing one has each file replaced by rename, ``index.html`` last, and
    the figures of a previous report that the new one does not have removed.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, payload in files.items():
            with open(stage / name, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        if not out.exists():
            os.rename(stage, out)
            return
        if not out.is_dir():
            msg = f"out: {out} exists and is not a folder"
            raise FileExistsError(msg)
        old: list[str] = []
        with_json = out / "report.json"
        if with_json.is_file():
            try:
                prev = json.loads(with_json.read_text())
                old = [f["file"] for f in prev.get("figures", []) if isinstance(f, dict)]
            except (json.JSONDecodeError, OSError, TypeError, KeyError):
                old = []
        order = sorted(files, key=lambda n: (n == "index.html", n == "report.json", n))
        for name in order:
            os.replace(stage / name, out / name)
        for name in old:
            if name not in files and "/" not in name and name.endswith(".png"):
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def build_report(
    models: Sequence[ModelInput],
    out: str | os.PathLike[str],
    *,
    provider: StatsProvider,
    normalization: Normalization | None = None,
    title: str | None = None,
    command: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Compare first layers and write the report folder.

    Parameters
    ----------
    models : sequence of ModelInput
        Resolved inputs with unique names (see :func:`firstlayer.report.resolve_models`).
    out : path
        Report folder; created, or its report files replaced.
    provider : StatsProvider
        Patch statistics: fixed, or computed from a dataset per kernel size.
    normalization : Normalization, optional
        Input normalisation of every model (default: each model's own, see
        :func:`firstlayer.report.compute.compute_report`).
    title : str, optional
        Page title.
    command : sequence of str, optional
        Command line to record (default ``sys.argv``).
    progress : callable, optional
        Called with a short message before each stage.

    Returns
    -------
    Report

    Raises
    ------
    ValueError
        If no model is given or a model does not fit the statistics.
    """
    models = list(models)
    if not models:
        msg = "models: expected at least one first layer to report on, got none"
        raise ValueError(msg)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        msg = f"models: expected unique names, got {names}"
        raise ValueError(msg)
    say = progress or (lambda _msg: None)
    numbers = compute_report(models, provider, normalization=normalization, progress=say)
    data = dict(provider.description or {})
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "title": title or "firstlayer comparison report",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": list(command if command is not None else sys.argv),
        "provenance": {
            "versions": versions(),
            "seeds": {m.name: m.meta.get("seed") for m in models},
        },
        "data": data,
        **numbers,
    }
    report = tolist(report)
    figs, pngs = _figures(report, models, say)
    report["figures"] = figs
    from firstlayer.report.html import render_html

    say("writing the report")
    page = render_html(report, pngs)
    files: dict[str, bytes] = dict(pngs)
    files["report.json"] = (json.dumps(report, indent=1, allow_nan=False) + "\n").encode()
    files["profiles.csv"] = _profiles_csv(report).encode()
    files["index.html"] = page.encode()
    folder = Path(out)
    _write_folder(folder, files)
    return Report(folder=folder, index=folder / "index.html", data=report)


def dataset_description(dataset: str, **options: Any) -> dict[str, Any]:
    """Provenance of a dataset argument: name, resolved path, SHA-256 of a file, class names.

    Parameters
    ----------
    dataset : str
        A dataset name or path, as for :func:`firstlayer.patch_stats`.
    **options
        ``root`` (where named datasets live) and ``download`` (fetch a missing named dataset,
        as :func:`firstlayer.patch_stats` would; default True).

    Returns
    -------
    dict
        ``name``, and when known ``path``, ``sha256``, ``images``, ``class_names``, ``source``.
    """
    from firstlayer import sources

    desc: dict[str, Any] = {"name": dataset}
    key = dataset.lower()
    path = Path(dataset).expanduser()
    if key in ("sample", "sample-train") and not path.exists():
        sample = sources._sample_path()
        desc["path"] = str(sample)
        desc["sha256"] = file_sha256(sample)
    elif path.is_file():
        desc["path"] = str(path.resolve())
        desc["sha256"] = file_sha256(path)
    elif path.is_dir():
        desc["path"] = str(path.resolve())
    src = sources.open_source(
        dataset, root=options.get("root"), download=bool(options.get("download", True))
    )
    try:
        desc["source"] = src.fingerprint()
        if src.total is not None:
            desc["images"] = int(src.total)
        if src.class_names:
            desc["class_names"] = list(src.class_names)
    finally:
        src.close()
    return desc
