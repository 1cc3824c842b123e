"""Comparison reports: every number against the library's API, atomic writes, a real browser.

The report is built once (module fixture) from inputs of every kind: two run directories in the
layout ``firstlayer train`` writes (same initialisation, true and random labels), a pretrained
ResNet-18 first layer from an ``.npz`` (7x7 filters) and a full SqueezeNet 1.1 state dict loaded
into torchvision's architecture (``ARCH=FILE``). The page is opened in headless Chromium
(``/usr/bin/chromium`` driven by Selenium through ``/usr/bin/chromedriver``).
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firstlayer
from _data import REPO, shared_file
from firstlayer import patch_stats
from firstlayer.profile import correlation_matrix, dft_profile, energy_profile, profile_correlation
from firstlayer.report import (
    NORMALIZATIONS,
    StatsProvider,
    build_report,
    dataset_description,
    resolve_models,
    stats_sha256,
)
from firstlayer.sources import load_sample
from firstlayer.theory import fit, label_patch_correlation

PRETRAINED = "pretrained_first_layers.npz"
SQUEEZENET = "squeezenet1_1-fp16-from-ncnn.pth"
ARTIFACTS = Path(os.environ.get("FIRSTLAYER_ARTIFACTS", REPO / "test-artifacts"))
RTOL = 1e-9


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_run(folder: Path, init: np.ndarray, final: np.ndarray, labels: str, seed: int) -> Path:
    """A run directory in the layout ``firstlayer.train`` writes (the files a report reads)."""
    folder.mkdir(parents=True)
    images, _, _ = load_sample("test")
    x = images.astype(np.float64) / 255
    config = {
        "options": {"arch": "small_cnn", "dataset": "sample", "labels": labels, "seed": seed,
                    "epochs": 2, "lr": 0.01, "batch_size": 64, "mean": None, "std": None},
        "derived": {"mean": x.mean(axis=(0, 2, 3)).tolist(), "std": x.std(axis=(0, 2, 3)).tolist(),
                    "first_layer": {"module": "conv1", "shape": list(final.shape)}},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    np.save(folder / "first_layer_init.npy", init.astype(np.float32))
    np.save(folder / "first_layer_final.npy", final.astype(np.float32))
    result = {"final": {"train_acc": 0.5 if labels == "true" else 0.1, "test_acc": 0.25}}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def make_runs(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    init = rng.normal(scale=0.2, size=(16, 3, 3, 3))
    # Learned changes dominated by smooth (low-frequency) filters, as in trained networks.
    yy, xx = np.mgrid[-1:2, -1:2]
    smooth = np.exp(-(yy**2 + xx**2) / 2.0)
    a = rng.normal(size=(16, 3, 1, 1)) * smooth + 0.3 * rng.normal(size=(16, 3, 3, 3))
    b = rng.normal(size=(16, 3, 1, 1)) * smooth + 0.5 * rng.normal(size=(16, 3, 3, 3))
    return (
        write_run(root / "run_true", init, init + 0.1 * a, "true", 3),
        write_run(root / "run_random", init, init + 0.05 * b, "random", 3),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    run_true, run_random = make_runs(root)
    npz = shared_file(PRETRAINED)
    squeeze = shared_file(SQUEEZENET)
    specs = [str(run_true), str(run_random), f"{npz}:resnet18", f"squeezenet1_1={squeeze}"]
    models = resolve_models(specs)
    provider = StatsProvider(
        dataset="sample", description=dataset_description("sample"), options={"quiet": True}
    )
    command = ["firstlayer", "compare", *specs, "--out", str(root / "out")]
    report = build_report(models, root / "out", provider=provider, command=command)
    return {
        "root": root,
        "out": root / "out",
        "report": report,
        "specs": specs,
        "command": command,
        "runs": (run_true, run_random),
        "npz": npz,
        "squeeze": squeeze,
    }


def add_snapshots(run: Path, final: np.ndarray, steps: list[int], acc: float) -> None:
    """Snapshots on the straight line from init to ``final``, bent so that the profile moves."""
    from firstlayer.train.runs import RunDir

    rd = RunDir(run)
    init = np.load(run / "first_layer_init.npy").astype(np.float64)
    rng = np.random.default_rng(len(steps))
    bend = rng.normal(scale=0.02, size=init.shape)
    for s in [0, *steps]:
        w = s / steps[-1]
        rd.write_snapshot(s, (init + w * (final - init) + w * (1 - w) * bend).astype(np.float32))
    rd.write_metrics([{"epoch": 1, "step": steps[-1], "train_acc": acc}])


def test_report_pairs_runs_along_training(tmp_path: Path) -> None:
    from firstlayer._io import jsonable
    from firstlayer.trajectory import SETTLE_RULE, compare_runs, run_trajectory

    run_true, run_random = make_runs(tmp_path)
    for run, acc in ((run_true, 0.5), (run_random, 0.1)):
        final = np.load(run / "first_layer_final.npy").astype(np.float64)
        add_snapshots(run, final, [1, 3, 10, 30, 100], acc)
    models = resolve_models([str(run_true), str(run_random)])
    provider = StatsProvider(
        dataset="sample", description=dataset_description("sample"), options={"quiet": True}
    )
    rep = build_report(models, tmp_path / "out", provider=provider, command=["x"])
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    # The same numbers through the Python API, on the statistics the runs saw.
    images, _, _ = load_sample("test")
    x = images.astype(np.float64) / 255
    st = patch_stats(images, 3).normalized(x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3)), 1 / 255)
    want = compare_runs(run_trajectory(run_true, st), run_trajectory(run_random, st)).to_dict()
    regimes = want.pop("regime")
    want["group"] = data["groups"][0]["key"]
    assert len(data["pairs"]) == 1
    n = assert_tree(data["pairs"][0], json.loads(json.dumps(jsonable(want))))
    assert n > 20
    assert data["pairs"][0]["aligned"]["beyond_paper"] is True
    assert data["pairs"][0]["trajectory"]["step"] == [1, 3, 10, 30, 100]
    for m, key in zip(data["models"], ("a", "b"), strict=True):
        g = {**regimes[key], "rule": SETTLE_RULE}
        assert_tree(m["regime"], json.loads(json.dumps(jsonable(g))))
    assert data["models"][0]["regime"]["train_acc"] == 0.5
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Along training (an extension beyond the paper)" in page
    assert "at matched fitted eta*t" in page and SETTLE_RULE in html.unescape(page)
    fig = [f for f in rep.data["figures"] if f["section"] == "trajectory"]
    assert len(fig) == 1 and (tmp_path / "out" / fig[0]["file"]).is_file()


# --------------------------------------------------------------------------------------------
# Every number, recomputed with the public API
# --------------------------------------------------------------------------------------------


def assert_tree(actual: Any, expected: Any, path: str = "report") -> int:
    """Compare two JSON trees: same keys, same lengths, numbers close. Returns numbers checked."""
    if isinstance(expected, np.ndarray):
        expected = expected.tolist()
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        return sum(assert_tree(actual[k], expected[k], f"{path}.{k}") for k in expected)
    if isinstance(expected, list | tuple):
        assert isinstance(actual, list), path
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        return sum(
            assert_tree(a, e, f"{path}[{i}]")
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
        )
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        return 0
    if isinstance(expected, int | np.integer) and not isinstance(expected, bool):
        assert actual == int(expected), f"{path}: {actual!r} != {expected!r}"
        return 1
    e = float(expected)
    assert isinstance(actual, float | int), f"{path}: {actual!r} is not a number"
    assert np.isclose(actual, e, rtol=RTOL, atol=1e-12), f"{path}: {actual!r} != {e!r}"
    return 1


def count_numbers(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(count_numbers(v) for v in tree.values())
    if isinstance(tree, list):
        return sum(count_numbers(v) for v in tree)
    return int(isinstance(tree, int | float) and not isinstance(tree, bool))


def expected_weights(built: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    import torch

    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for run in built["runs"]:
        out[run.name] = (
            np.load(run / "first_layer_final.npy").astype(np.float64),
            np.load(run / "first_layer_init.npy").astype(np.float64),
        )
    with np.load(built["npz"]) as z:
        out["resnet18"] = (z["resnet18"].astype(np.float64), None)
    sd = torch.load(built["squeeze"], weights_only=True)
    out["squeezenet1_1"] = (sd["features.0.weight"].float().numpy().astype(np.float64), None)
    return out


def test_report_json_numbers_match_the_api(built: dict[str, Any]) -> None:
    out = built["out"]
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(built["report"].data))
    images, labels, names = load_sample("test")
    x = images.astype(np.float64) / 255
    run_norm = {
        "name": "run",
        "mean": x.mean(axis=(0, 2, 3)).tolist(),
        "std": x.std(axis=(0, 2, 3)).tolist(),
        "scale": 1 / 255,
    }
    weights = expected_weights(built)
    group_of = {
        "run_true": ("k3-c3-run", run_norm),
        "run_random": ("k3-c3-run", run_norm),
        "resnet18": ("k7-c3-none", NORMALIZATIONS["none"].to_dict()),
        "squeezenet1_1": ("k3-c3-imagenet", NORMALIZATIONS["imagenet"].to_dict()),
    }
    raw = {k: patch_stats(images, kernel_size=k, labels=labels) for k in (3, 7)}
    # The report streamed the named dataset; the in-memory array gives bit-identical statistics.
    stats: dict[str, Any] = {}
    for key, norm in {v[0]: v[1] for v in group_of.values()}.items():
        k = int(key[1])
        stats[key] = raw[k].normalized(norm["mean"], norm["std"], scale=norm["scale"])

    models = []
    profiles: dict[str, np.ndarray] = {}
    for spec, name in zip(built["specs"], group_of, strict=True):
        w, w0 = weights[name]
        key = group_of[name][0]
        st = stats[key]
        p = energy_profile(w, st, init=w0)
        profiles[name] = p
        r = fit(p, st)
        block: dict[str, Any] = {
            "name": name,
            "input": spec,
            "kind": {"run_true": "run", "run_random": "run"}.get(
                name, "torchvision" if name == "squeezenet1_1" else "checkpoint"
            ),
            "layer": {"resnet18": "resnet18", "squeezenet1_1": "features.0"}.get(name, "conv1"),
            "group": key,
            "shape": list(w.shape),
            "init_known": w0 is not None,
            "weight_norm": np.linalg.norm(w),
            "profile": p,
            "dft": {
                "total": dft_profile(w, init=w0).total,
                "per_channel": dft_profile(w, init=w0).per_channel,
                "radii": dft_profile(w, init=w0).radii,
                "radial": dft_profile(w, init=w0).radial,
            },
            "fit": {
                "t": r.t,
                "eta": r.eta,
                "eta_t": r.eta * r.t,
                "correlation": r.correlation,
                "curve": r.curve,
            },
        }
        if w0 is not None:
            run = Path(spec)
            cfg = json.loads((run / "config.json").read_text())["options"]
            res = json.loads((run / "result.json").read_text())["final"]
            block["meta"] = {
                **{k: cfg[k] for k in ("arch", "dataset", "labels", "epochs", "seed", "lr")},
                "batch_size": cfg["batch_size"],
                "complete": True,
                **res,
            }
            block["files"] = {
                str(run / f): sha256(run / f)
                for f in ("config.json", "first_layer_final.npy", "first_layer_init.npy",
                          "result.json")
            }  # fmt: skip
            raw_p = energy_profile(w, st)
            init_p = energy_profile(w0, st)
            block["init"] = {
                "profile_raw": raw_p,
                "init_profile": init_p,
                "init_norm": np.linalg.norm(w0),
                "relative_change": np.linalg.norm(w - w0) / np.linalg.norm(w0),
                "correlation_delta_vs_init": profile_correlation(p, init_p),
                "correlation_raw_vs_init": profile_correlation(raw_p, init_p),
                "correlation_delta_vs_raw": profile_correlation(p, raw_p),
            }
        elif name == "resnet18":
            block["meta"] = {}
            block["files"] = {str(built["npz"]): sha256(built["npz"])}
        else:
            block["meta"] = {"arch": "squeezenet1_1"}
            block["files"] = {str(built["squeeze"]): sha256(built["squeeze"])}
        models.append(block)

    groups = []
    for key in ("k3-c3-run", "k7-c3-none", "k3-c3-imagenet"):
        st = stats[key]
        members = [n for n, (g, _) in group_of.items() if g == key]
        ev = st.pca().eigenvalues
        lc = label_patch_correlation(st)
        groups.append(
            {
                "key": key,
                "kernel_size": st.kernel_size,
                "channels": 3,
                "normalization": {n: v for n, v in group_of[members[0]][1].items()},
                "count": st.count,
                "n_images": len(images),
                "stats_sha256": stats_sha256(raw[st.kernel_size]),
                "models": [{"run_true": "run_true"}.get(m, m) for m in members],
                "eigenvalues": ev,
                "explained_variance_ratio": ev / ev.sum(),
                "patch_power_spectrum": st.spectrum(),
                "labels": {
                    "level": "patch",
                    "classes": lc.classes,
                    "class_counts": np.asarray(st.class_counts)[lc.classes],
                    "coefficient": lc.coefficient,
                    "max_abs_coefficient": np.abs(lc.coefficient).max(),
                    "class_mean_distance": lc.class_mean_distance,
                },
                "correlation": correlation_matrix([profiles[m] for m in members]),
            }
        )
    sample = Path(firstlayer.sources.sample_path())
    data = {
        "name": "sample",
        "path": str(sample),
        "sha256": sha256(sample),
        "source": report["data"]["source"],
        "images": len(images),
        "class_names": names,
    }
    assert str(sample) in report["data"]["source"]
    n = assert_tree(report["models"], models, "models")
    n += assert_tree(report["groups"], groups, "groups")
    n += assert_tree(report["data"], data, "data")
    # Every number of those sections was compared (and there are many).
    assert n == count_numbers([report["models"], report["groups"], report["data"]]) > 3000
    assert report["format"] == "firstlayer.report" and report["version"] == 1
    assert report["command"] == built["command"]
    assert report["provenance"]["seeds"] == {
        "run_true": 3,
        "run_random": 3,
        "resnet18": None,
        "squeezenet1_1": None,
    }
    versions = report["provenance"]["versions"]
    assert versions["firstlayer"] == firstlayer.__version__
    for pkg in ("numpy", "torch", "torchvision", "matplotlib"):
        assert versions[pkg] == metadata.version(pkg)
    # Sanity of the science, not only of the bookkeeping: the theory fits real filters well.
    fits = {m["name"]: m["fit"]["correlation"] for m in report["models"]}
    assert fits["resnet18"] > 0.8


def test_profiles_csv_and_pngs_match_report_json(built: dict[str, Any]) -> None:
    from PIL import Image

    out = built["out"]
    report = json.loads((out / "report.json").read_text())
    with open(out / "profiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_model: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    groups = {g["key"]: g for g in report["groups"]}
    for m in report["models"]:
        got = by_model[m["name"]]
        assert [int(r["component"]) for r in got] == list(range(1, len(m["profile"]) + 1))
        assert [float(r["profile"]) for r in got] == m["profile"]
        assert [float(r["eigenvalue"]) for r in got] == groups[m["group"]]["eigenvalues"]
        assert [float(r["theory"]) for r in got] == m["fit"]["curve"]
        if m["init_known"]:
            assert [float(r["init_profile"]) for r in got] == m["init"]["init_profile"]
    files = [f["file"] for f in report["figures"]]
    assert len(files) == len(set(files))
    sections = {f["section"] for f in report["figures"]}
    assert sections == {
        "profiles", "correlation", "patches", "labels", "fit", "init", "dft", "filters",
    }  # fmt: skip
    assert sum(f["section"] == "init" for f in report["figures"]) == 2  # the two runs
    assert sum(f["section"] == "filters" for f in report["figures"]) == 4
    for name in files:
        with Image.open(out / name) as im:
            im.verify()
    page = (out / "index.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(files)


def test_html_is_self_contained_and_shows_report_numbers(built: dict[str, Any]) -> None:
    page = (built["out"] / "index.html").read_text()
    report = built["report"].data
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:", "#")), f"external reference {attr[:60]}"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    for m in report["models"]:
        assert f"{m['fit']['t']:.4g}" in page
        assert f"{m['fit']['correlation']:.4g}" in page
    for g in report["groups"]:
        assert f"{g['eigenvalues'][0]:.4g}" in page
        for row in g["correlation"]:
            for v in row:
                assert f"{v:.4g}" in page
        assert g["stats_sha256"] in page
    assert html.escape(" ".join(built["command"])) in page
    for name in ("resnet18", "squeezenet1_1", "run_true", "run_random"):
        assert name in page
    assert "airplane" in page  # class names in the label check


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_failed_rebuild_leaves_previous_report_intact(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firstlayer.report import plots

    target = tmp_path / "rep"
    shutil.copytree(built["out"], target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    models = resolve_models([f"{built['npz']}:squeezenet1_1"])
    provider = StatsProvider(dataset="sample", options={"quiet": True})

    def boom(*_: Any) -> bytes:
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(plots, "filters_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(models, target, provider=provider)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no staging folder left behind


def test_rebuild_replaces_files_and_drops_stale_figures(
    built: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "rep"
    shutil.copytree(built["out"], target)
    (target / "notes.txt").write_text("mine")
    models = resolve_models([f"{built['npz']}:squeezenet1_1"])
    provider = StatsProvider(dataset="sample", options={"quiet": True})
    rep = build_report(models, target, provider=provider, command=["x"])
    new = {f["file"] for f in rep.data["figures"]}
    pngs = {p.name for p in target.glob("*.png")}
    assert pngs == new
    assert (target / "notes.txt").read_text() == "mine"  # files not ours are left alone
    assert json.loads((target / "report.json").read_text())["command"] == ["x"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_inputs_errors_are_clear(tmp_path: Path) -> None:
    from firstlayer.report import resolve_model

    with pytest.raises(FileNotFoundError, match="no such run directory or file"):
        resolve_model(str(tmp_path / "missing.pth"))
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="first_layer_final.npy"):
        resolve_model(str(run))
    np.save(run / "first_layer_final.npy", np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"\(F, C, k, k\)"):
        resolve_model(str(run))
    with pytest.raises(ValueError, match="one display name per input"):
        resolve_models([str(tmp_path)], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        build_report([], tmp_path / "r", provider=StatsProvider(dataset="sample"))


def test_torchvision_name_uses_local_hub_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firstlayer.report import resolve_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resolve_model("squeezenet1_1")
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copy(shared_file(SQUEEZENET), ckpt / "squeezenet1_1-b8a52dc0.pth")
    m = resolve_model("squeezenet1_1")
    assert m.kind == "torchvision" and m.weight.shape == (64, 3, 3, 3)
    assert m.normalization == NORMALIZATIONS["imagenet"]


def test_importing_the_report_and_cli_stays_light() -> None:
    import subprocess

    code = (
        "import sys, firstlayer.report, firstlayer.cli; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------

_DECODE_ALL = """
// Wait for the whole page (a big report may still be parsing when the driver hands back
// control), then decode every image.
const done = arguments[arguments.length - 1];
const decodeAll = () => Promise.all(Array.from(document.images).map(img => img.decode().then(
    () => [img.dataset.file || img.src.slice(0, 40), img.naturalWidth, img.naturalHeight, "ok"],
    err => [img.dataset.file || img.src.slice(0, 40), img.naturalWidth, img.naturalHeight,
            String(err)]))).then(done);
