"""Reliability and security (issue 9): bad inputs, hostile files, faults and numerics.

This file holds what the other test files do not already check; ``docs/reliability.md`` lists both
(the catalogue refers to the existing tests by name). Sections:

* a catalogue of bad inputs, each with the exception and the message it gets;
* hostile files: pickles that try to run code (a marker file proves nothing ran), the committed
  corpus of ``tests/fuzz/corpus``;
* faults: SIGKILL at random points of a streaming run with a checkpoint (resumed until done),
  of a ``PatchStats.save`` and of a report write; disk full (``RLIMIT_FSIZE``) and unwritable
  paths, which must be reported and must leave the previous file intact;
* numerics: ``uint8`` statistics exact at ImageNet scale on the all-255 worst case, float
  statistics against an exact rational reference.

Bugs found are ``xfail(strict=True)`` tests whose reason names the fix. The longer fuzzing job
lives in ``tests/fuzz`` (``FIRSTLAYER_FUZZ=1 pytest -m slow tests/fuzz``).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firstlayer
from firstlayer import PatchStats, patch_stats
from firstlayer._io import save_npz
from firstlayer.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from firstlayer.exceptions import UnsafePickleError
from firstlayer.sources.cifar_pickle import read_cifar_batch

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
MARKER = "FIRSTLAYER_PWNED"  # what the hostile corpus files try to create in the working dir


def _images(n: int = 4, c: int = 3, h: int = 9, w: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def _run(code: str, *args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# =============================================================================================
# 1. The catalogue of bad inputs
# =============================================================================================
#
# Already covered elsewhere (not repeated here): tests/test_stats.py::BAD_INPUTS (20 cases: dtype,
# 5-D/2-D shapes, ambiguous layout, empty batch, image smaller than the kernel, NaN/Inf pixels,
# kernel_size 0/16/2.5, stride 0, padding >= k, bad layout/method, labels of the wrong length,
# negative or float labels, non-contiguous arrays, lists), test_bad_updates_and_merges,
# test_save_load_round_trip_and_damaged_files (truncated, tampered, foreign and missing stats
# files); test_filters.py::test_file_and_name_errors (pickled module refused by weights_only);
# test_profile.py::test_errors_name_the_argument; test_extract.py::test_errors_name_the_argument,
# test_out_errors; test_sources.py::test_malicious_pickle_is_refused_not_run,
# test_crafted_pickles_raise, test_corrupt_and_truncated_files, test_argument_errors,
# test_checkpoint_of_another_run_is_refused; test_decode.py::test_corrupt_and_truncated_files_
# give_reasons; test_report.py::test_inputs_errors_are_clear; test_cli.py::test_usage_errors_exit_2,
# test_failures_exit_1_with_one_line, test_profile_rejects_statistics_of_another_size.


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of damaged and foreign files for the catalogue."""
    d = tmp_path_factory.mktemp("bad")
    x = _images()
    stats = patch_stats(x, 3)
    stats.save(d / "stats.npz")
    raw = (d / "stats.npz").read_bytes()
    (d / "random.bin").write_bytes(np.random.default_rng(1).bytes(512))
    (d / "random.npz").write_bytes(np.random.default_rng(1).bytes(512))
    (d / "random.pth").write_bytes(np.random.default_rng(2).bytes(512))
    (d / "empty.pth").write_bytes(b"")
    (d / "empty.npz").write_bytes(b"")
    (d / "stats_truncated.npz").write_bytes(raw[:-100])
    np.save(d / "plain.npy", np.zeros(3))
    (d / "a_file").write_text("not a folder")
    # A PatchStats file of another (future) version, properly checksummed.
    with np.load(d / "stats.npz") as z:
        fields = {k: z[k] for k in z.files if not k.startswith("__")}
    save_npz(d / "stats_v9.npz", "firstlayer.PatchStats", 9, **fields)
    # A stats file whose window was tampered with (the checksum catches it).
    with np.load(d / "stats.npz") as z:
        tampered = {k: z[k] for k in z.files}
    tampered["window"] = np.array([5, 1, 0, 3])
    np.savez(d / "stats_tampered.npz", **tampered)
    write_checkpoint(d / "ckpt.npz", Checkpoint(stats=stats, position=4, fingerprint="f"))
    c = (d / "ckpt.npz").read_bytes()
    (d / "ckpt_truncated.npz").write_bytes(c[: len(c) // 2])
    np.savez(d / "ckpt_future.npz", checkpoint_version=np.array(99), position=np.array(0),
             fingerprint=np.array("f"), stats_npz=np.zeros(1, np.uint8))  # fmt: skip
    return d


S = patch_stats(_images(), 3)
S5 = patch_stats(_images(), 5)
GRAY = _images(4, 1)

# (id, thunk taking the folder of bad files, exception, message regex)
CATALOGUE: list[tuple[str, Callable[[Path], Any], type[BaseException], str]] = [
    # -- arrays: dtypes, shapes, layouts -------------------------------------------------------
    ("float16 pixels", lambda d: patch_stats(_images().astype(np.float16), 3), TypeError,
     "expected dtype uint8, float32 or float64, got float16"),
    ("bool pixels", lambda d: patch_stats(_images() > 0, 3), TypeError, "got bool"),
    ("int8 pixels", lambda d: patch_stats(_images().astype(np.int8), 3), TypeError, "got int8"),
    ("complex pixels", lambda d: patch_stats(_images().astype(np.complex64), 3), TypeError,
     "got complex64"),
    ("1-D array", lambda d: patch_stats(np.zeros(9, np.uint8), 3), ValueError, "got 1-D shape"),
    ("scalar", lambda d: patch_stats(np.uint8(3), 3), TypeError, "source must be an array"),
    ("None", lambda d: patch_stats(None, 3), (TypeError, ValueError), "."),  # type: ignore[list-item]
    ("transposed view of ambiguous layout", lambda d: patch_stats(
        np.zeros((2, 3, 4, 3), np.uint8).transpose(0, 2, 1, 3), 3), ValueError, "layout="),
    ("zero-width images", lambda d: patch_stats(np.zeros((2, 3, 8, 0), np.uint8), 3,
                                                layout="NCHW"), ValueError, "non-empty image"),
    ("1x1 images, k=3", lambda d: patch_stats(np.zeros((2, 1, 1, 1), np.uint8), 3,
                                              layout="NCHW"), ValueError, "at least 3x3"),
    ("2x9 images, k=3 (one side too small)",
     lambda d: patch_stats(np.zeros((2, 1, 2, 9), np.uint8), 3, layout="NCHW"),
     ValueError, "at least 3x3"),
    ("update with another channel count", lambda d: S.copy().update(GRAY, layout="NCHW"),
     ValueError, "expected images with 3 channels, got 1"),
    ("update of normalized statistics",
     lambda d: S.normalized(0.5, 0.2).update(_images().astype(np.float32)), ValueError,
     "normalized statistics are derived"),
    # -- NaN / Inf ------------------------------------------------------------------------------
    ("-Inf float64 pixel", lambda d: patch_stats(
        np.where(np.arange(81).reshape(1, 1, 9, 9) == 40, -np.inf, 0.5), 3), ValueError,
     "NaN or infinite"),
    ("NaN in a streamed update", lambda d: PatchStats.empty(3, 1, exact=False).update(
        np.full((1, 1, 4, 4), np.nan, np.float32), layout="NCHW"), ValueError, "NaN or infinite"),
    ("NaN normalisation mean", lambda d: S.normalized(np.nan, 0.2), ValueError,
     "mean: expected finite"),
    ("infinite scale", lambda d: S.normalized(0.5, 0.2, scale=np.inf), ValueError,
     "scale: expected a finite"),
    ("NaN zca eps", lambda d: S.zca(np.nan), ValueError, "eps: expected a finite"),
    ("negative zca eps", lambda d: S.zca(-1.0), ValueError, "eps: expected a finite"),
    ("NaN filters", lambda d: firstlayer.energy_profile(np.full((4, 3, 3, 3), np.nan), S),
     ValueError, "weights: expected finite"),
    # -- labels ---------------------------------------------------------------------------------
    ("labels 2-D", lambda d: patch_stats(_images(), 3, labels=[[0], [1], [2], [3]]), ValueError,
     r"labels: expected shape \(4,\)"),
    ("labels too long", lambda d: patch_stats(_images(), 3, labels=[0] * 5), ValueError,
     r"expected shape \(4,\) \(one label per image\), got \(5,\)"),
    ("labels empty", lambda d: patch_stats(_images(), 3, labels=np.zeros(0, int)), ValueError,
     r"got \(0,\)"),
    ("labels bool", lambda d: patch_stats(_images(), 3, labels=[True] * 4), TypeError,
     "labels: expected integers, got dtype bool"),
    ("labels strings", lambda d: patch_stats(_images(), 3, labels=["a"] * 4), TypeError,
     "labels: expected integers"),
    # -- mismatched weights and statistics ------------------------------------------------------
    ("5x5 filters vs 3x3 statistics",
     lambda d: firstlayer.energy_profile(np.ones((4, 3, 5, 5)), S), ValueError,
     r"weights: expected shape \(F, 3, 3, 3\) to match the patch statistics"),
    ("3x3 filters vs 5x5 statistics",
     lambda d: firstlayer.energy_profile(np.ones((4, 3, 3, 3)), S5), ValueError,
     r"expected shape \(F, 3, 5, 5\)"),
    ("grey filters vs colour statistics",
     lambda d: firstlayer.energy_profile(np.ones((4, 1, 3, 3)), S), ValueError,
     r"expected shape \(F, 3, 3, 3\)"),
    ("no filters", lambda d: firstlayer.energy_profile(np.ones((0, 3, 3, 3)), S), ValueError,
     "at least one non-empty filter"),
    ("statistics without patches",
     lambda d: firstlayer.energy_profile(np.ones((4, 3, 3, 3)), PatchStats.empty(3, 3)),
     ValueError, "hold no patches"),
    ("merge exact with float statistics",
     lambda d: S + patch_stats(_images().astype(np.float32), 3), ValueError, "cannot merge"),
    ("merge raw with normalized", lambda d: S + S.normalized(0.5, 0.2), ValueError,
     "cannot merge"),
    # -- kernel_size / stride / padding extremes ------------------------------------------------
    ("kernel_size huge", lambda d: patch_stats(_images(), 10**12), ValueError,
     r"kernel_size: expected an integer in \[1, \d+\], got 1000000000000"),
    ("kernel_size negative", lambda d: patch_stats(_images(), -3), ValueError, "kernel_size"),
    ("kernel_size numpy float", lambda d: patch_stats(_images(), np.float64(3)), TypeError,
     "kernel_size: expected an integer"),
    ("kernel_size True", lambda d: patch_stats(_images(), True), TypeError,
     "kernel_size: expected an integer, got bool"),
    ("stride negative", lambda d: patch_stats(_images(), 3, stride=-1), ValueError, "stride"),
    ("stride None", lambda d: patch_stats(_images(), 3, stride=None), TypeError, "stride"),
    ("padding negative", lambda d: patch_stats(_images(), 3, padding=-1), ValueError, "padding"),
    ("empty() kernel_size 0", lambda d: PatchStats.empty(0, 3), ValueError, "kernel_size"),
    ("empty() channels 0", lambda d: PatchStats.empty(3, 0), ValueError, "channels"),
    # -- stats files ----------------------------------------------------------------------------
    ("stats file of version 9", lambda d: PatchStats.load(d / "stats_v9.npz"), ValueError,
     r"format version 9 is not supported \(expected 1 or 2\)"),
    ("stats file tampered window", lambda d: PatchStats.load(d / "stats_tampered.npz"),
     ValueError, "checksum mismatch"),
    ("stats file cut by 100 bytes", lambda d: PatchStats.load(d / "stats_truncated.npz"),
     ValueError, "truncated or corrupt"),
    ("stats file of random bytes", lambda d: PatchStats.load(d / "random.npz"), ValueError,
     "not a readable firstlayer.PatchStats file"),
    ("stats file empty", lambda d: PatchStats.load(d / "empty.npz"), ValueError,
     "not a readable firstlayer.PatchStats file"),
    ("stats file is a checkpoint", lambda d: PatchStats.load(d / "ckpt.npz"), ValueError,
     "expected a firstlayer.PatchStats file, got an npz file without a format tag"),
    ("stats path is a folder", lambda d: PatchStats.load(d), ValueError, "is a folder"),
    # -- checkpoints ----------------------------------------------------------------------------
    ("checkpoint of a future version", lambda d: read_checkpoint(d / "ckpt_future.npz"),
     ValueError, "has version 99; this firstlayer reads up to 2"),
    ("checkpoint is a stats file", lambda d: read_checkpoint(d / "stats.npz"), ValueError,
     "is not a firstlayer checkpoint"),
    ("checkpoint path is a folder", lambda d: read_checkpoint(d), ValueError, "is a folder"),
    ("checkpoint missing", lambda d: read_checkpoint(d / "nope.npz"), FileNotFoundError, "nope"),
    # -- network checkpoints that are not checkpoints -------------------------------------------
    ("first_layer on random bytes .pth", lambda d: firstlayer.first_layer(d / "random.pth"),
     ValueError, r"cannot be loaded with torch.load\(weights_only=True\)"),
    ("first_layer on an empty .pth", lambda d: firstlayer.first_layer(d / "empty.pth"),
     ValueError, "is not a readable PyTorch checkpoint"),
    ("first_layer on a stats file", lambda d: firstlayer.first_layer(d / "stats.npz"),
     ValueError, "holds several arrays"),
    ("first_layer on a folder", lambda d: firstlayer.first_layer(d), ValueError,
     "expected an existing checkpoint file"),
    # A .npy is read as an array (issue 17: it was said to "pickle code"); this one is 1-D.
    ("first_layer on a 1-D .npy file", lambda d: firstlayer.first_layer(d / "plain.npy"),
     ValueError, r"plain.npy\): expected first-layer weights of shape \(F, C, k, k\)"),
    # -- CIFAR batches --------------------------------------------------------------------------
    ("CIFAR batch of random bytes", lambda d: read_cifar_batch(d / "random.bin"),
     UnsafePickleError, "refusing to unpickle it"),
    ("CIFAR batch empty", lambda d: read_cifar_batch(data=b""), UnsafePickleError,
     "file ends inside an opcode"),
    ("CIFAR batch missing", lambda d: read_cifar_batch(d / "data_batch_9"), FileNotFoundError,
     "data_batch_9"),
    # -- paths that do not exist or cannot be written -------------------------------------------
    ("save into a missing folder", lambda d: S.save(d / "no" / "such" / "s.npz"),
     FileNotFoundError, "does not exist"),
    ("save under a regular file", lambda d: S.save(d / "a_file" / "s.npz"), FileNotFoundError,
     "does not exist"),
    ("save into /proc", lambda d: S.save("/proc/firstlayer-test.npz"), OSError, "."),
    ("save over a folder", lambda d: S.save(d), IsADirectoryError, "is a folder, expected a file"),
    ("checkpoint under a regular file",
     lambda d: write_checkpoint(d / "a_file" / "c.npz", Checkpoint(S, 0, "f")), OSError, "."),
    ("stream a missing folder", lambda d: patch_stats(d / "missing_folder", 3, quiet=True),
     (FileNotFoundError, ValueError), "missing_folder"),  # type: ignore[list-item]
]  # fmt: skip


@pytest.mark.parametrize(
    ("thunk", "error", "match"),
    [pytest.param(t, e, m, id=i) for i, t, e, m in CATALOGUE],
)
def test_bad_input_catalogue(files: Path, thunk: Callable, error: Any, match: str) -> None:
    with pytest.raises(error, match=match):
        thunk(files)
    assert not list(files.glob(".*.tmp")), "a temporary file was left behind"


def test_stride_larger_than_the_image_gives_one_patch_per_image() -> None:
    x = _images()
    for stride in (9, 10**9, 2**31):
        s = patch_stats(x, 3, stride=stride)
        corner = patch_stats(x[:, :, :3, :3].copy(), 3, layout="NCHW")
        assert s.count == len(x)
        assert np.array_equal(s.second_moment, corner.second_moment)


def test_uint8_labels_out_of_the_range_of_int64_are_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        patch_stats(_images(2), 3, labels=np.array([0, 2**63 + 5], np.uint64))


# ---- bugs found (xfail strict: each one passes once fixed) ----------------------------------


def test_huge_label_is_a_clear_error_not_an_abort() -> None:
    proc = _run(
        """
        import numpy as np, firstlayer
        x = np.zeros((2, 3, 8, 8), np.uint8)
        try:
            firstlayer.patch_stats(x, 3, labels=[0, 2**40])
        except ValueError as e:
            print("ValueError", e)
        """
    )
    assert proc.returncode == 0 and "ValueError" in proc.stdout and "labels" in proc.stdout, (
        proc.returncode,
        proc.stderr[-300:],
    )


def test_stride_too_large_for_the_core_names_the_argument() -> None:
    with pytest.raises(ValueError, match="stride"):
        patch_stats(_images(), 3, stride=2**64)


def test_forged_stats_file_with_a_valid_checksum_is_a_value_error(tmp_path: Path) -> None:
    save_npz(tmp_path / "f.npz", "firstlayer.PatchStats", 1, foo=np.zeros(3))
    with pytest.raises(ValueError, match="f.npz"):
        PatchStats.load(tmp_path / "f.npz")


def test_garbage_npz_messages_name_the_file(files: Path) -> None:
    for call in (read_checkpoint, firstlayer.first_layer):
        with pytest.raises(ValueError) as err:
            call(files / "random.npz")
        assert "random.npz" in str(err.value) and "allow_pickle" not in str(err.value)


def test_stats_load_of_a_npy_file_is_a_value_error(files: Path) -> None:
    with pytest.raises(ValueError, match="plain.npy"):
        PatchStats.load(files / "plain.npy")


def test_truncated_checkpoint_does_not_leak_a_file_handle(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaked: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", leaked.append)
    with pytest.raises(ValueError, match="not a readable firstlayer checkpoint"):
        read_checkpoint(files / "ckpt_truncated.npz")
    gc.collect()
    assert not leaked, [str(u.exc_value) for u in leaked]


def _zip_entry_flag(src: Path, dst: Path, field: str) -> Path:
    """Copy ``src`` with its last central-directory entry marked encrypted or oddly compressed."""
    import struct

    data = bytearray(src.read_bytes())
    at = data.rfind(b"PK\x01\x02")
    offset, value = {"encrypted": (8, 1), "compression": (10, 99)}[field]
    data[at + offset : at + offset + 2] = struct.pack("<H", value)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("field", ["encrypted", "compression"])
@pytest.mark.parametrize("reader", ["stats", "checkpoint"])
def test_zip_entries_encrypted_or_oddly_compressed_are_value_errors(
    files: Path, tmp_path: Path, field: str, reader: str
) -> None:
    src = files / ("stats.npz" if reader == "stats" else "ckpt.npz")
    bad = _zip_entry_flag(src, tmp_path / "bad.npz", field)
    with pytest.raises(ValueError, match="bad.npz"):
        PatchStats.load(bad) if reader == "stats" else read_checkpoint(bad)


# =============================================================================================
# 2. Hostile files: nothing executes
# =============================================================================================


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_torch_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    import pickle

    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pth"
    torch.save({"conv1.weight": _Exec(marker)}, evil)
    # The plain unpickler does run it, so the test is meaningful.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match=r"weights_only=True\) \(it pickles code or objects\)"):
        firstlayer.first_layer(evil)
    with pytest.raises(ValueError, match="weights_only"):
        firstlayer.first_layer("resnet18", weights=evil)
    assert not marker.exists()
    # The same payload as a plain pickle and as a CIFAR batch.
    evil_batch = tmp_path / "data_batch_1"
    evil_batch.write_bytes(pickle.dumps({b"data": _Exec(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError, match="exec"):
        read_cifar_batch(evil_batch)
    with pytest.raises(UnsafePickleError):
        patch_stats(tmp_path, 3, quiet=True)  # the folder is read as CIFAR batches
    # And through the command line: exit 1 with one line, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "firstlayer", "compare", str(evil), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only" in proc.stderr
    assert not marker.exists() and not (tmp_path / "r").exists()


def _corpus(prefix: str) -> list[Path]:
    return sorted(p for p in CORPUS.glob(f"{prefix}-*") if p.is_file())


def test_corpus_is_small_and_present() -> None:
    paths = list(CORPUS.iterdir())
    assert len(paths) >= 15
    assert sum(p.stat().st_size for p in paths) < 24_000


@pytest.mark.parametrize("path", _corpus("pickle"), ids=lambda p: p.name)
def test_corpus_cifar_batches(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if "-ok-" in path.name:
        assert read_cifar_batch(path).images.shape == (1, 3, 32, 32)
    else:
        with pytest.raises(ValueError):  # UnsafePickleError is a ValueError
            read_cifar_batch(path)
        if "exec" in path.name or "system" in path.name or "popen" in path.name:
            with pytest.raises(UnsafePickleError, match="callable"):
                read_cifar_batch(path)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("path", _corpus("torch"), ids=lambda p: p.name)
def test_corpus_torch_checkpoints(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="weights_only=True|not a readable PyTorch checkpoint"):
        firstlayer.first_layer(path)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("path", _corpus("stats"), ids=lambda p: p.name)
def test_corpus_stats_files(path: Path) -> None:
    if "-ok-" in path.name:
        assert PatchStats.load(path).count == 40
    else:
        with pytest.raises(ValueError, match="truncated or corrupt|checksum mismatch"):
            PatchStats.load(path)


@pytest.mark.parametrize("path", _corpus("ckpt"), ids=lambda p: p.name)
def test_corpus_checkpoints(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "unraisablehook", lambda _: None)  # the leak has its own test
    with pytest.raises(ValueError, match="not a readable firstlayer checkpoint"):
        read_checkpoint(path)
    gc.collect()


def test_corpus_pngs_give_reasons_not_exceptions() -> None:
    from firstlayer import _core

    paths = _corpus("png")
    out = _core.decode_images([str(p) for p in paths])
    for p, r in zip(paths, out, strict=True):
        if "-ok-" in p.name:
            assert isinstance(r, np.ndarray) and r.shape == (6, 5, 3), p.name
        else:
            assert isinstance(r, str) and r, p.name


# =============================================================================================
# 3. Faults
# =============================================================================================

_STREAM_CHILD = """
import sys, time
from firstlayer import _core
from firstlayer.streaming import stream_stats

fast = _core.decode_images

def decode(paths, **kw):
    time.sleep(0.004 * len(paths))  # slow enough to be killed anywhere
    return fast(paths, **kw)

_core.decode_images = decode
stream_stats(sys.argv[1], kernel_size=3, batch_size=20, decode_threads=2,
             checkpoint=sys.argv[2], checkpoint_every=40, quiet=True)
print("finished")
"""


def test_random_sigkills_of_a_folder_run_resume_to_the_same_statistics(tmp_path: Path) -> None:
    """Kill a checkpointed run over a PNG folder again and again; resume until it finishes."""
    from PIL import Image

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (400, 3, 12, 12), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    ckpt = tmp_path / "run.partial.npz"
    chooser = random.Random(9)
    kills, positions = 0, []
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", _STREAM_CHILD, str(folder), str(ckpt)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        start = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        while child.poll() is None and time.monotonic() < deadline:
            if ckpt.exists() and ckpt.stat().st_mtime_ns != start:
                break
            time.sleep(0.005)
        time.sleep(chooser.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate()
        if b"finished" in out or child.returncode != -signal.SIGKILL:
            assert b"finished" in out, err  # it ended before the kill landed
            break
        kills += 1
        state = read_checkpoint(ckpt)  # never torn
        assert state.stats.n_images == state.position and state.position % 20 == 0
        positions.append(state.position)
    assert kills >= 2, positions
    assert positions == sorted(positions)
    resumed = firstlayer.streaming.stream_stats(
        folder, kernel_size=3, batch_size=20, checkpoint=ckpt, checkpoint_every=40, quiet=True
    )
    assert resumed == patch_stats(x, 3)
    assert not ckpt.exists()
    # A SIGKILL cannot clean up: what it leaves are hidden temporaries, never a finished-looking
    # file (docs/reliability.md notes that the next run does not sweep them).
    left = {p.name for p in tmp_path.iterdir()} - {"images"}
    assert all(n.startswith(".") for n in left), left


_SAVE_KILLER = """
import os, signal, sys
import numpy as np, firstlayer
x = np.full((2, 3, 8, 8), int(sys.argv[2]), np.uint8)
stats = firstlayer.patch_stats(x, 3)
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
where = sys.argv[3]
if where == "fsync":
    os.fsync = die
else:
    os.replace = die
stats.save(sys.argv[1])
"""


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_sigkill_while_saving_statistics_keeps_the_old_file(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s.npz"
    old = patch_stats(np.full((2, 3, 8, 8), 7, np.uint8), 3)
    old.save(path)
    proc = _run(_SAVE_KILLER, str(path), "200", where)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert PatchStats.load(path) == old
    # The orphan is a hidden temporary, never a file with the destination's name.
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"s.npz"}


_TRAIN_KILLER = """
import json, os, signal, sys
real = os.replace
def replace(a, b):
    os.kill(os.getpid(), signal.SIGKILL)  # the first atomic write of the run
os.replace = replace
from firstlayer.train import train
train(**json.loads(sys.argv[1]))
"""


def test_training_killed_before_its_first_checkpoint_can_be_resumed(tmp_path: Path) -> None:
    from firstlayer.train import train

    kw = {"arch": "small_cnn", "dataset": "sample", "subset": 32, "test_dataset": "none",
          "width": 0.25, "batch_size": 16, "epochs": 1, "threads": 1, "quiet": True,
          "out_dir": str(tmp_path / "run")}  # fmt: skip
    proc = _run(_TRAIN_KILLER, json.dumps(kw), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-500:]
    assert (tmp_path / "run").exists()
    train(**{**kw, "resume": True})
    assert (tmp_path / "run" / "result.json").exists()


_FSIZE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def _with_full_disk(limit: int) -> Callable[[], None]:
    """A preexec_fn: every write beyond ``limit`` bytes fails (EFBIG, like ENOSPC)."""

    def setup() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_disk_full_while_saving_is_reported_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    old = patch_stats(_images(seed=1), 3)
    old.save(path)
    code = _FSIZE.format(limit=2000) + textwrap.dedent(
        """
        import sys, numpy as np, firstlayer
        from firstlayer.checkpoint import Checkpoint, write_checkpoint
        s = firstlayer.patch_stats(np.full((2, 3, 9, 9), 255, np.uint8), 3)
        for what, call in [("save", lambda: s.save(sys.argv[1])),
                           ("checkpoint", lambda: write_checkpoint(sys.argv[2],
                                                                   Checkpoint(s, 2, "f")))]:
            try:
                call()
                print(what, "no error")
            except OSError as e:
                print(what, type(e).__name__, e.errno)
        """
    )
    proc = _run(code, str(path), str(tmp_path / "c.npz"))
    assert proc.returncode == 0, proc.stderr
    assert "save OSError 27" in proc.stdout and "checkpoint OSError 27" in proc.stdout
    assert PatchStats.load(path) == old  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]  # no temporary left


def test_cli_reports_disk_full_and_unwritable_paths(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "firstlayer", "stats", "sample", "-q", "-k", "3"]
    full = subprocess.run(
        [*cmd, "-o", str(tmp_path / "s.npz")], capture_output=True, text=True, timeout=120,
        preexec_fn=_with_full_disk(2000),
    )  # fmt: skip
    assert full.returncode == 1, full.stderr
    assert "File too large" in full.stderr and "Traceback" not in full.stderr
    assert not list(tmp_path.iterdir())
    for target in ("/proc/firstlayer.npz", str(tmp_path / "no" / "x.npz")):
        bad = subprocess.run([*cmd, "-o", target], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1, bad.stderr
        assert bad.stderr.startswith("firstlayer: error:") and "Traceback" not in bad.stderr


_REPORT_KILLER = """
import json, os, signal, sys
from pathlib import Path
from firstlayer.report import build
out, kill_at, swap = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
calls = {"n": 0}
def counted(real):
    def step(*args, **kw):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kw)
    return step
# The steps that change what is on disk once the new files are written: hard links of the user's
# files while staging, the swap (one renameat2, or two renames), the removal of the old folder.
for name in ("rename", "replace", "link", "unlink"):
    setattr(os, name, counted(getattr(os, name)))
build._exchange = counted(build._exchange) if swap == "exchange" else lambda a, b: False
build._write_folder(out, {k: v.encode() for k, v in json.loads(sys.argv[3]).items()})
"""


def _report_files(gen: str, figures: list[str]) -> dict[str, str]:
    files = {f: f"{gen}:{f}" for f in figures}
    files["report.json"] = json.dumps({"gen": gen, "figures": [{"file": f} for f in figures]})
    files["profiles.csv"] = f"{gen}:csv"
    files["index.html"] = f"{gen}:html"
    return files


def _write_report(out: Path, files: dict[str, str]) -> None:
    from firstlayer.report import build

    build._write_folder(out, {k: v.encode() for k, v in files.items()})


def _generation(out: Path) -> set[str]:
    """The generations of the files that make the report (one when consistent)."""
    if not out.exists():
        return set()
    rep = json.loads((out / "report.json").read_text())
    gens = {rep["gen"]}
    for name in ["index.html", "profiles.csv"] + [f["file"] for f in rep["figures"]]:
        gens.add((out / name).read_text().split(":")[0])
    return gens


def _kill_report_write(out: Path, new: dict[str, str], kill_at: int, swap: str = "exchange") -> int:
    """Write ``new`` to ``out`` in a child killed at its ``kill_at``-th step; its return code."""
    return _run(_REPORT_KILLER, str(out), str(kill_at), json.dumps(new), swap).returncode


NEW = _report_files("new", ["a.png", "c.png"])


def test_report_killed_while_first_written_is_absent_or_complete(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    for kill_at in (1, 2):  # before the one rename, then never reached (finishes)
        rc = _kill_report_write(out, NEW, kill_at)
        assert _generation(out) in (set(), {"new"}), (kill_at, rc)
        assert (rc == -signal.SIGKILL) == (kill_at == 1)


@pytest.mark.parametrize("swap", ["exchange", "renames"])
def test_report_killed_while_rewritten_is_old_or_new_never_mixed(tmp_path: Path, swap: str) -> None:
    """Kill a rewrite at each step: the old or the new report, once the next write recovers."""
    from firstlayer.report import build

    old = _report_files("old", ["a.png", "b.png"])
    seen: list[tuple[set[str], set[str]]] = []  # per kill: (a reader's view, after recovery)
    for kill_at in range(1, 40):
        out = tmp_path / f"rep{kill_at}"
        _write_report(out, old)
        (out / "notes.txt").write_text("mine")
        (out / "extra").mkdir()
        (out / "extra" / "deep.txt").write_text("deep")
        rc = _kill_report_write(out, NEW, kill_at, swap)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
        read = _generation(out)  # between two renames there is no folder, never a mixed one
        build._recover(out)  # what the next write (or run) does first
        seen.append((read, _generation(out)))
        assert read in (set(), {"old"}, {"new"}), (kill_at, seen)
        assert seen[-1][1] in ({"old"}, {"new"}), (kill_at, seen)
        assert (out / "notes.txt").read_text() == "mine"
        assert (out / "extra" / "deep.txt").read_text() == "deep"
        _write_report(out, NEW)
        assert _generation(out) == {"new"} and not (out / "b.png").exists()
        assert (out / "notes.txt").read_text() == "mine"
        assert not build._backup_of(out).exists()
    else:
        pytest.fail("the write was killed at every one of 39 steps")
    # Two links while staging, the swap (1 or 2 steps), 7 removals of the old folder.
    assert len(seen) >= 10, seen
    assert {frozenset(after) for _, after in seen} == {frozenset({"old"}), frozenset({"new"})}
    if swap == "renames":
        assert (set(), {"old"}) in seen  # killed between the renames: the old one is restored


@pytest.mark.parametrize("swap", ["exchange", "renames"])
def test_report_rewrite_keeps_the_users_files_and_drops_old_figures(
    tmp_path: Path, swap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from firstlayer.report import build

    if swap == "renames":
        monkeypatch.setattr(build, "_exchange", lambda a, b: False)
    out = tmp_path / "rep"
    _write_report(out, _report_files("old", ["a.png", "b.png"]))
    out.chmod(0o750)
    (out / "notes.txt").write_text("mine")
    (out / "extra" / "sub").mkdir(parents=True)
    (out / "extra" / "sub" / "deep.txt").write_text("deep")
    (out / "link").symlink_to("notes.txt")
    (out / "mine.png").write_bytes(b"png")  # a PNG that the old report does not list
    inode = (out / "notes.txt").stat().st_ino
    _write_report(out, NEW)
    assert _generation(out) == {"new"}
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png", "c.png", "extra", "index.html", "link", "mine.png", "notes.txt", "profiles.csv",
        "report.json",
    ]  # fmt: skip
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "notes.txt").stat().st_ino == inode  # a hard link, not a copy
    assert (out / "extra" / "sub" / "deep.txt").read_text() == "deep"
    assert os.readlink(out / "link") == "notes.txt"
    assert (out / "mine.png").read_bytes() == b"png"
    assert out.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no staging or backup folder left

    # A backup beside a folder that lacks some of its files is not taken for a stale one.
    backup = build._backup_of(out)
    shutil.copytree(out, backup, symlinks=True)
    (backup / "only-here.txt").write_text("x")
    with pytest.raises(FileExistsError, match="only-here.txt"):
        _write_report(out, NEW)
    assert (backup / "only-here.txt").read_text() == "x"
    (backup / "only-here.txt").unlink()
    _write_report(out, _report_files("old", ["b.png"]))  # now it is: removed
    assert not backup.exists() and _generation(out) == {"old"}
    assert not (out / "a.png").exists() and not (out / "c.png").exists()

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="file exists and is not a folder"):
        _write_report(tmp_path / "file", NEW)


# =============================================================================================
# 4. Numerics
# =============================================================================================

# ImageNet: 1,281,167 training images; at 224x224 with k=3 each has 222**2 = 49,284 patches.
IMAGENET_IMAGES = 1_281_167


def test_all_255_images_are_exact_where_the_u32_column_sums_must_flush() -> None:
    """The kernels keep u32 column sums of u8*u8 products; 66,052 rows of 255*255 overflow u32."""
    cases = [
        (np.full((1, 1, 140_000, 3), 255, np.uint8), "NCHW"),  # one tall column, > 2 flushes
        (np.full((1, 3, 3, 200_000), 255, np.uint8), "NCHW"),  # one wide row
        (np.full((2, 70_000, 4, 3), 255, np.uint8), "NHWC"),
        (np.full((3, 3, 512, 512), 255, np.uint8), "NCHW"),
    ]
    for x, layout in cases:
        for method in ("direct", "shifted"):
            s = patch_stats(x, 3, layout=layout, method=method)
            h, w = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
            assert s.count == x.shape[0] * (h - 2) * (w - 2)
            assert np.all(s.sum == np.uint64(s.count * 255))
            assert np.all(s.second_moment == np.uint64(s.count * 255 * 255))
            assert not s.covariance.any() and np.all(s.mean == 255.0)


def test_all_255_imagenet_scale_statistics_are_exact_and_in_range() -> None:
    """1,281,167 all-255 images of 224x224x3, k=3 and k=15: merged exactly, no overflow."""
    one = np.full((1, 3, 224, 224), 255, np.uint8)
    for k in (3, 15):
        unit = patch_stats(one, k)
        total, power = PatchStats.empty(k, 3), unit
        n = IMAGENET_IMAGES
        while n:  # double-and-add: the same sums as streaming every image
            if n & 1:
                total = total + power
            power = power + power
            n >>= 1
        count = IMAGENET_IMAGES * (224 - k + 1) ** 2
        assert total.count == count and total.n_images == IMAGENET_IMAGES
        assert np.all(total.second_moment == np.uint64(count * 65025))
        assert np.all(total.sum == np.uint64(count * 255))
        assert count * 65025 < 2**64 // 1000  # over 1000x headroom left
        assert not total.covariance.any()


def test_the_exact_accumulator_refuses_to_wrap() -> None:
    s = patch_stats(np.full((1, 1, 3, 3), 255, np.uint8), 3, layout="NCHW")
    near = np.full((9, 9), 2**64 - 1000, np.uint64)
    big = PatchStats(kernel_size=3, stride=1, padding=0, channels=1, exact=True, count=1,
                     n_images=1, sum=s.sum, second_moment=near)  # fmt: skip
    with pytest.raises(OverflowError, match="would overflow; split the dataset"):
        big + s


def _exact_covariance(p: np.ndarray) -> list[list[Fraction]]:
    n = len(p)
    cols = [[Fraction(float(v)) for v in p[:, i]] for i in range(p.shape[1])]
    means = [sum(c, Fraction(0)) / n for c in cols]
    return [
        [sum((a - mi) * (b - mj) for a, b in zip(ci, cj, strict=True)) / n for cj, mj in
         zip(cols, means, strict=True)]
        for ci, mi in zip(cols, means, strict=True)
    ]  # fmt: skip


def _patches(x: np.ndarray, k: int) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    v = sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, Ho, Wo, k, k)
    return v.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * k * k)


def test_uint8_covariance_is_the_correctly_rounded_exact_value() -> None:
    x = _images(3, 2, 7, 6, seed=5)
    s = patch_stats(x, 2, layout="NCHW")
    exact = _exact_covariance(_patches(x, 2).astype(np.float64))
    np.testing.assert_array_equal(s.covariance, np.array([[float(v) for v in r] for r in exact]))


@pytest.mark.parametrize(
    ("mean", "std"),
    [(0.5, 0.25), (0.0, 1e-150), (1e3, 1e-2), (1e6, 1.0), (1e4, 1e-3), (-5e3, 1e-2)],
)
def test_float_statistics_against_an_exact_rational_reference(mean: float, std: float) -> None:
    """Sum and mean are within a few ulps of math.fsum; the covariance within 16 eps relative of
    the exact rational value for any mean/std ratio (docs/reliability.md, Numerics)."""
    rng = np.random.default_rng(int(abs(mean)) + 7)
    x = mean + std * rng.standard_normal((3, 1, 10, 10))
    s = patch_stats(x, 2, layout="NCHW")
    p = _patches(x, 2)
    for i in range(p.shape[1]):
        ref = math.fsum(p[:, i])
        assert abs(s.sum[i] - ref) <= 8 * np.finfo(float).eps * math.fsum(np.abs(p[:, i]))
    exact = np.array([[float(v) for v in r] for r in _exact_covariance(p)])
    scale = np.abs(exact).max()
    rel = np.abs(s.covariance - exact).max() / scale
    # Moments about a shift near the data: no cancellation, whatever |mean| / std.
    bound = 16 * np.finfo(float).eps
    assert rel <= bound, (rel, bound)


def test_float_covariance_with_a_large_mean_and_tiny_variance_is_accurate(tmp_path: Path) -> None:
    """Float moments are kept about a shift near the data (the first image's channel means), so
    pixels 1e4 +- 1e-3 keep their covariance to a few ulps; raw moments lost ~4% here. The shift
    survives merges of shards with different shifts, padding, a file round trip and
    normalisation."""
    rng = np.random.default_rng(0)
    x = 1e4 + 1e-3 * rng.standard_normal((3, 2, 10, 10))
    x[2] += 5e-3  # a second shard sits elsewhere: merging must re-centre
    eps = np.finfo(float).eps
    for pad in (0, 1):
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        exact = np.array([[float(v) for v in r] for r in _exact_covariance(_patches(padded, 2))])
        whole = patch_stats(x, 2, layout="NCHW", padding=pad)
        shards = patch_stats(x[2:], 2, layout="NCHW", padding=pad) + patch_stats(
            x[:2], 2, layout="NCHW", padding=pad
        )
        whole.save(tmp_path / "s.npz")
        for s in (whole, shards, PatchStats.load(tmp_path / "s.npz")):
            # pad=1 mixes 0 and 1e4: the covariance is large, and so is the allowed error.
            tol = (64 if pad == 0 else 1e4) * eps * np.abs(exact).max()
            assert np.abs(s.covariance - exact).max() <= tol
            for i in range(s.dim):  # the raw sums stay within a few ulps of math.fsum
                ref = math.fsum(_patches(padded, 2)[:, i])
                assert abs(s.sum[i] - ref) <= 8 * eps * abs(ref) + 1e-300
    seen = whole.normalized(mean=[1e4, 1e4], std=[1e-3, 1e-3], scale=1.0)
    np.testing.assert_allclose(seen.covariance, whole.covariance / 1e-6, rtol=1e-12)
    np.testing.assert_allclose(seen.mean, (whole.mean - 1e4) / 1e-3, rtol=1e-9, atol=1e-9)


def test_stats_files_of_version_1_still_load_as_raw_moments(tmp_path: Path) -> None:
    x = np.random.default_rng(3).random((4, 2, 6, 6))
    s = patch_stats(x, 3, layout="NCHW", labels=[0, 1, 1, 0])
    fields = {
        "window": np.array([3, 1, 0, 2]),
        "exact": np.array(False),
        "count": np.array(s.count, dtype=np.uint64),
        "n_images": np.array(4, dtype=np.uint64),
        "sum": np.array(s.sum),
        "second_moment": np.array(s.second_moment),
        "class_counts": np.array(s.class_counts),
        "class_sums": np.array(s.class_sums),
        "transform": np.array([np.nan]),
        "skipped": np.array([], dtype=str),
    }
    save_npz(tmp_path / "v1.npz", "firstlayer.PatchStats", 1, **fields)
    old = PatchStats.load(tmp_path / "v1.npz")
    np.testing.assert_allclose(old.covariance, s.covariance, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(old.class_means, s.class_means, rtol=1e-12)
    np.testing.assert_array_equal(old.second_moment, s.second_moment)
