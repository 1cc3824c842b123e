"""Patch extraction: exact against scikit-learn and torch, sampling, ``out=``, streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstlayer.extract import extract_patches, iter_patches
from firstlayer.sources import ArraySource


def reference(x_nchw: np.ndarray, k: int, stride: int, padding: int) -> np.ndarray:
    """Every patch of an NCHW batch, from the definition (numpy only)."""
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (N, C, ho, wo, k, k)
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(
        -1, x_nchw.shape[1] * k * k
    )


def images(n: int, c: int, h: int, w: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    return rng.standard_normal((n, c, h, w)).astype(dtype)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------
# Exact against the peers


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_equals_sklearn_extract_patches_2d(c: int, k: int) -> None:
    from sklearn.feature_extraction.image import extract_patches_2d

    x = images(3, c, 12, 10, seed=k)
    ours = extract_patches(nhwc(x), k, layout="NHWC")
    assert np.array_equal(ours, extract_patches(x, k, layout="NCHW"))
    per = ours.shape[0] // 3
    for i in range(3):
        img = nhwc(x)[i] if c > 1 else x[i, 0]
        sk = extract_patches_2d(img, (k, k))  # (n, k, k, c) or (n, k, k): (i, j, c) order
        sk = sk.reshape(len(sk), k, k, c).transpose(0, 3, 1, 2).reshape(len(sk), -1)
        assert sk.dtype == ours.dtype
        assert np.array_equal(ours[i * per : (i + 1) * per], sk)


@pytest.mark.parametrize(("k", "stride", "padding"), [(3, 1, 0), (3, 2, 1), (5, 3, 2), (7, 1, 3)])
def test_equals_torch_unfold(k: int, stride: int, padding: int) -> None:
    torch = pytest.importorskip("torch")
    x = images(4, 3, 17, 13, np.float32, seed=k + stride)
    t = torch.from_numpy(x)
    want = torch.nn.functional.unfold(t, k, padding=padding, stride=stride)
    want = want.permute(0, 2, 1).reshape(-1, 3 * k * k)
    got = extract_patches(t, k, stride=stride, padding=padding)
    assert isinstance(got, torch.Tensor)
    assert torch.equal(got, want)
    # and in the order of a conv weight: conv2d of the patches equals their dot products
    weight = torch.from_numpy(images(5, 3, k, k, np.float32, seed=1))
    conv = torch.nn.functional.conv2d(t.double(), weight.double(), stride=stride, padding=padding)
    dots = got.double() @ weight.double().flatten(1).T
    assert torch.allclose(conv.permute(0, 2, 3, 1).reshape(-1, 5), dots)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([1, 2, 3, 4, 5]),
    h=st.integers(1, 11),
    w=st.integers(1, 11),
    k=st.integers(1, 6),
    stride=st.integers(1, 4),
    padding=st.integers(0, 5),
    dtype=st.sampled_from([np.uint8, np.float32, np.float64]),
    channels_last=st.booleans(),
)
def test_property_matches_definition(
    n: int,
    c: int,
    h: int,
    w: int,
    k: int,
    stride: int,
    padding: int,
    dtype: type,
    channels_last: bool,
) -> None:
    x = images(n, c, h, w, dtype, seed=h * w)
    layout = "NHWC" if channels_last else "NCHW"
    arr = nhwc(x) if channels_last else x
    if padding >= k or h + 2 * padding < k or w + 2 * padding < k:
        with pytest.raises(ValueError, match="padding|x:"):
            extract_patches(arr, k, stride=stride, padding=padding, layout=layout)
        return
    got = extract_patches(arr, k, stride=stride, padding=padding, layout=layout)
    want = reference(x, k, stride, padding)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got, want)
    # a sample holds the rows of the full extraction at its positions
    m = min(5, len(want))
    sample, pos = extract_patches(
        arr,
        k,
        stride=stride,
        padding=padding,
        layout=layout,
        max_patches=m,
        seed=n + c,
        return_positions=True,
    )
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    lin = (pos[:, 0] * ho + pos[:, 1]) * wo + pos[:, 2]
    assert np.all(np.diff(lin) > 0)
    assert np.array_equal(sample, want[lin])


def test_positions_of_all_patches() -> None:
    x = images(2, 3, 6, 5)
    p, pos = extract_patches(x, 3, stride=2, padding=1, return_positions=True)
    assert pos.dtype == np.int64
    assert pos.shape == (p.shape[0], 3)
    grid = [(i, a, b) for i in range(2) for a in range(3) for b in range(3)]
    assert [tuple(r) for r in pos.tolist()] == grid


# ---------------------------------------------------------------------------------------------
# Sampling


def test_sampling_is_reproducible_and_seeded() -> None:
    x = images(10, 3, 16, 16)
    a, pa = extract_patches(x, 5, max_patches=300, seed=42, return_positions=True)
    b, pb = extract_patches(x, 5, max_patches=300, seed=42, return_positions=True)
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(pa, pb)
    _, pc = extract_patches(x, 5, max_patches=300, seed=43, return_positions=True)
    assert not np.array_equal(pa, pc)
    # every position exactly once when max_patches is the number of positions
    full = extract_patches(x, 5, max_patches=10 * 12 * 12, seed=1)
    assert np.array_equal(full, extract_patches(x, 5))


_THREADS_SCRIPT = """
import hashlib, json, numpy as np
from firstlayer.extract import extract_patches, iter_patches
x = np.random.default_rng(0).integers(0, 256, size=(2000, 32, 32, 3), dtype=np.uint8)
# 1,352,000 positions: 70,000 is a sparse sample (sequential, two blocks), 200,000 a dense one
p, pos = extract_patches(x, 7, max_patches=70_000, seed=2024, return_positions=True)
d, dpos = extract_patches(x, 7, max_patches=200_000, seed=7, return_positions=True)
q = extract_patches(x[:200], 3, stride=2, padding=1)
r = np.concatenate(list(iter_patches(x[:300], 5, max_patches_per_image=9, seed=1)))
h = hashlib.sha256(b"".join(a.tobytes() for a in (p, pos, d, dpos, q, r))).hexdigest()
from firstlayer import _core
print(json.dumps({"hash": h, "threads": _core.num_threads()}))
"""


def test_sample_independent_of_thread_count() -> None:
    results = []
    for threads in ("1", "2"):
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        run = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(run.stdout))
    assert [r["threads"] for r in results] == [1, 2]
    assert results[0]["hash"] == results[1]["hash"]


@pytest.mark.parametrize("m", [8, 100])  # 8/256 < 1/13: sequential (Algorithm D); 100: dense
def test_sampling_is_uniform(m: int) -> None:
    """Chi-square over the 256 positions; fails when p < 1e-4 (fixed seeds: deterministic)."""
    from scipy.stats import chi2

    x = np.zeros((4, 1, 10, 10), dtype=np.uint8)  # 4 images x 8 x 8 positions of k=3
    draws = 3000 if m == 8 else 300
    counts = np.zeros(256)
    for seed in range(draws):
        _, pos = extract_patches(x, 3, max_patches=m, seed=seed, return_positions=True)
        np.add.at(counts, (pos[:, 0] * 8 + pos[:, 1]) * 8 + pos[:, 2], 1)
        assert len(np.unique(pos, axis=0)) == m  # without replacement
    expected = draws * m / 256
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert chi2.sf(stat, df=255) > 1e-4, stat


def test_sample_of_one_image_per_position_pair_is_uniform() -> None:
    """Joint uniformity: each of the C(6, 2) = 15 pairs of positions equally likely."""
    from scipy.stats import chi2

    x = np.zeros((1, 2, 3), dtype=np.float32)  # (N, H, W), k=1: 6 positions
    counts: dict[tuple[int, int], int] = {}
    for seed in range(3000):
        _, pos = extract_patches(x, 1, max_patches=2, seed=seed, return_positions=True)
        key = tuple(int(v) for v in pos[:, 1] * 3 + pos[:, 2])
        counts[key] = counts.get(key, 0) + 1  # type: ignore[index]
    assert len(counts) == 15
    obs = np.array(list(counts.values()), dtype=float)
    stat = float(((obs - 200.0) ** 2 / 200.0).sum())
    assert chi2.sf(stat, df=14) > 1e-4, stat


# ---------------------------------------------------------------------------------------------
# out=


def test_out_is_written_in_place() -> None:
    x = images(3, 3, 9, 9)
    want = extract_patches(x, 3, stride=2)
    out = np.full_like(want, 7)
    got = extract_patches(x, 3, stride=2, out=out)
    assert got is out
    assert np.array_equal(out, want)
    sample = extract_patches(x, 3, max_patches=10, seed=0)
    out2 = np.empty_like(sample)
    extract_patches(x, 3, max_patches=10, seed=0, out=out2)
    assert np.array_equal(out2, sample)


def test_out_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    x = images(2, 3, 8, 8, np.float32)
    want = extract_patches(x, 3)
    out = torch.zeros(want.shape, dtype=torch.float32)
    ptr = out.data_ptr()
    got = extract_patches(x, 3, out=out)
    assert got is out and out.data_ptr() == ptr
    assert np.array_equal(out.numpy(), want)
    buf = np.zeros_like(want)
    extract_patches(x, 3, out=torch.from_numpy(buf))
    assert np.array_equal(buf, want)


def test_out_errors() -> None:
    x = images(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"out: expected shape \(72, 27\).*got \(71, 27\)"):
        extract_patches(x, 3, out=np.empty((71, 27), np.uint8))
    with pytest.raises(TypeError, match="out: expected dtype uint8.*got float32"):
        extract_patches(x, 3, out=np.empty((72, 27), np.float32))
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        extract_patches(x, 3, out=np.empty((27, 72), np.uint8).T)
    ro = np.empty((72, 27), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable"):
        extract_patches(x, 3, out=ro)
    big = np.zeros(2 * 3 * 8 * 8 + 72 * 27, np.uint8)
    xa = big[: x.size].reshape(x.shape)
    with pytest.raises(ValueError, match="out: .*shares no memory with x"):
        extract_patches(xa, 3, out=big[: 72 * 27].reshape(72, 27))
    with pytest.raises(TypeError, match="out: expected a numpy array or a torch tensor"):
        extract_patches(x, 3, out=[[0] * 27] * 72)


def test_core_refuses_aliasing_itself() -> None:
    from firstlayer import _core

    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out: expected a writeable array that shares no memory"):
        _core.extract_patches(x, x.reshape(16, 1), layout="NCHW", kernel_size=1)
    with pytest.raises(TypeError, match="out: expected a 2-D numpy array of dtype float32"):
        _core.extract_patches(x, np.zeros((16, 1)), layout="NCHW", kernel_size=1)
    with pytest.raises(ValueError, match=r"out: expected shape \(16, 1\)"):
        _core.extract_patches(x, np.zeros((15, 1), np.float32), layout="NCHW", kernel_size=1)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"kernel_size": 0}, ValueError, r"kernel_size: expected an integer in \[1, 64\], got 0"),
        ({"kernel_size": 3.0}, TypeError, "kernel_size: expected an integer, got float"),
        ({"kernel_size": 3, "stride": 0}, ValueError, r"stride: expected an integer in \[1, "),
        ({"kernel_size": 3, "padding": 3}, ValueError, r"padding: expected .*\[0, 2\], got 3"),
        ({"kernel_size": 9}, ValueError, "x: expected images of at least 9x9"),
        ({"kernel_size": 3, "max_patches": 73}, ValueError, "max_patches: expected at most .* 72"),
        ({"kernel_size": 3, "max_patches": -1}, ValueError, "max_patches: expected an integer"),
        ({"kernel_size": 3, "max_patches": 5, "seed": -1}, ValueError, "seed: expected"),
        ({"kernel_size": 3, "layout": "CHW"}, ValueError, "layout: expected 'NCHW', 'NHWC'"),
    ],
)
def test_errors_name_the_argument(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        extract_patches(images(2, 3, 8, 8), **kwargs)


def test_bad_input_dtype() -> None:
    with pytest.raises(TypeError, match="x: expected dtype uint8, float32 or float64, got int16"):
        extract_patches(np.zeros((1, 3, 8, 8), np.int16), 3)


# ---------------------------------------------------------------------------------------------
# Streaming


def test_iter_patches_equals_all_at_once() -> None:
    x = nhwc(images(11, 3, 9, 8))
    want = extract_patches(x, 3, stride=1, padding=1)
    chunks = list(
        iter_patches(ArraySource(x, layout="NHWC"), 3, padding=1, batch_patches=100, batch_size=4)
    )
    assert all(len(c) == 100 for c in chunks[:-1])
    assert np.array_equal(np.concatenate(chunks), want)
    # from a plain array too, with positions
    pairs = list(iter_patches(x, 3, padding=1, batch_patches=1000, return_positions=True))
    _, want_pos = extract_patches(x, 3, padding=1, return_positions=True)
    assert np.array_equal(np.concatenate([p for _, p in pairs]), want_pos)


def test_iter_patches_sampled_per_image() -> None:
    x = images(9, 3, 10, 10)
    full = extract_patches(x, 3)  # 64 positions per image

    def run(batch_size: int, batch_patches: int) -> tuple[np.ndarray, np.ndarray]:
        parts = list(
            iter_patches(
                x,
                3,
                max_patches_per_image=20,
                seed=5,
                return_positions=True,
                batch_size=batch_size,
                batch_patches=batch_patches,
            )
        )
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])

    p1, pos1 = run(256, 65536)
    p2, pos2 = run(2, 7)
    assert p1.shape == (9 * 20, 27)
    assert np.array_equal(p1, p2) and np.array_equal(pos1, pos2)
    assert np.array_equal(np.bincount(pos1[:, 0]), [20] * 9)
    lin = (pos1[:, 0] * 8 + pos1[:, 1]) * 8 + pos1[:, 2]
    assert np.all(np.diff(lin) > 0)
    assert np.array_equal(p1, full[lin])
    # more than the positions of an image: all of them
    every = np.concatenate(list(iter_patches(x, 3, max_patches_per_image=1000, seed=0)))
    assert np.array_equal(every, full)


def test_iter_patches_errors() -> None:
    x = images(2, 3, 8, 8)
    with pytest.raises(ValueError, match="batch_patches: expected an integer >= 1"):
        next(iter_patches(x, 3, batch_patches=0))
    with pytest.raises(ValueError, match="max_patches_per_image"):
        next(iter_patches(x, 3, max_patches_per_image=0))


def test_kernel_size_defaults_to_3_as_in_patch_stats():
    x = np.arange(2 * 3 * 5 * 5, dtype=np.uint8).reshape(2, 3, 5, 5)
    np.testing.assert_array_equal(extract_patches(x), extract_patches(x, 3))
    chunks = list(iter_patches(ArraySource(x, layout="NCHW")))
    np.testing.assert_array_equal(np.concatenate(chunks), extract_patches(x, 3))
