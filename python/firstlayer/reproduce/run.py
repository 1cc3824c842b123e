"""Running a reproduction: :func:`reproduce` runs the chosen experiments and writes the report.

Every experiment's result is stored in ``experiments/eN.json`` under the scale's key and reused
by a later call (unless ``force``); finished training runs are always reused. The report is the
comparison report of the trained runs (kept as ``comparison.html`` while the runs are
unchanged) with the claims table put at its top.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._io import atomic_write_bytes, write_json
from firstlayer._paths import data_roots
from firstlayer.report.build import build_report
from firstlayer.report.compute import StatsProvider
from firstlayer.report.inputs import resolve_model
from firstlayer.report.plots import claims_figure, true_random_figure
from firstlayer.report.reproduce_html import claims_html, claims_page, figure_html, with_claims
from firstlayer.reproduce.context import Context
from firstlayer.reproduce.experiments import RUNNERS
from firstlayer.reproduce.scales import EXPERIMENTS, Scale, check_only, check_scale

__all__ = ["ReproduceResult", "reproduce", "write_report"]

_FORMAT = "firstlayer.reproduce"
_VERSION = 1


def _say(quiet: bool) -> Callable[[str], None]:
    start = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            print(
                f"[reproduce {time.monotonic() - start:7.1f}s] {msg}", file=sys.stderr, flush=True
            )

    return say


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _scale_notes(scale: Scale, data_desc: dict[str, Any]) -> list[str]:
    notes = [f"Data: {data_desc.get('name')} ({data_desc.get('train_images')} training images)."]
    if data_desc.get("caveat"):
        notes.append(f"Caveat: {data_desc['caveat']}.")
    (na, wa), (nb, wb) = scale.arch_pair
    notes.append(
        f"Networks: {scale.main_arch} (width {scale.main_width:g}) with seeds "
        f"{list(scale.seeds)}, {scale.epochs} epochs (random labels {scale.random_epochs}); "
        f"{na} (width {wa:g}) and {nb} (width {wb:g}) with seeds {list(scale.arch_seeds)}, "
        f"{scale.arch_epochs} epochs; SGD lr {scale.lr:g}, momentum {scale.momentum:g}, batch "
        f"{scale.batch_size}; no augmentation; CIFAR-10 mean/std normalisation."
    )
    if scale.name != "paper":
        notes.append(
            "The paper trains VGG11/ResNet18 on all of CIFAR-10 for 30-100 epochs; this scale "
            "is far smaller, so claims that need long training (random labels, the formula fit) "
            "may not hold here."
        )
    notes.append(
        "Correlations between profiles that all peak at the first PCA component (the theory's "
        "early-training regime) say less than the paper's, whose profiles peak near the 6th "
        "component: claim 1c tells which regime this scale reached."
    )
    notes.append(
        "Profiles are of W - W_init in the PCA basis of the normalised training patches "
        "(max-normalised, Pearson correlation), as in the authors' code."
    )
    from firstlayer.trajectory import SETTLE_RULE

    notes.append(
        "Verdicts: 'holds' when the end-of-training value meets the paper's under the rule; "
        "'does not hold' when it fails and every run behind it settled (a comparable regime); "
        "'not comparable' when it fails while a run behind it had not settled (the cause gives "
        f"the measured change). Settling rule: {SETTLE_RULE}. The measured number is always the "
        "end-of-training value, as the paper reads it; the curves show it along training."
    )
    return notes


def _trajectory_figures(
    out_dir: Path, claims: list[dict[str, Any]], results: dict[int, dict[str, Any]]
) -> str:
    """The claims along training and the true-vs-random trajectory, also written as PNGs."""
    from firstlayer.report.trajectory_plots import claim_curves_figure, pair_trajectories_figure

    html = ""
    keys = ("id", "claim", "paper", "paper_spread")
    curves = [{**c["trajectory"], **{k: c[k] for k in keys}} for c in claims if c.get("trajectory")]
    if curves:
        png = claim_curves_figure(curves)
        atomic_write_bytes(out_dir / "claims_along_training.png", png)
        html += "<h3>The claims along training</h3><p>Each claim's value at every recorded " \
            "step (one curve per run pair or run; 4m against matched fitted eta*t, beyond the " \
            "paper), with the paper's number dashed and its spread shaded. The end of each " \
            "curve is the measured number of the table.</p>"  # fmt: skip
        html += figure_html(png, "the claims along training")
    pairs = results.get(4, {}).get("details", {}).get("aligned")
    if pairs:
        png = pair_trajectories_figure(pairs, 0.90, "True vs random labels (paper: 0.90)")
        atomic_write_bytes(out_dir / "true_random_trajectory.png", png)
        html += figure_html(png, "true against random labels along training")
    return html


def _figures_html(
    claims: list[dict[str, Any]], results: dict[int, dict[str, Any]], out_dir: Path | None = None
) -> str:
    """The claims figure, the claims along training and the true/random profiles figure; empty
    without matplotlib."""
    try:
        figs = figure_html(claims_figure(claims), "paper against measured, per claim")
        if out_dir is not None:
            figs += _trajectory_figures(out_dir, claims, results)
        if 4 in results and 5 in results:
            prof = results[4]["details"]["profiles"]
            fits = results[5]["details"]["fits"]
            true = [np.asarray(v, float) for k, v in prof.items() if "-true-" in k]
            rand = [np.asarray(v, float) for k, v in prof.items() if "-random-" in k]
            curves = [np.asarray(f["curve"], float) for f in fits.values() if f["role"] == "true"]
            if true and rand:
                figs += figure_html(
                    true_random_figure(true, rand, curves),
                    "energy profiles of true- and random-label runs",
                )
    except ImportError:  # no matplotlib: the table alone
        figs = ""
    return figs


def _regimes(results: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every training run's regime, from the claims that carry them."""
    out: dict[str, dict[str, Any]] = {}
    for n in sorted(results):
        for c in results[n]["claims"]:
            out.update(c.get("regime") or {})
    return dict(sorted(out.items()))


