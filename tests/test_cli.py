"""The ``firstlayer`` command line, called as ``main([...])`` (and once as ``python -m``).

Results printed with ``--json`` are checked against the library's API on the same inputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _data import jpeg_bytes, shared_file
from firstlayer import PatchStats, image_spectrum, patch_stats
from firstlayer.cli import COMMANDS, main
from firstlayer.profile import energy_profile
from firstlayer.report import NORMALIZATIONS
from firstlayer.sources import load_sample
from firstlayer.theory import fit

PRETRAINED = "pretrained_first_layers.npz"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("firstlayer: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def sample_images() -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = load_sample("test")
    return images, labels


# --------------------------------------------------------------------------------------------
# Usage, help and exit codes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: firstlayer {command}")
    assert "exit codes" in out
    if command not in ("reproduce", "train"):
        assert "--quiet" in out and "--json" in out and "--debug" in out


def test_consistent_options(capsys: pytest.CaptureFixture[str]) -> None:
    helps = {c: run(capsys, c, "--help")[1] for c in COMMANDS}
    for c in ("stats", "spectrum", "profile", "fit", "compare"):
        assert "--dataset D, --data D" in helps[c], c
    for c in ("stats", "spectrum", "profile", "fit", "compare", "demo", "train"):
        assert "--out" in helps[c], c
        # One flag for every result, a file or a folder (the API's out_dir= for folders).
        kind = "file" if c in ("stats", "spectrum", "profile", "fit") else "folder"
        assert f"output {kind}" in helps[c], c
    for c in ("train", "demo"):
        assert "--device" in helps[c], c
    assert "--kernel-size" in helps["stats"]
    assert "--labels" in helps["train"] and "--epochs" in helps["train"]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--help")[0] == 0
    assert run(capsys, "--version")[0] == 0
    code, _, err = run(capsys)
    assert code == 2 and "usage: firstlayer" in err
    code, _, err = run(capsys, "bogus")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "stats", "--kernel-size", "three")
    assert code == 2 and "invalid int value" in err
    code, _, err = run(capsys, "stats", "--no-such-option")
    assert code == 2 and "unrecognized arguments" in err
    code, _, err = run(capsys, "compare", "a")  # --out is required
    assert code == 2 and "--out" in err
    code, _, err = run(capsys, "stats", "sample", "--dataset", "cifar10")
    assert code == 2 and "give the dataset once" in err
    code, _, err = run(capsys, "profile", "x.npy", "--stats", "s.npz", "--dataset", "sample")
    assert code == 2 and "either --stats or --dataset" in err


def test_failures_exit_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "no/such/model.pth")
    assert code == 1
    assert "no/such/model.pth" in one_line_error(err)
    code, _, err = run(capsys, "stats", "--kernel-size", "40", "-q")
    assert code == 1
    assert "kernel_size" in one_line_error(err)
    code, _, err = run(capsys, "stats", "no-such-dataset", "-q")
    assert code == 1
    one_line_error(err)


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "no/such/model.pth", "--debug")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("firstlayer: error: ")


def test_python_dash_m_and_exit_code(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "firstlayer", "stats", "--help"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.startswith("usage: firstlayer stats")
    bad = subprocess.run(
        [sys.executable, "-m", "firstlayer", "fit", str(tmp_path / "none.pth")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    one_line_error(bad.stderr)
    script = shutil.which("firstlayer")
    if script is not None:  # the console script of the installed package
        res = subprocess.run([script, "--version"], capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.startswith("firstlayer ")


# --------------------------------------------------------------------------------------------
# stats, spectrum
# --------------------------------------------------------------------------------------------


def test_stats_matches_patch_stats(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sample_images: tuple[np.ndarray, ...]
) -> None:
    images, labels = sample_images
    out = tmp_path / "s.npz"
    d = run_json(capsys, "stats", "--dataset", "sample", "-k", "5", "--out", str(out))
    ref = patch_stats(images, kernel_size=5, labels=labels)
    assert PatchStats.load(out) == ref
    assert d["count"] == ref.count == 1017 * 28 * 28
    assert d["n_images"] == 1017 and d["dim"] == 75 and d["exact"] is True
    np.testing.assert_allclose(d["eigenvalues"], ref.pca().eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(d["mean"], ref.mean, rtol=1e-12)
    assert d["class_counts"] == np.asarray(ref.class_counts).tolist()
    code, text, _ = run(capsys, "stats", "sample", "--top", "3", "-q")
    assert code == 0 and "top 3 PCA eigenvalues" in text and "patches=915,300" in text


def test_stats_of_a_jpeg_folder_with_resize_and_crop(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Real CIFAR-10 JPEGs; the CLI's folder options give what the Python API gives.
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for g in range(40):
        (folder / f"{g:03d}.jpg").write_bytes(jpeg_bytes(g))
    out = tmp_path / "f.npz"
    args = ["stats", str(folder), "-k", "5", "--resize", "40", "--center-crop", "36"]
    d = run_json(capsys, *args, "--out", str(out))
    ref = patch_stats(folder, kernel_size=5, resize=40, center_crop=36, quiet=True)
    assert PatchStats.load(out) == ref
    assert d["n_images"] == 40 and d["count"] == 40 * 32 * 32
    gray = run_json(capsys, "stats", str(folder), "-k", "3", "--grayscale", "--decoder", "pillow")
    assert gray["channels"] == 1 and gray["dim"] == 9
    ref_gray = patch_stats(folder, kernel_size=3, grayscale=True, decoder="pillow", quiet=True)
    np.testing.assert_allclose(gray["mean"], ref_gray.mean, rtol=1e-12)
    # On a source that is not made of image files the options are refused by name.
    code, _, err = run(capsys, "stats", "sample", "--resize", "40")
    assert code == 1 and "resize" in err


def test_stats_normalized(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "n.npz"
    run_json(capsys, "stats", "sample", "--normalize", "imagenet", "--out", str(out))
    saved = PatchStats.load(out)
    imagenet = NORMALIZATIONS["imagenet"]
    expected = patch_stats("sample", kernel_size=3, quiet=True).normalized(
        list(imagenet.mean), list(imagenet.std)
    )
    assert saved.transform == expected.transform
    np.testing.assert_allclose(saved.covariance, expected.covariance, rtol=1e-12)


def test_spectrum_of_images_and_of_patches(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sample_images: tuple[np.ndarray, ...]
) -> None:
    images, _ = sample_images
    d = run_json(capsys, "spectrum", "sample", "--out", str(tmp_path / "spec.npz"))
    ref = image_spectrum(images)
    assert d["images"] == 1017 and d["size"] == [32, 32]
    assert d["alpha"] == pytest.approx(ref.alpha, rel=1e-12)
    f, p = ref.radial()
    np.testing.assert_allclose(d["radial_power"], p, rtol=1e-12)
    np.testing.assert_allclose(d["radial_frequency"], f, rtol=1e-12)
    stats_file = tmp_path / "s.npz"
    patch_stats(images, kernel_size=3).save(stats_file)
    d = run_json(capsys, "spectrum", "--stats", str(stats_file))
    np.testing.assert_allclose(d["patch_power"], PatchStats.load(stats_file).spectrum(), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# profile, fit
# --------------------------------------------------------------------------------------------


def test_profile_and_fit_of_a_pretrained_layer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sample_images: tuple[np.ndarray, ...]
) -> None:
    images, labels = sample_images
    npz = shared_file(PRETRAINED)
    with np.load(npz) as z:
        w = z["resnet18"].astype(np.float64)
    imagenet = NORMALIZATIONS["imagenet"]
    stats = patch_stats(images, kernel_size=7, labels=labels).normalized(
        list(imagenet.mean), list(imagenet.std)
    )
    ref = energy_profile(w, stats)
    spec = f"{npz}:resnet18"
    d = run_json(capsys, "profile", spec, "--normalize", "imagenet")
    np.testing.assert_allclose(d["profile"], ref, rtol=1e-10)
    assert d["shape"] == [64, 3, 7, 7] and d["normalization"]["name"] == "imagenet"
    assert d["init_subtracted"] is False
    d = run_json(capsys, "fit", spec, "--normalize", "imagenet")
    r = fit(ref, stats)
    assert d["t"] == pytest.approx(r.t, rel=1e-10)
    assert d["correlation"] == pytest.approx(r.correlation, rel=1e-10)
    assert d["correlation"] > 0.8
    # A saved profile fitted against saved statistics gives the same answer.
    np.save(tmp_path / "p.npy", ref)
    stats.save(tmp_path / "s.npz")
    d2 = run_json(capsys, "fit", str(tmp_path / "p.npy"), "--stats", str(tmp_path / "s.npz"))
    assert d2["t"] == pytest.approx(r.t, rel=1e-10)
    # Output files.
    code, _, _ = run(capsys, "profile", spec, "--out", str(tmp_path / "p.csv"), "-q")
    assert code == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "component,energy,eigenvalue" and len(rows) == 1 + 147
    code, _, _ = run(capsys, "profile", spec, "--basis", "dft", "--out", str(tmp_path / "d.npy"))
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), energy_profile(w, basis="dft"))


def test_profile_rejects_statistics_of_another_size(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sample_images: tuple[np.ndarray, ...]
) -> None:
    patch_stats(sample_images[0], kernel_size=3).save(tmp_path / "s3.npz")
    spec = f"{shared_file(PRETRAINED)}:resnet18"
    stats, out = str(tmp_path / "s3.npz"), str(tmp_path / "r")
    code, _, err = run(capsys, "compare", spec, "--stats", stats, "-o", out, "-q")
    assert code == 1
    assert "3x7x7 filters but the statistics hold 3x3x3" in one_line_error(err)


# --------------------------------------------------------------------------------------------
# train, compare, info
# --------------------------------------------------------------------------------------------


def test_train_then_profile_and_compare(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    runs = tmp_path / "runs"
    code, out, err = run(
        capsys,
        "train", "--out", str(runs / "r"), "--dataset", "sample", "--subset", "128",
        "--test-subset", "64", "--epochs", "1", "--batch-size", "64", "--labels", "random",
        "--device", "cpu", "--quiet", "--first-width", "8",
    )  # fmt: skip
    assert code == 0, err
    assert f"run written to {runs / 'r'}" in out
    final = np.load(runs / "r" / "first_layer_final.npy").astype(np.float64)
    init = np.load(runs / "r" / "first_layer_init.npy").astype(np.float64)
    assert final.shape == (8, 3, 3, 3)
    cfg = json.loads((runs / "r" / "config.json").read_text())["derived"]
    images, labels, _ = load_sample("test")
    stats = patch_stats(images, kernel_size=3, labels=labels).normalized(cfg["mean"], cfg["std"])
    d = run_json(capsys, "profile", str(runs / "r"))
    assert d["init_subtracted"] is True and d["normalization"]["name"] == "run"
    np.testing.assert_allclose(d["profile"], energy_profile(final, stats, init=init), rtol=1e-10)
    d = run_json(capsys, "profile", str(runs / "r"), "--no-init")
    np.testing.assert_allclose(d["profile"], energy_profile(final, stats), rtol=1e-10)

    report = tmp_path / "report"
    spec = f"{shared_file(PRETRAINED)}:squeezenet1_1"
    d = run_json(
        capsys, "compare", str(runs / "r"), spec, "--names", "mine,squeeze", "--out", str(report)
    )
    assert Path(d["index"]) == report / "index.html"
    data = json.loads((report / "report.json").read_text())
    assert [m["name"] for m in data["models"]] == ["mine", "squeeze"]
    assert data["data"]["name"] == "sample"  # the runs' dataset, by default
    assert data["command"][:2] == ["firstlayer", "compare"]
    assert (report / "profiles.csv").is_file()
    assert all((report / f).is_file() for f in d["figures"])
    assert set(d["fits"]) == {"mine", "squeeze"}


def test_info(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, "info")
    assert d["versions"]["firstlayer"]
    assert d["sample"]["present"] is True
    assert d["datasets"]["sample"] == 1017 and d["datasets"]["sample-train"] == 350
    assert d["devices"]["cpu"] is True
    code, out, _ = run(capsys, "info")
    assert code == 0 and "bundled sample" in out