if (document.readyState === "complete") decodeAll();
else window.addEventListener("load", decodeAll);
"""


def open_page(driver: Any, page: Path) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Load ``page``; return every image's decode result and the console messages."""
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(page.resolve().as_uri())
    images = driver.execute_async_script(_DECODE_ALL)
    logs = driver.get_log("browser")
    return images, logs


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height), 12000))
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1600)
    return path


def check_report_page(driver: Any, folder: Path, shot: str) -> None:
    from PIL import Image

    report = json.loads((folder / "report.json").read_text())
    images, logs = open_page(driver, folder / "index.html")
    assert sorted(i[0] for i in images) == sorted(f["file"] for f in report["figures"])
    for file, width, height, status in images:
        assert status == "ok", f"{file} did not decode: {status}"
        with Image.open(folder / file) as im:
            assert (width, height) == im.size, file
    assert logs == [], f"console messages: {logs}"
    assert driver.title == report["title"]
    path = screenshot(driver, shot)
    with Image.open(path) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 1600


def test_report_in_headless_chromium(built: dict[str, Any], browser: Any) -> None:
    check_report_page(browser, built["out"], "report_compare.png")


def test_browser_check_catches_broken_images_and_console_errors(
    built: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    """The checks above must be able to fail: a corrupt PNG and a console error are seen."""
    page = (built["out"] / "index.html").read_text()
    broken = re.sub(
        r"data:image/png;base64,[A-Za-z0-9+/=]{200}",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB",
        page,
        count=1,
    )
    broken = broken.replace("</body>", "<script>console.error('oops')</script></body>")
    bad = tmp_path / "index.html"
    bad.write_text(broken)
    images, logs = open_page(browser, bad)
    assert sum(i[3] != "ok" for i in images) == 1
    assert any("oops" in entry["message"] and entry["level"] == "SEVERE" for entry in logs)


# --------------------------------------------------------------------------------------------
# The demo (quick mode): its runs and its report
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import contextlib
    import io

    from firstlayer.cli import main

    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--quick", "--out", str(out), "--quiet", "--threads", "2"])
    return {"code": code, "stdout": buf.getvalue(), "out": out}


def test_demo_quick(demo: dict[str, Any]) -> None:
    assert demo["code"] == 0
    folder = demo["out"] / "report"
    index = (folder / "index.html").resolve()
    assert f"report: {index}" in demo["stdout"]
    assert "patch statistics" in demo["stdout"] and "theory fit" in demo["stdout"]
    # The story along training, set against the paper's Table 2.
    assert "4. along training" in demo["stdout"] and "Table 2" in demo["stdout"]
    data = json.loads((folder / "report.json").read_text())
    assert [m["name"] for m in data["models"]] == ["true labels", "random labels"]
    assert [m["meta"]["labels"] for m in data["models"]] == ["true", "random"]
    assert all(m["init_known"] and "t" in m["fit"] for m in data["models"])
    runs = [demo["out"] / "runs" / lab for lab in ("true", "random")]
    # Same seed, same initialisation: the runs differ only in their labels.
    np.testing.assert_array_equal(*(np.load(r / "first_layer_init.npy") for r in runs))
    assert data["groups"][0]["labels"] is not None  # the sample has labels: the check ran
    assert len(data["pairs"]) == 1 and data["pairs"][0]["trajectory"]["step"]
    assert all(m["regime"]["steps"] == data["pairs"][0]["trajectory"]["step"][-1]
               for m in data["models"])  # fmt: skip
    assert data["command"] == ["firstlayer", "demo", "--quick", "--out", str(demo["out"]),
                               "--quiet", "--threads", "2"]  # fmt: skip


def test_demo_report_in_headless_chromium(demo: dict[str, Any], browser: Any) -> None:
    assert demo["code"] == 0
    check_report_page(browser, demo["out"] / "report", "report_demo.png")
