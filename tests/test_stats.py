"""PatchStats against independent references: numpy patches, torch unfold, numpy.fft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import firstlayer
from _data import exact_images
from firstlayer import PatchStats, patch_stats
from firstlayer._validate import MAX_STATS_KERNEL_SIZE


def reference_patches(x_nchw: np.ndarray, k: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """All patches as rows, in (c, i, j) order, by numpy's sliding windows (float64 or int64)."""
    dtype = np.int64 if x_nchw.dtype == np.uint8 else np.float64
    x = np.pad(x_nchw.astype(dtype), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, k, k)
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)


def check_against_reference(stats: PatchStats, x_nchw: np.ndarray, k, stride=1, padding=0):
    p = reference_patches(x_nchw, k, stride, padding)
    assert stats.count == len(p)
    if x_nchw.dtype == np.uint8:
        assert stats.sum.dtype == np.uint64
        np.testing.assert_array_equal(stats.sum, p.sum(0))
        np.testing.assert_array_equal(stats.second_moment, p.T @ p)
    else:
        m = p.T @ p
        scale = np.abs(p).max() ** 2 * len(p)
        np.testing.assert_allclose(stats.second_moment, m, rtol=1e-12, atol=1e-12 * scale)
        np.testing.assert_allclose(stats.sum, p.sum(0), rtol=1e-12, atol=1e-12 * scale)


@st.composite
def batches(draw):
    k = draw(st.integers(1, 5))
    padding = draw(st.integers(0, k - 1))
    stride = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3]))
    h = draw(st.integers(max(1, k - 2 * padding), 12))
    w = draw(st.integers(max(1, k - 2 * padding), 12))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        x = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    else:
        x = (rng.standard_normal((n, c, h, w)) * 3 + 1).astype(dtype)
    return x, k, stride, padding


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=batches(), method=st.sampled_from(["auto", "direct", "shifted"]))
def test_matches_numpy_reference(case, method):
    x, k, stride, padding = case
    stats = patch_stats(x, k, stride=stride, padding=padding, layout="NCHW", method=method)
    check_against_reference(stats, x, k, stride, padding)
    # The same pixels channels-last give the same statistics.
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    other = patch_stats(nhwc, k, stride=stride, padding=padding, layout="NHWC", method=method)
    if x.dtype == np.uint8:
        assert other == stats
    else:
        np.testing.assert_array_equal(other.second_moment, stats.second_moment)


def test_direct_and_shifted_agree_bit_for_bit_on_real_images():
    x, _ = exact_images(300)
    for k in (1, 2, 3, 5, 7, 11):
        a = patch_stats(x, k, method="direct")
        b = patch_stats(x, k, method="shifted")
        assert a == b, k
    check_against_reference(patch_stats(x[:50], 5, stride=2, padding=1), x[:50], 5, 2, 1)


def test_patch_order_is_that_of_conv_weights():
    torch = pytest.importorskip("torch")
    x, _ = exact_images(20)
    k = 5
    stats = patch_stats(x, k)
    cols = torch.nn.functional.unfold(torch.from_numpy(x).double(), k)  # (N, C*k*k, L)
    cols = cols.transpose(1, 2).reshape(-1, 3 * k * k)
    np.testing.assert_array_equal(stats.second_moment, (cols.T @ cols).numpy().astype(np.uint64))
    # A patch projected on a flattened conv filter is the convolution's response.
    conv = torch.nn.Conv2d(3, 4, k, bias=False).double()
    resp = conv(torch.from_numpy(x).double()).permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(cols @ conv.weight.flatten(1).T, resp)


def test_float_input_matches_float64_reference_on_real_images():
    x, _ = exact_images(64)
    xf = ((x / 255.0 - 0.45) / 0.25).astype(np.float64)
    stats = patch_stats(xf, 3)
    check_against_reference(stats, xf, 3)
    s32 = patch_stats(xf.astype(np.float32), 3)
    check_against_reference(s32, xf.astype(np.float32), 3)


def test_torch_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    x, _ = exact_images(10)
    t = torch.from_numpy(x)
    assert patch_stats(t, 3) == patch_stats(x, 3)
    nhwc = t.permute(0, 2, 3, 1).contiguous()
    assert patch_stats(nhwc, 3, layout="NHWC") == patch_stats(x, 3)
    # A view is copied in bounded chunks (issue 18): the contiguous result, exactly.
    assert patch_stats(t.permute(0, 2, 3, 1), 3, layout="NHWC") == patch_stats(x, 3)


