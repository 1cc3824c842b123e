"""Build a comparison report: compute, draw, render, and write the folder atomically."""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import io
import json
import os
import platform
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from firstlayer._io import dumps, fsync_dir, jsonable
from firstlayer.report.compute import StatsProvider, compute_report
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
    from firstlayer import _core

    out = {
        "firstlayer": _core.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in ("numpy", "torch", "torchvision", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
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
    pairs = report.get("pairs") or []
    if pairs:
        from firstlayer.report.trajectory_plots import pair_trajectories_figure

        say("plots along training")
        for key in dict.fromkeys(p["group"] for p in pairs):
            chosen = _figure_pairs([p for p in pairs if p["group"] == key], by_name)
            add(
                "trajectory",
                f"trajectory_{_slug(key)}",
                f"Along training, group {key}",
                "Left: profile correlation of two runs at the same optimiser steps (the paper's "
                "end-of-training number, read at every snapshot). Right: at matched fitted "
                "eta*t, each run's profile interpolated between its snapshots (an extension "
                "beyond the paper). Values: report.json pairs[].trajectory and pairs[].aligned"
                + (f"; {len(chosen)} of {sum(p['group'] == key for p in pairs)} pairs drawn."
                   if len(chosen) < sum(p["group"] == key for p in pairs) else "."),
                pair_trajectories_figure(chosen),
                group=key,
            )  # fmt: skip
    return figs, pngs


def _figure_pairs(
    pairs: list[dict[str, Any]], by_name: dict[str, dict[str, Any]], most: int = 8
) -> list[dict[str, Any]]:
    """At most ``most`` pairs to draw: runs that differ in their labels (true vs random) first,
    then pairs of one seed, then the rest, in report order."""

    def meta(name: str, key: str) -> Any:
        return by_name.get(name, {}).get("meta", {}).get(key)

    def rank(p: dict[str, Any]) -> int:
        labels_differ = meta(p["a"], "labels") != meta(p["b"], "labels")
        same_seed = meta(p["a"], "seed") == meta(p["b"], "seed")
        return 0 if labels_differ and same_seed else 1 if labels_differ else 2 if same_seed else 3

    return sorted(pairs, key=rank)[:most]


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


def _backup_of(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    # Old kernels, filesystems without the flag and sandboxes refusing the call: use renames.
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _recover(out_dir: Path) -> None:
    """Undo or finish a folder swap of :func:`_write_folder` that was killed half-way."""
    backup = _backup_of(out_dir)
    if not os.path.lexists(backup):
        return
    if not os.path.lexists(out_dir):
        # Killed between ``out_dir -> backup`` and ``stage -> out_dir``: the backup is the whole
        # old one.
        os.rename(backup, out_dir)
        fsync_dir(out_dir.parent)
        return
    # Killed after the swap, while removing the old folder. Every entry of it that was not the
    # old report was carried into ``out_dir``; if one is missing, ``out_dir`` is not what the swap
    # made (say it was created anew), and the backup may hold the user's only copy: keep it.
    ours = _report_names(backup)
    missing = [
        p.name
        for p in backup.iterdir()
        if p.name not in ours and not os.path.lexists(out_dir / p.name)
    ]
    if missing:
        msg = (
            f"out_dir: {out_dir} and {backup.name}, the previous folder kept by an interrupted "
            f"report write, both exist and only the latter has {sorted(missing)[:5]}; move what "
            f"you need out of {backup} and delete it"
        )
        raise FileExistsError(msg)
    shutil.rmtree(backup)


def _report_names(folder: Path) -> set[str]:
    """The entries of ``folder`` that :func:`build_report` wrote: pages, data and figures."""
    names = {"index.html", "report.json", "profiles.csv"}
    try:
        prev = json.loads((folder / "report.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return names
    figs = prev.get("figures") if isinstance(prev, dict) else None
    for f in figs if isinstance(figs, list) else []:
        name = f.get("file") if isinstance(f, dict) else None
        # Only plain PNG names: a damaged or foreign report.json cannot claim the user's files.
        if isinstance(name, str) and name.endswith(".png") and name == Path(name).name:
            names.add(name)
    return names


def _remove_old(folder: Path) -> None:
    # report.json last: while it is there, _recover can tell old figures from the user's files.
    for entry in folder.iterdir():
        if entry.name == "report.json":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (folder / "report.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # no hard links here (or another device mounted below): a durable copy
        shutil.copy2(src, dst, follow_symlinks=False)
        if not os.path.islink(dst):
            with open(dst, "rb") as f:
                os.fsync(f.fileno())
    return dst


def _carry(src: Path, dst: Path) -> None:
    """Put the user's entry ``src`` at ``dst``, sharing its data by hard links where possible."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def _new_stage(out_dir: Path) -> Path:
    # Not tempfile.mkdtemp: its 0700 mode would become the report folder's.
    for _ in range(100):
        stage = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.mkdir(stage, 0o777)
        except FileExistsError:
            continue
        return stage
    msg = f"out_dir: no free name for a staging folder beside {out_dir}"
    raise FileExistsError(msg)


def _write_folder(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as the report in ``out_dir``: readers see the old report or the new one.

    A full new folder is staged beside ``out_dir``: ``files`` plus hard links to (or copies of)
    every other entry of ``out_dir`` that is not a file of the old report, so old figures go and the
    user's files stay. The folders are then swapped in one step (Linux ``renameat2``) or by two
    renames through ``.<name>.old``; a write killed between those is undone by the next one.
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(out_dir)
    exists = os.path.lexists(out_dir)
    if exists and not out_dir.is_dir():
        msg = f"out_dir: {out_dir} exists and is not a folder"
        raise FileExistsError(msg)
    stage = _new_stage(out_dir)
    try:
        for name, payload in files.items():
            with open(stage / name, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        if not exists:
            fsync_dir(stage)
            os.rename(stage, out_dir)
            fsync_dir(out_dir.parent)
            return
        shutil.copymode(out_dir, stage)
        ours = _report_names(out_dir)
        for entry in sorted(out_dir.iterdir()):
            if entry.name in files:
                if entry.is_dir() and not entry.is_symlink():
                    msg = f"out_dir: {entry} is a folder; the report needs that name for a file"
                    raise IsADirectoryError(msg)
            elif entry.name not in ours:
                _carry(entry, stage / entry.name)
        fsync_dir(stage)
        if _exchange(stage, out_dir):
            fsync_dir(out_dir.parent)  # the old folder is now at ``stage``, removed below
            return
        backup = _backup_of(out_dir)
        os.rename(out_dir, backup)
        try:
            os.rename(stage, out_dir)
        except BaseException:
            os.rename(backup, out_dir)
            raise
        fsync_dir(out_dir.parent)
        _remove_old(backup)
    finally:
        if os.path.lexists(stage):
            shutil.rmtree(stage, ignore_errors=True)


def build_report(
    models: Sequence[ModelInput],
    out_dir: str | os.PathLike[str],
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
    out_dir : path
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
    report = jsonable(report)
    figs, pngs = _figures(report, models, say)
    report["figures"] = figs
    from firstlayer.report.html import render_html

    say("writing the report")
    page = render_html(report, pngs)
    files: dict[str, bytes] = dict(pngs)
    files["report.json"] = (dumps(report) + "\n").encode()
    files["profiles.csv"] = _profiles_csv(report).encode()
    files["index.html"] = page.encode()
    folder = Path(out_dir)
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
    from firstlayer.sources import open_source, sample_path

    desc: dict[str, Any] = {"name": dataset}
    key = dataset.lower()
    path = Path(dataset).expanduser()
    if key in ("sample", "sample-train") and not path.exists():
        sample = sample_path()
        desc["path"] = str(sample)
        desc["sha256"] = file_sha256(sample)
    elif path.is_file():
        desc["path"] = str(path.resolve())
        desc["sha256"] = file_sha256(path)
    elif path.is_dir():
        desc["path"] = str(path.resolve())
    src = open_source(
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
