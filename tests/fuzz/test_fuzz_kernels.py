"""Fuzz the Rust kernels against numpy references: no panic, no out-of-bounds, no wrong number.

Random batch shapes, dtypes, layouts, windows (kernel size, stride, padding), methods and labels;
each result is compared with a direct numpy computation (``int64`` exact for ``uint8``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firstlayer import _core, dft2, patch_stats
from firstlayer.extract import extract_patches

EXAMPLES = int(os.environ.get("FIRSTLAYER_FUZZ_EXAMPLES", "1000"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def batches(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3, 4, 5]))
    k = draw(st.integers(1, 7))
    padding = draw(st.integers(0, k - 1))
    h = draw(st.integers(max(1, k - 2 * padding), k + 12))
    w = draw(st.integers(max(1, k - 2 * padding), k + 12))
    stride = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.float64]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["random", "zeros", "max", "sparse"]))
    shape = (n, c, h, w)
    if kind == "zeros":
        x = np.zeros(shape)
    elif kind == "max":
        x = np.full(shape, 255.0)
    elif kind == "sparse":
        x = np.where(rng.random(shape) < 0.05, 255.0, 0.0)
    else:
        x = rng.integers(0, 256, shape).astype(np.float64)
    if dtype != np.uint8:
        x = x / 255 * draw(st.sampled_from([1.0, -3.5, 1e3]))
    x = x.astype(dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    labels = None
    if draw(st.booleans()):
        labels = rng.integers(0, draw(st.integers(1, 6)), n)
    return {"x": x, "k": k, "stride": stride, "padding": padding, "layout": layout,
            "labels": labels}  # fmt: skip


def _reference_patches(x: np.ndarray, layout: str, k: int, stride: int, pad: int) -> np.ndarray:
    nchw = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    xp = np.pad(nchw.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = xp.shape
    rows = []
    for img in range(n):
        for i in range(0, h - k + 1, stride):
            for j in range(0, w - k + 1, stride):
                rows.append(xp[img, :, i : i + k, j : j + k].reshape(-1))
    return np.array(rows).reshape(-1, c * k * k)


@SETTINGS
@given(b=batches(), method=st.sampled_from(["auto", "direct", "shifted"]))
def test_patch_moments_match_numpy(b: dict[str, Any], method: str) -> None:
    x = b["x"]
    s = patch_stats(x, b["k"], stride=b["stride"], padding=b["padding"], layout=b["layout"],
                    labels=b["labels"], method=method)  # fmt: skip
    p = _reference_patches(x, b["layout"], b["k"], b["stride"], b["padding"])
    per_image = len(p) // len(x)
    assert s.count == len(p) and s.n_images == len(x)
    if x.dtype == np.uint8:
        q = p.astype(np.int64)
        assert np.array_equal(s.sum.astype(np.int64), q.sum(0))
        assert np.array_equal(s.second_moment.astype(np.int64), q.T @ q)
    else:
        scale = max(1.0, float(np.abs(p).max()) ** 2) * len(p)
        np.testing.assert_allclose(s.sum, p.sum(0), rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(s.second_moment, p.T @ p, rtol=1e-5, atol=1e-6 * scale)
    if b["labels"] is not None:
        y = np.repeat(b["labels"], per_image)
        for cls in range(len(s.class_counts)):
            assert s.class_counts[cls] == (y == cls).sum()
            np.testing.assert_allclose(
                s.class_sums[cls].astype(np.float64), p[y == cls].sum(0), rtol=1e-6, atol=1e-3
            )


@SETTINGS
@given(b=batches())
def test_extract_patches_match_numpy(b: dict[str, Any]) -> None:
    x = b["x"]
    got = extract_patches(x, b["k"], stride=b["stride"], padding=b["padding"], layout=b["layout"])
    ref = _reference_patches(x, b["layout"], b["k"], b["stride"], b["padding"])
    assert got.dtype == x.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got.astype(np.float64), ref)


@SETTINGS
@given(b=batches(), m=st.integers(1, 50), seed=st.integers(0, 2**63 - 1))
def test_sampled_patches_are_real_patches(b: dict[str, Any], m: int, seed: int) -> None:
    x = b["x"]
    ref = _reference_patches(x, b["layout"], b["k"], b["stride"], b["padding"])
    m = min(m, len(ref))  # more than the positions is a documented ValueError
    got, pos = extract_patches(x, b["k"], stride=b["stride"], padding=b["padding"],
                               layout=b["layout"], max_patches=m, seed=seed,
                               return_positions=True)  # fmt: skip
    assert len(got) == m == len(pos)
    rows = {r.tobytes() for r in ref}
    assert all(r.astype(np.float64).tobytes() in rows for r in got)


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 17), st.integers(1, 17)),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1.0, 1e-8, 1e8]),
)
def test_dft2_and_power_sum_match_numpy(shape: tuple[int, int, int], seed: int, scale: float):
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    got = dft2(x)
    ref = np.fft.fft2(x)
    tol = 1e-12 * scale * x.size
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=tol)
    img = np.ascontiguousarray(np.abs(x[:, None]) * 10)
    power = _core.image_power_sum(img, layout="NCHW")
    refp = (np.abs(np.fft.fft2(img[:, 0])) ** 2).sum(0)[None]
    np.testing.assert_allclose(power, refp, rtol=1e-9, atol=1e-9 * refp.max())