def test_batch_split_and_merge_order_do_not_change_exact_statistics():
    x, y = exact_images(200)
    whole = patch_stats(x, 3, labels=y)
    parts = [patch_stats(x[a:b], 3, labels=y[a:b]) for a, b in [(0, 7), (7, 120), (120, 200)]]
    assert parts[0] + parts[1] + parts[2] == whole
    assert parts[2] + (parts[0] + parts[1]) == whole
    streamed = PatchStats.empty(3, 3)
    for a in range(0, 200, 33):
        streamed.update(x[a : a + 33], y[a : a + 33])
    assert streamed == whole


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    script = textwrap.dedent(
        """
        import sys, numpy as np, firstlayer
        rng = np.random.default_rng(5)
        x8 = rng.integers(0, 256, (300, 3, 20, 20), dtype=np.uint8)
        xf = rng.standard_normal((300, 3, 20, 20))
        firstlayer.patch_stats(x8, 5).save(sys.argv[1] + "/u8.npz")
        firstlayer.patch_stats(xf, 5).save(sys.argv[1] + "/f64.npz")
        print(firstlayer._core.num_threads())
        """
    )
    results = {}
    for threads in ("1", "2", "4"):
        out = tmp_path / threads
        out.mkdir()
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        run = subprocess.run(
            [sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == threads
        results[threads] = [PatchStats.load(out / f) for f in ("u8.npz", "f64.npz")]
    for threads in ("2", "4"):
        for a, b in zip(results["1"], results[threads], strict=True):
            assert a == b  # bit-identical, floats included


def test_labels_give_class_counts_and_means():
    x, y = exact_images(120)
    stats = patch_stats(x, 3, labels=y)
    p = reference_patches(x, 3).reshape(120, 900, 27)
    n_classes = int(y.max()) + 1
    np.testing.assert_array_equal(stats.class_counts, np.bincount(y, minlength=n_classes) * 900)
    for c in range(n_classes):
        want = p[y == c].reshape(-1, 27).mean(0)
        np.testing.assert_allclose(stats.class_means[c], want, rtol=1e-12)
    np.testing.assert_array_equal(stats.class_sums.sum(0), stats.sum)


def test_covariance_pca_and_zca():
    x, _ = exact_images(150)
    stats = patch_stats(x, 3)
    p = reference_patches(x, 3).astype(np.float64)
    np.testing.assert_allclose(stats.mean, p.mean(0), rtol=1e-13)
    cov = np.cov(p, rowvar=False, bias=True)
    np.testing.assert_allclose(stats.covariance, cov, rtol=1e-9, atol=1e-9 * cov.max())
    pca = stats.pca()
    assert np.all(np.diff(pca.eigenvalues) <= 0)
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(27), atol=1e-10)
    np.testing.assert_allclose(
        stats.covariance @ pca.components, pca.components * pca.eigenvalues, atol=1e-8 * cov.max()
    )
    zca = stats.zca(eps=0.0)
    np.testing.assert_allclose(zca @ stats.covariance @ zca, np.eye(27), atol=1e-8)
    np.testing.assert_allclose(zca, zca.T, atol=1e-12)


def test_normalized_equals_statistics_of_normalized_pixels():
    x, y = exact_images(100)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    raw = patch_stats(x, 3, labels=y)
    norm = raw.normalized(mean, std)
    xn = (x / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    direct = patch_stats(np.ascontiguousarray(xn), 3, labels=y)
    np.testing.assert_allclose(norm.mean, direct.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(norm.covariance, direct.covariance, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(norm.second_moment, direct.second_moment, rtol=1e-10)
    np.testing.assert_allclose(norm.class_means, direct.class_means, rtol=1e-10, atol=1e-12)
    assert norm.transform == {"mean": list(mean), "std": list(std), "scale": 1 / 255}
    with pytest.raises(ValueError, match="update the raw statistics"):
        norm.update(xn.astype(np.float32))


def test_spectrum_equals_mean_patch_power_from_numpy_fft_and_rust_dft():
    x, _ = exact_images(40)
    k = 5
    stats = patch_stats(x, k)
    patches = reference_patches(x, k).reshape(-1, 3, k, k).astype(np.float64)
    want = (np.abs(np.fft.fft2(patches)) ** 2).mean(0)
    np.testing.assert_allclose(stats.spectrum(), want, rtol=1e-10)
    ours = (np.abs(firstlayer.dft2(patches)) ** 2).mean(0)
    np.testing.assert_allclose(ours, want, rtol=1e-10)
    bank = np.random.default_rng(1).standard_normal((8, 3, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(
        firstlayer.dft2(bank), np.fft.fft2(bank.astype(np.float64)), atol=1e-9
    )


def test_image_spectrum_streams_merges_and_fits_alpha():
    x, _ = exact_images(60)
    whole = firstlayer.image_spectrum(x)
    want = (np.abs(np.fft.fft2(x.astype(np.float64))) ** 2).mean(0)
    np.testing.assert_allclose(whole.power, want, rtol=1e-10)
    parts = firstlayer.image_spectrum(x[:25]) + firstlayer.image_spectrum(x[25:])
    np.testing.assert_allclose(parts.power, whole.power, rtol=1e-12)
    streamed = firstlayer.ImageSpectrum(np.zeros((3, 32, 32)), 0)
    streamed.update(x[:30]).update(x[30:])
    np.testing.assert_allclose(streamed.power, whole.power, rtol=1e-12)
    # Synthetic 1/f^alpha noise has the alpha it was made with.
    rng = np.random.default_rng(0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij"))
    f[0, 0] = 1
    amp = f ** (-1.0)  # power ~ f^-2
    noise = np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((200, 64, 64)))).real.copy()
    assert abs(firstlayer.image_spectrum(noise).alpha - 2.0) < 0.1
    assert 1.0 < whole.alpha < 3.5  # natural images: around 2


def test_save_load_round_trip_and_damaged_files(tmp_path):
    x, y = exact_images(30)
    stats = patch_stats(x, 3, labels=y)
    stats.save(tmp_path / "s.npz")
    back = PatchStats.load(tmp_path / "s.npz")
    assert back == stats and back.second_moment.dtype == np.uint64
    norm = stats.normalized(0.5, 0.25)
    norm.save(tmp_path / "n.npz")
    assert PatchStats.load(tmp_path / "n.npz") == norm
    assert "exact uint8 sums" in repr(stats) and "patches=27,000" in repr(stats)
    # Truncated file.
    data = (tmp_path / "s.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PatchStats.load(tmp_path / "t.npz")
    # Tampered content: the checksum inside the file no longer matches.
    with np.load(tmp_path / "s.npz") as z:
        fields = {k: z[k] for k in z.files}
    fields["count"] = fields["count"] + 1
    np.savez(tmp_path / "x.npz", **fields)
    with pytest.raises(ValueError, match="checksum mismatch"):
        PatchStats.load(tmp_path / "x.npz")
    np.savez(tmp_path / "o.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="expected a firstlayer.PatchStats file"):
        PatchStats.load(tmp_path / "o.npz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        PatchStats.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        stats.save(tmp_path / "no" / "dir.npz")


BAD_INPUTS = [
    (np.zeros((2, 3, 8, 8), np.int64), {}, TypeError, "expected dtype uint8, float32 or float64"),
    (np.zeros((2, 3, 8, 8, 1), np.uint8), {}, ValueError, "expected shape .N, C, H, W."),
    (np.zeros((8, 8), np.uint8), {}, ValueError, "got 2-D shape"),
    (np.zeros((2, 3, 8, 3), np.uint8), {}, ValueError, "cannot tell the channel axis"),
    (np.zeros((0, 3, 8, 8), np.uint8), {}, ValueError, "at least one non-empty image"),
    (np.zeros((2, 3, 2, 2), np.uint8), {}, ValueError, "images of at least 3x3 pixels"),
    (np.full((1, 4, 4), np.nan), {}, ValueError, "NaN or infinite"),
    (np.full((1, 1, 5, 5), np.inf, np.float32), {}, ValueError, "NaN or infinite"),
    (np.zeros((2, 3, 8, 8), np.uint8), {"kernel_size": 0}, ValueError, "kernel_size: expected"),
    (
        np.zeros((2, 3, 8, 8), np.uint8),
        {"kernel_size": MAX_STATS_KERNEL_SIZE + 1},
        ValueError,
        rf"in \[1, {MAX_STATS_KERNEL_SIZE}\]",
    ),
    (np.zeros((2, 3, 8, 8), np.uint8), {"kernel_size": 2.5}, TypeError, "expected an integer"),
    (np.zeros((2, 3, 8, 8), np.uint8), {"stride": 0}, ValueError, "stride: expected"),
    (np.zeros((2, 3, 8, 8), np.uint8), {"padding": 3}, ValueError, "padding: expected"),
    (np.zeros((2, 3, 8, 8), np.uint8), {"layout": "CHW"}, ValueError, "layout: expected"),
    (np.zeros((2, 3, 8, 8), np.uint8), {"method": "fast"}, ValueError, "method: expected"),
    (
        np.zeros((2, 3, 8, 8), np.uint8),
        {"labels": [0]},
        ValueError,
        r"labels: expected shape \(2,\)",
    ),
    (np.zeros((2, 3, 8, 8), np.uint8), {"labels": [0, -1]}, ValueError, "non-negative"),
    (
        np.zeros((2, 3, 8, 8), np.uint8),
        {"labels": [0.5, 1]},
        TypeError,
        "labels: expected integers",
    ),
    (np.zeros((2, 3, 8, 8), np.uint8)[:, :, ::8], {}, ValueError, "at least 3x3 pixels"),
    ([[1, 2], [3, 4]], {}, TypeError, "must hold uint8, float32 or float64 pixels"),
]


@pytest.mark.parametrize(("x", "kwargs", "error", "match"), BAD_INPUTS)
def test_bad_input_gets_a_clear_error(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        patch_stats(x, **{"kernel_size": 3, **kwargs})


def test_bad_updates_and_merges():
    x, _ = exact_images(4)
    stats = patch_stats(x, 3)
    with pytest.raises(ValueError, match="expected images with 3 channels, got 1"):
        stats.update(x[:, :1].copy())
    with pytest.raises(TypeError, match="accumulate uint8 images, got float32"):
        stats.update(x.astype(np.float32))
    with pytest.raises(ValueError, match="cannot merge"):
        stats + patch_stats(x, 5)
    with pytest.raises(TypeError, match="expected PatchStats"):
        stats.merge(3)
    with pytest.raises(ValueError, match="hold no patches"):
        _ = PatchStats.empty(3, 3).mean
    with pytest.raises(ValueError, match="std: expected a scalar or 3 values"):
        stats.normalized([0.5] * 3, [0.2] * 2)
    with pytest.raises(ValueError, match="std: expected non-zero"):
        stats.normalized(0.5, 0.0)


def test_arrays_round_trip_and_are_checked():
    x, y = exact_images(12)
    for stats in (patch_stats(x, 3, labels=y), patch_stats(x / np.float32(255), 2)):
        arrays = stats.to_arrays()
        assert PatchStats.from_arrays(arrays) == stats
        assert PatchStats.from_arrays(stats.normalized(0.5, 0.2).to_arrays()) == stats.normalized(
            0.5, 0.2
        )
    arrays = patch_stats(x, 3).to_arrays()
    with pytest.raises(ValueError, match=r"arrays: .*missing fields \['count'\]"):
        PatchStats.from_arrays({k: v for k, v in arrays.items() if k != "count"})
    with pytest.raises(ValueError, match="field 'sum' is uint64"):
        PatchStats.from_arrays({**arrays, "sum": arrays["sum"][:-1]})
    with pytest.raises(ValueError, match="field 'count' has dtype"):
        PatchStats.from_arrays({**arrays, "count": np.array(1 + 2j)})
    with pytest.raises(ValueError, match="field 'shift' is missing"):
        PatchStats.from_arrays({k: v for k, v in arrays.items() if k != "shift"})
    old = {k: v for k, v in arrays.items() if k != "shift"}
    assert PatchStats.from_arrays(old, version=1) == patch_stats(x, 3)  # version 1: no shift


_NO_TORCH = """
import sys
import firstlayer
assert sorted(m for m in sys.modules if m.startswith("firstlayer")) == [
    "firstlayer", "firstlayer._core"], sorted(sys.modules)
from firstlayer import *
print("torch" in sys.modules, "matplotlib" in sys.modules)
assert set(firstlayer.__all__) <= set(firstlayer._LAZY) | {"__version__"}
assert all(getattr(firstlayer, name) is not None for name in firstlayer.__all__)
"""


def test_import_does_not_pull_in_torch_or_matplotlib():
    code = "import sys, firstlayer; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    # Not even `from firstlayer import *`: __all__ leaves out the lazy names that import torch.
    out = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_stats_imports_no_source_driver_or_checkpoint():
    code = (
        "import json, sys, firstlayer.stats; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('firstlayer.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "firstlayer.stats" in loaded
    assert not [
        m
        for m in loaded
        if m.startswith(("firstlayer.sources", "firstlayer.streaming", "firstlayer.checkpoint"))
    ], loaded


def test_stub_lists_every_core_function():
    stub = (Path(firstlayer.__file__).parent / "_core.pyi").read_text()
    names = [n for n in dir(firstlayer._core) if not n.startswith("_")]
    assert names and all(f"def {n}(" in stub for n in names)