def write_report(
    ctx: Context, results: dict[int, dict[str, Any]], command: Sequence[str]
) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``claims.json`` and ``index.html`` (and the comparison report of the runs)."""
    out_dir = ctx.out_dir
    claims = [c for n in sorted(results) for c in results[n]["claims"]]
    write_json(out_dir / "claims.json", claims)
    _, _, _, _, desc = ctx.data()
    notes = _scale_notes(ctx.scale, desc)
    if 7 in results and "natural_images" in results[7]["details"]:
        notes.append(f"Experiment 7 patch statistics: {results[7]['details']['natural_images']}.")
    section = claims_html(
        claims, ctx.scale.name, notes, _figures_html(claims, results, out_dir), _regimes(results)
    )
    run_dirs = sorted({p for p in (out_dir / "runs").glob("*") if (p / "result.json").is_file()})
    index = out_dir / "index.html"
    if not run_dirs:
        atomic_write_bytes(index, claims_page(ctx.scale.name, section).encode())
        return index, claims
    runs_key = hashlib.sha256(
        "\n".join(f"{p.name}:{(p / 'result.json').stat().st_mtime_ns}" for p in run_dirs).encode()
    ).hexdigest()[:16]
    plain = out_dir / "comparison.html"
    data_path = out_dir / "report.json"
    data: dict[str, Any] = {}
    if data_path.is_file():
        data = json.loads(data_path.read_text())
    if not plain.is_file() or data.get("reproduce", {}).get("runs_key") != runs_key:
        provider = StatsProvider(stats=ctx.raw_stats(), description={"name": desc.get("name")})
        models = [resolve_model(str(p)) for p in run_dirs]
        rep = build_report(
            models,
            out_dir,
            provider=provider,
            title=f"firstlayer reproduce ({ctx.scale.name} scale)",
            command=list(command),
            progress=ctx.say,
        )
        atomic_write_bytes(plain, rep.index.read_bytes())
        data = json.loads(data_path.read_text())
    else:
        ctx.say("comparison report of the same runs: reusing comparison.html")
    data["reproduce"] = {
        "scale": ctx.scale.name,
        "claims": claims,
        "regimes": _regimes(results),
        "notes": notes,
        "runs_key": runs_key,
    }
    write_json(data_path, data)
    atomic_write_bytes(index, with_claims(plain.read_text(), section).encode())
    return index, claims


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReproduceResult:
    """What :func:`reproduce` returns.

    Attributes
    ----------
    out_dir : pathlib.Path
        The output folder.
    index : pathlib.Path
        The report page.
    claims : list of dict
        The content of ``claims.json``.
    experiments : dict
        Experiment number -> its stored result (claims, details, seconds, reused).
    seconds : float
        Wall time of this call.
    """

    out_dir: Path
    index: Path
    claims: list[dict[str, Any]]
    experiments: dict[int, dict[str, Any]]
    seconds: float


def _check_folder(folder: Path, sc: Scale) -> None:
    """Refuse a file, or a folder holding a reproduction at another scale or settings."""
    if folder.exists() and not folder.is_dir():
        msg = f"out_dir: expected a folder, got the file {str(folder)!r}"
        raise FileExistsError(msg)
    plan_path = folder / "plan.json"
    if not plan_path.is_file():
        return
    prev = json.loads(plan_path.read_text())
    prev_name = prev.get("scale", {}).get("name")
    if prev_name != sc.name:
        msg = (
            f"scale: {str(folder)!r} holds a reproduction at scale {prev_name!r}; expected "
            f"{sc.name!r} there, use another --out"
        )
        raise FileExistsError(msg)
    if prev.get("key") != sc.key():
        msg = (
            f"out_dir: {str(folder)!r} holds a {sc.name!r} reproduction made with other settings "
            f"(key {prev.get('key')}, expected {sc.key()}); use another --out"
        )
        raise FileExistsError(msg)


def reproduce(
    out_dir: str | os.PathLike[str],
    *,
    scale: str = "small",
    only: int | Sequence[int] | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    threads: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    command: Sequence[str] | None = None,
) -> ReproduceResult:
    """Run the paper's experiments at a scale and write the report with its claims table.

    Parameters
    ----------
    out_dir : path
        Output folder (see :mod:`firstlayer.reproduce` for its layout). A rerun in the same
        folder reuses finished runs and experiments.
    scale : {"tiny", "small", "paper"}
        See :data:`~firstlayer.reproduce.SCALES`.
    only : int or sequence of int, optional
        Experiments to run (1-8); default all. The report covers every finished experiment.
    resume : bool
        Continue training runs that were interrupted (otherwise they are an error).
    force : bool
        Recompute experiments even when a stored result exists (finished runs are still reused).
    device : {"auto", "cpu", "cuda"}
        Training device.
    threads : int, optional
        CPU threads for training.
    data_root : path, optional
        Folder holding ``cifar10_exact_subset.npz``, ``cifar10_jpeg_q75.npz`` and
        ``pretrained_first_layers.npz`` (default: the folders of
        :func:`firstlayer._paths.data_roots`, ``$FIRSTLAYER_DATA`` first).
    quiet : bool
        No progress lines on stderr.
    command : sequence of str, optional
        Command line recorded in the report.

    Returns
    -------
    ReproduceResult

    Raises
    ------
    ValueError, TypeError
        For an unknown scale or experiment number, naming the argument.
    FileExistsError
        If ``out_dir`` holds a reproduction at another scale, or an interrupted run without
        ``resume``.
    """
    sc = check_scale(scale)
    if device not in ("auto", "cpu", "cuda"):
        msg = f"device: expected auto, cpu or cuda, got {device!r}"
        raise ValueError(msg)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):  # fmt: skip
        msg = f"threads: expected a positive integer, got {threads!r}"
        raise ValueError(msg)
    chosen = check_only(only)
    folder = Path(out_dir)
    _check_folder(folder, sc)
    say = _say(quiet)
    t0 = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "plan.json", {"format": _FORMAT, "version": _VERSION,
                                      "scale": asdict(sc), "key": sc.key()})  # fmt: skip
    ctx = Context(sc, folder, data_roots(data_root), device=device, threads=threads,
                  resume=resume, say=say)  # fmt: skip
    results: dict[int, dict[str, Any]] = {}
    for n in sorted(EXPERIMENTS):
        path = folder / "experiments" / f"e{n}.json"
        stored = None
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") != sc.key():
                stored = None
        if n not in chosen:
            if stored is not None:
                results[n] = stored
            continue
        if stored is not None and not force:
            say(f"experiment {n}: reusing {path}")
            stored["reused"] = True
            results[n] = stored
            continue
        say(f"experiment {n}: {EXPERIMENTS[n]}")
        e0 = time.monotonic()
        res = RUNNERS[n](ctx)
        res = {
            "id": n,
            "title": EXPERIMENTS[n],
            "scale": sc.name,
            "key": sc.key(),
            "seconds": time.monotonic() - e0,
            **res,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, res)
        results[n] = json.loads(path.read_text())
        results[n]["reused"] = False
        say(f"experiment {n} done in {res['seconds']:.0f}s")
    index, claims = write_report(ctx, results, command if command is not None else sys.argv)
    say(f"report: {index}")
    return ReproduceResult(
        out_dir=folder,
        index=index,
        claims=claims,
        experiments=results,
        seconds=time.monotonic() - t0,
    )
