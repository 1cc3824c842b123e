"""The ``firstlayer`` command line.

``firstlayer stats | spectrum | profile | fit | compare | train | reproduce | demo | info``, each
with ``--help``. Options mean the same everywhere: ``--dataset``/``--data`` (a dataset name such as
``sample`` or ``cifar10``, or a path), ``--kernel-size``, ``--out``, ``--device``, ``--quiet`` (no
progress lines), ``--json`` (one JSON document on stdout instead of text) and ``--debug`` (full
traceback on failure).

Exit codes: 0 success, 2 usage error (argparse's convention), 1 failure, reported as one line
``firstlayer: error: ...`` on stderr. ``main`` returns the code instead of exiting, so tests and
other programs can call ``main([...])``; ``python -m firstlayer`` and the ``firstlayer`` script
exit with it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

#: Sub-commands and their one-line help.
COMMANDS: dict[str, str] = {
    "stats": "exact patch statistics of a dataset (count, mean, covariance, PCA)",
    "spectrum": "power spectrum of a dataset's images, or of its patches from saved statistics",
    "profile": "energy profile of a network's first layer (PCA or DFT basis)",
    "fit": "fit the linear-CNN theory to a first layer's energy profile",
    "compare": "compare first layers and write an HTML/JSON/CSV/PNG report",
    "train": "train a network with true or random labels and record its first layer",
    "reproduce": "reproduce the paper's experiments",
    "demo": "offline demo on the bundled CIFAR-10 sample, ending in a comparison report",
    "info": "versions, threads, devices, and the datasets firstlayer can find",
}

_EPILOG = "exit codes: 0 ok, 1 failure (one-line message; --debug for the traceback), 2 usage error"


class UsageError(Exception):
    """A command-line usage error found after parsing (exit code 2)."""


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    from firstlayer.report.compute import tolist

    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return tolist(v)


def _emit(args: argparse.Namespace, text: str, payload: dict[str, Any]) -> None:
    """Print the result: ``payload`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(payload), indent=1, allow_nan=False))
    else:
        print(text)


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """Return a progress printer on stderr, silent with ``--quiet``."""
    start = time.monotonic()

    def say(msg: str) -> None:
        if not getattr(args, "quiet", False):
            print(f"firstlayer: [{time.monotonic() - start:5.1f}s] {msg}", file=sys.stderr)

    return say


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " ".join(lines)
    known = (ValueError, TypeError, OSError, RuntimeError, ImportError, UsageError, LookupError)
    if not isinstance(exc, known):
        text = f"{type(exc).__name__}: {text}"
    return text


# --------------------------------------------------------------------------------------------
# Shared options
# --------------------------------------------------------------------------------------------


def _common(json_flag: bool = True, quiet: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    if quiet:
        g.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    if json_flag:
        g.add_argument(
            "--json", action="store_true", help="print the result as one JSON document on stdout"
        )
    g.add_argument("--debug", action="store_true", help="show the full traceback on failure")
    return p


def _data_options(p: argparse.ArgumentParser, *, stats: bool, positional: bool) -> None:
    g = p.add_argument_group("data")
    if positional:
        g.add_argument(
            "source",
            nargs="?",
            metavar="SOURCE",
            help="dataset name or path (same as --dataset; default: sample)",
        )
    default = "the dataset the input runs were trained on, else sample" if stats else "sample"
    g.add_argument(
        "--dataset",
        "--data",
        dest="dataset",
        metavar="D",
        help="dataset name (sample, cifar10, cifar10-test, mnist, ...) or path (image folder, "
        f"CIFAR batches, .npy/.npz); default: {default}",
    )
    g.add_argument(
        "--data-root", metavar="DIR", help="folder of named datasets (default $FIRSTLAYER_DATA)"
    )
    g.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    if stats:
        g.add_argument(
            "--stats",
            metavar="FILE",
            help="saved patch statistics (.npz from 'firstlayer stats --out') instead of a dataset",
        )
        g.add_argument(
            "--normalize",
            default="auto",
            metavar="N",
            help="input normalisation the networks saw: auto (run config; ImageNet for "
            "torchvision models; else pixels in [0, 1]), none, imagenet, cifar10, or "
            "M1,M2,M3/S1,S2,S3 (default auto)",
        )


def _patch_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("patches")
    g.add_argument("-k", "--kernel-size", type=int, default=3, help="patch side k (default 3)")
    g.add_argument("--stride", type=int, default=1, help="patch stride (default 1)")
    g.add_argument("--padding", type=int, default=0, help="zero padding (default 0)")
    g.add_argument(
        "--labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-class statistics (default: when the dataset has labels)",
    )


def _dataset_of(args: argparse.Namespace, default: str | None = "sample") -> str | None:
    src = getattr(args, "source", None)
    if src is not None and args.dataset is not None and src != args.dataset:
        msg = f"give the dataset once: SOURCE {src!r} and --dataset {args.dataset!r} differ"
        raise UsageError(msg)
    return src or args.dataset or default


def _stream_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "root": args.data_root,
        "batch_size": args.batch_size,
        "quiet": bool(args.quiet),
    }


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


def _stats_summary(stats: Any, top: int) -> dict[str, Any]:
    from firstlayer.report.compute import stats_sha256

    pca = stats.pca()
    ev = pca.eigenvalues
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


def _cmd_stats(args: argparse.Namespace) -> int:
    from firstlayer.report.inputs import parse_normalization
    from firstlayer.stats import patch_stats

    dataset = _dataset_of(args)
    norm = parse_normalization(args.normalize) if args.normalize else None
    if args.normalize and norm is None:
        msg = "--normalize auto needs a network; name the normalisation"
        raise UsageError(msg)
    options = _stream_options(args)
    # Folder options only where given, so that other sources never see them.
    folder = {
        "resize": args.resize,
        "center_crop": args.center_crop,
        "grayscale": args.grayscale or None,
        "decoder": None if args.decoder == "auto" else args.decoder,
    }
    options.update({k: v for k, v in folder.items() if v is not None})
    if args.checkpoint:
        options["checkpoint"] = args.checkpoint
    t0 = time.monotonic()
    if args.scheduler or args.workers is not None:
        from firstlayer.distributed import sharded_stats

        options["checkpoint_dir"] = options.pop("checkpoint", None)
        stats = sharded_stats(
            dataset,
            args.kernel_size,
            scheduler=args.scheduler,
            workers=args.workers,
            stride=args.stride,
            padding=args.padding,
            labels=args.labels,
            **options,
        )
    else:
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
    summary = _stats_summary(stats, args.top)
    summary.update({"dataset": dataset, "seconds": seconds, "out": args.out})
    ev = summary["eigenvalues"]
    ratio = summary["explained_variance_ratio_top"]
    lines = [
        f"{stats!r}",
        f"computed in {seconds:.2f} s" + (f", saved to {args.out}" if args.out else ""),
        f"top {len(ratio)} PCA eigenvalues (share of variance):",
    ]
    lines += [f"  {i + 1:3d}  {ev[i]:.6g}  ({ratio[i]:.2%})" for i in range(len(ratio))]
    counts = summary["class_counts"]
    if len(counts):
        lines.append(f"patches per class: {', '.join(str(int(c)) for c in counts)}")
    if stats.skipped:
        lines.append(f"skipped {len(stats.skipped)} unreadable inputs, e.g. {stats.skipped[0]}")
    _emit(args, "\n".join(lines), summary)
    return 0


# --------------------------------------------------------------------------------------------
# spectrum
# --------------------------------------------------------------------------------------------


def _cmd_spectrum(args: argparse.Namespace) -> int:
    if args.stats:
        if getattr(args, "source", None) or args.dataset:
            msg = "give either --stats or a dataset, not both"
            raise UsageError(msg)
        return _patch_spectrum(args)
    from firstlayer import sources
    from firstlayer.spectrum import ImageSpectrum

    dataset = _dataset_of(args)
    src = sources.open_source(dataset, root=args.data_root)
    spec: ImageSpectrum | None = None
    progress = sources.Progress(src.total, name=src.name, quiet=bool(args.quiet))
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
    _emit(args, "\n".join(lines), payload)
    return 0


def _patch_spectrum(args: argparse.Namespace) -> int:
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
        from firstlayer.checkpoint import atomic_write_bytes

        atomic_write_bytes(args.out, json.dumps(_jsonable(payload), indent=1).encode())
    lines = [
        f"patch DFT power of {stats!r}",
        "radial average over the k x k frequency grid (cycles/px, power summed over channels):",
    ]
    lines += [f"  {r:.4f}  {v:.6g}" for r, v in zip(radii, radial, strict=True)]
    _emit(args, "\n".join(lines), payload)
    return 0


# --------------------------------------------------------------------------------------------
# profile, fit
# --------------------------------------------------------------------------------------------


def _check_data_args(args: argparse.Namespace) -> None:
    """Raise the usage errors of the data options before any work is done."""
    if args.stats and _dataset_of(args, default=None):
        msg = "give either --stats or --dataset, not both"
        raise UsageError(msg)


def _provider(args: argparse.Namespace, runs_dataset: str | None = None) -> Any:
    from firstlayer.report.build import dataset_description
    from firstlayer.report.compute import StatsProvider
    from firstlayer.report.inputs import file_sha256
    from firstlayer.stats import PatchStats

    dataset = _dataset_of(args, default=None)
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
        options=_stream_options(args),
    )


def _runs_dataset(models: list[Any]) -> str | None:
    """Return the dataset every run input was trained on, when they agree."""
    names = {m.meta.get("dataset") for m in models if m.kind == "run"}
    names.discard(None)
    if len(names) == 1:
        name = names.pop()
        return name if isinstance(name, str) else None
    return None


def _profile_for(args: argparse.Namespace, model: Any) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """(profile, stats, info) of one resolved model, as ``compare`` computes it."""
    from firstlayer.profile import energy_profile
    from firstlayer.report.compute import _normalization_of, group_stats
    from firstlayer.report.inputs import parse_normalization

    provider = _provider(args, _runs_dataset([model]))
    raw = provider.raw(model.kernel_size, model.channels, model.name)
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
        "data": provider.description,
        "basis": basis,
    }
    return profile, stats, info


def _load_model(args: argparse.Namespace) -> Any:
    from firstlayer.report.inputs import ModelInput, resolve_model

    model = resolve_model(args.model)
    if getattr(args, "init", None):
        init = np.load(args.init, allow_pickle=False).astype(np.float64)
        if init.shape != model.weight.shape:
            msg = f"--init: shape {init.shape} differs from the first layer {model.weight.shape}"
            raise ValueError(msg)
        model = ModelInput(
            name=model.name,
            spec=model.spec,
            kind=model.kind,
            weight=model.weight,
            init=init,
            layer=model.layer,
            normalization=model.normalization,
            meta=model.meta,
            files=model.files,
        )
    return model


def _cmd_profile(args: argparse.Namespace) -> int:
    _check_data_args(args)
    model = _load_model(args)
    profile, stats, info = _profile_for(args, model)
    payload = {**info, "profile": profile}
    if args.basis == "pca":
        payload["eigenvalues"] = stats.pca().eigenvalues
    if args.out:
        _write_profile(args.out, payload)
    lines = [
        f"{model.name}: {info['layer']} {tuple(info['shape'])}, {args.basis.upper()} basis, "
        f"normalisation {info['normalization']['name']}"
        + (", init subtracted" if info["init_subtracted"] else ""),
        "component  energy (max-normalised)",
    ]
    lines += [f"  {i + 1:4d}  {v:.6f}" for i, v in enumerate(profile)]
    if args.out:
        lines.append(f"saved to {args.out}")
    _emit(args, "\n".join(lines), payload)
    return 0


def _write_profile(out: str, payload: dict[str, Any]) -> None:
    from firstlayer.checkpoint import atomic_write_bytes

    path = Path(out)
    if path.suffix == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(payload["profile"]))
        atomic_write_bytes(path, buf.getvalue())
    elif path.suffix == ".csv":
        ev = payload.get("eigenvalues")
        rows = ["component,energy" + (",eigenvalue" if ev is not None else "")]
        for i, v in enumerate(payload["profile"]):
            rows.append(f"{i + 1},{float(v)!r}" + (f",{float(ev[i])!r}" if ev is not None else ""))
        atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())
    else:
        text = json.dumps(_jsonable(payload), indent=1, allow_nan=False) + "\n"
        atomic_write_bytes(path, text.encode())


def _cmd_fit(args: argparse.Namespace) -> int:
    _check_data_args(args)
    from firstlayer.theory import fit

    path = Path(args.model)
    if path.suffix == ".npy" and path.is_file():
        arr = np.load(path, allow_pickle=False)
    else:
        arr = None
    if arr is not None and arr.ndim == 1:
        from firstlayer.report.compute import group_stats
        from firstlayer.report.inputs import NORMALIZATIONS, parse_normalization

        provider = _provider(args)
        if provider.stats is not None:
            raw = provider.stats
        else:
            msg = "a profile (.npy of one dimension) needs --stats: the statistics it was made with"
            raise UsageError(msg)
        norm = parse_normalization(args.normalize) or NORMALIZATIONS["none"]
        stats = group_stats(raw, norm)
        profile = arr.astype(np.float64)
        info: dict[str, Any] = {
            "model": path.stem,
            "input": args.model,
            "data": provider.description,
        }
    else:
        model = _load_model(args)
        profile, stats, info = _profile_for(args, model)
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
        _write_profile(args.out, payload)
    text = (
        f"{info['model']}: linear-CNN theory fit t = {r.t:.6g} steps at eta = {r.eta:.4g} "
        f"(eta*t = {r.eta_t:.6g}), correlation r = {r.correlation:.6f}"
    )
    _emit(args, text, payload)
    return 0


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def _cmd_compare(args: argparse.Namespace) -> int:
    _check_data_args(args)
    from firstlayer.report import build_report, parse_normalization, resolve_models

    say = _say(args)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    say(f"reading {len(args.inputs)} input(s)")
    models = resolve_models(list(args.inputs), names)
    provider = _provider(args, _runs_dataset(models))
    report = build_report(
        models,
        args.out,
        provider=provider,
        normalization=parse_normalization(args.normalize),
        title=args.title,
        command=["firstlayer", *args.argv],
        progress=say,
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
    payload = {
        "index": str(report.index),
        "report_json": str(report.folder / "report.json"),
        "profiles_csv": str(report.folder / "profiles.csv"),
        "figures": [f["file"] for f in report.data["figures"]],
        "fits": fits,
    }
    _emit(args, "\n".join(lines), payload)
    return 0


# --------------------------------------------------------------------------------------------
# train, reproduce
# --------------------------------------------------------------------------------------------


def _train_module() -> Any:
    try:
        return importlib.import_module("firstlayer.train.cli")
    except ImportError as exc:
        msg = f"'firstlayer train' is not available: firstlayer.train cannot be imported ({exc})"
        raise RuntimeError(msg) from exc


def _cmd_train(args: argparse.Namespace) -> int:
    result = _train_module().train_from_args(args)
    out = getattr(result, "out", None) or args.out
    payload: dict[str, Any] = {"out": str(out)}
    for key in ("seconds", "final_metrics", "metrics"):
        if hasattr(result, key):
            payload[key] = getattr(result, key)
    fl = getattr(result, "first_layer_final", None)
    if fl is not None:
        payload["first_layer_shape"] = list(np.shape(fl))
    _emit(args, f"run written to {out}", payload)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from firstlayer import reproduce

    result = reproduce.reproduce_from_args(args)
    return int(result) if isinstance(result, int) else 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from firstlayer.demo import run_demo

    result = run_demo(
        out=args.out,
        epochs=args.epochs,
        quick=args.quick,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        quiet=bool(args.quiet),
        command=["firstlayer", *args.argv],
        echo=not args.json,
    )
    if args.json:  # otherwise the demo has already told its story on stdout
        _emit(args, "", result)
    return 0


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from firstlayer import sources
    from firstlayer.report.build import versions
    from firstlayer.report.inputs import file_sha256

    info: dict[str, Any] = {"versions": versions()}
    sample = sources._sample_path()
    info["sample"] = {
        "path": str(sample),
        "present": sample.is_file(),
        "sha256": file_sha256(sample) if sample.is_file() else None,
    }
    info["data_roots"] = [str(p) for p in sources.data_roots(args.data_root)]
    found: dict[str, int | None] = {}
    for name in sources.DATASET_NAMES:
        try:
            src = sources.open_source(name, root=args.data_root, download=False)
        except (OSError, ValueError):
            found[name] = None
            continue
        found[name] = src.total
        src.close()
    info["datasets"] = found
    devices: dict[str, Any] = {"cpu": True}
    if importlib.util.find_spec("torch") is not None:
        import torch

        devices["cuda"] = torch.cuda.is_available()
        if devices["cuda"]:
            devices["cuda_devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    info["devices"] = devices
    info["train_available"] = importlib.util.find_spec("firstlayer.train") is not None
    lines = ["firstlayer " + info["versions"]["firstlayer"]]
    lines += [f"  {k}: {v}" for k, v in info["versions"].items() if k != "firstlayer"]
    lines.append(f"bundled sample: {sample} ({'present' if sample.is_file() else 'MISSING'})")
    lines.append("data roots: " + ", ".join(info["data_roots"]))
    lines.append("datasets found (images):")
    lines += [
        f"  {k}: {'not found' if v is None else f'{v:,}' if isinstance(v, int) else 'yes'}"
        for k, v in found.items()
    ]
    lines.append("devices: " + ", ".join(f"{k}={v}" for k, v in devices.items()))
    lines.append(f"train: {'available' if info['train_available'] else 'not available'}")
    _emit(args, "\n".join(lines), info)
    return 0


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def _sub(
    subs: Any, name: str, parents: list[argparse.ArgumentParser], description: str = ""
) -> argparse.ArgumentParser:
    return subs.add_parser(  # type: ignore[no-any-return]
        name,
        parents=parents,
        help=COMMANDS[name],
        description=(COMMANDS[name][0].upper() + COMMANDS[name][1:] + ". " + description).strip(),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the ``firstlayer`` argument parser.

    Parameters
    ----------
    command : str, optional
        The sub-command about to be parsed. ``train`` and ``reproduce`` take their options from
        their own modules, which import torch; they are loaded only when ``command`` names them.

    Returns
    -------
    argparse.ArgumentParser
    """
    from firstlayer import __version__

    parser = argparse.ArgumentParser(
        prog="firstlayer",
        description="What CNNs learn in their first layer, and why: exact patch statistics, "
        "energy profiles, the linear-CNN theory, training and comparison reports.",
        epilog="Start with 'firstlayer demo'. " + _EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"firstlayer {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = _sub(
        subs,
        "stats",
        [_common()],
        "Example: firstlayer stats cifar10 -k 3 --out cifar10_k3.npz",
    )
    _data_options(p, stats=False, positional=True)
    _patch_options(p)
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
        "--decoder",
        choices=("auto", "rust", "pillow"),
        default="auto",
        help="JPEG decoder: auto (Rust for baseline JPEGs, Pillow otherwise), rust, pillow",
    )
    g = p.add_argument_group("result")
    g.add_argument("-o", "--out", metavar="FILE", help="save the statistics (.npz)")
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
    g.add_argument("--top", type=int, default=10, help="eigenvalues to print (default 10)")
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
    p.set_defaults(handler=_cmd_stats)

    p = _sub(
        subs,
        "spectrum",
        [_common()],
        "Example: firstlayer spectrum cifar10-test, or firstlayer spectrum --stats s.npz",
    )
    _data_options(p, stats=False, positional=True)
    g = p.add_argument_group("spectrum")
    g.add_argument(
        "--stats", metavar="FILE", help="patch power spectrum from saved statistics instead"
    )
    g.add_argument("--bins", type=int, default=None, help="radial bins (default: size / 2)")
    g.add_argument("-o", "--out", metavar="FILE", help="save the spectrum (.npz, or .json)")
    p.set_defaults(handler=_cmd_spectrum)

    model_help = (
        "run directory, checkpoint/state dict file, FILE:KEY, ARCH=WEIGHTS or a torchvision "
        "name (pretrained weights from the local torch hub cache)"
    )
    p = _sub(
        subs,
        "profile",
        [_common()],
        "Example: firstlayer profile runs/true --dataset sample --out profile.csv",
    )
    p.add_argument("model", metavar="MODEL", help=model_help)
    _data_options(p, stats=True, positional=False)
    g = p.add_argument_group("profile")
    g.add_argument("--basis", choices=("pca", "dft"), default="pca", help="default pca")
    g.add_argument("--init", metavar="FILE", help="initial weights (.npy) to subtract")
    g.add_argument("--no-init", action="store_true", help="do not subtract a run's initial weights")
    g.add_argument("-o", "--out", metavar="FILE", help="save as .csv, .npy or .json")
    p.set_defaults(handler=_cmd_profile)

    p = _sub(
        subs,
        "fit",
        [_common()],
        "Example: firstlayer fit pretrained.npz:resnet18 --normalize imagenet",
    )
    p.add_argument("model", metavar="MODEL", help=model_help + ", or a profile .npy with --stats")
    _data_options(p, stats=True, positional=False)
    g = p.add_argument_group("fit")
    g.add_argument("--eta", type=float, default=None, help="step size (default 0.01 / max eig)")
    g.add_argument("--n-components", type=int, default=None, help="fit the first N only")
    g.add_argument("--init", metavar="FILE", help="initial weights (.npy) to subtract")
    g.add_argument("--no-init", action="store_true", help="do not subtract a run's init")
    g.add_argument("-o", "--out", metavar="FILE", help="save the fit (.json)")
    p.set_defaults(handler=_cmd_fit, basis="pca")

    p = _sub(
        subs,
        "compare",
        [_common()],
        "Inputs: run directories, checkpoints, state dicts, FILE:KEY, ARCH=WEIGHTS or torchvision "
        "names.\nExample: firstlayer compare runs/true runs/random --dataset sample --out report",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=model_help)
    _data_options(p, stats=True, positional=False)
    g = p.add_argument_group("report")
    g.add_argument("-o", "--out", metavar="DIR", required=True, help="report folder")
    g.add_argument("--names", metavar="A,B,..", help="display names, one per input")
    g.add_argument("--title", help="page title")
    p.set_defaults(handler=_cmd_compare)

    p = _sub(
        subs,
        "train",
        [_common(quiet=False)],
        "Example: firstlayer train --dataset sample --labels random --epochs 5 --out runs/rand",
    )
    if command == "train":
        _train_module().add_train_arguments(p)
    p.set_defaults(handler=_cmd_train)

    p = _sub(subs, "reproduce", [_common()])
    if command == "reproduce":
        from firstlayer import reproduce

        reproduce.add_reproduce_arguments(p)
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=_cmd_reproduce)

    p = _sub(
        subs,
        "demo",
        [_common()],
        "Offline: patch statistics of the bundled CIFAR-10 sample, a small CNN trained with true "
        "and with random labels, their energy profiles, the theory fit and a comparison report.",
    )
    p.add_argument("-o", "--out", default="firstlayer-demo", metavar="DIR", help="output folder")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 4)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs (default 0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training")
    p.set_defaults(handler=_cmd_demo)

    p = _sub(subs, "info", [_common()])
    p.add_argument("--data-root", metavar="DIR", help="folder of named datasets")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help=argparse.SUPPRESS
    )
    p.set_defaults(handler=_cmd_info)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for a in argv:
        if a in COMMANDS:
            return a
        if not a.startswith("-"):
            return None
    return None


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``firstlayer`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 on failure, 2 on a usage error.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    command = _command_of(args_list)
    try:
        parser = build_parser(command)
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    except Exception as exc:  # noqa: BLE001 - e.g. the train module failing to import
        if debug:
            traceback.print_exc()
        print(f"firstlayer: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = args_list
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr,index]
        sub.print_usage(sys.stderr)
        print(f"firstlayer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        print("firstlayer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `firstlayer stats | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if debug:
            traceback.print_exc()
        expected = (ValueError, TypeError, OSError, RuntimeError, ImportError, LookupError)
        hint = "" if debug or isinstance(exc, expected) else " (--debug for the traceback)"
        print(f"firstlayer: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
