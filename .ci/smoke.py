"""Smoke test of an installed firstlayer (a wheel or an sdist build), run by .ci/wheels.

Run it with the interpreter of the environment under test, from a directory outside the
repository: ``python .ci/smoke.py``. It checks that the package imports without torch, that
``patch_stats`` is exact against an explicit numpy im2col reference, and that the console
script answers ``--help``. Needs only numpy.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

import firstlayer
import firstlayer._core

assert "torch" not in sys.modules, "import firstlayer imported torch"


def reference(x: np.ndarray, k: int) -> tuple[int, np.ndarray, np.ndarray]:
    """count, sum (int64) and sum p p^T (int64) of every valid k x k patch, (c, i, j) order."""
    n, c, h, w = x.shape
    cols = [
        x[:, :, i : i + h - k + 1, j : j + w - k + 1] for i in range(k) for j in range(k)
    ]  # k*k arrays (N, C, H', W'), index i*k + j
    p = np.stack(cols, axis=2)  # (N, C, k*k, H', W')
    p = p.transpose(0, 3, 4, 1, 2).reshape(-1, c * k * k).astype(np.int64)  # rows: patches
    return p.shape[0], p.sum(axis=0), p.T @ p


rng = np.random.default_rng(20240611)
# Two sizes: a small one (images-in-lanes kernel) and one above 128x128 (strip kernel).
for shape in [(5, 3, 17, 19), (1, 3, 131, 133)]:
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    for k in (1, 3):
        st = firstlayer.patch_stats(x, kernel_size=k)
        count, s, m = reference(x, k)
        assert st.exact and st.count == count, (shape, k, st.count, count)
        assert np.array_equal(np.asarray(st.sum, dtype=np.int64), s), (shape, k)
        assert np.array_equal(np.asarray(st.second_moment, dtype=np.int64), m), (shape, k)
        assert np.allclose(st.mean, s / count, rtol=1e-12, atol=0), (shape, k)
assert "torch" not in sys.modules, "patch_stats imported torch"

script = Path(sysconfig.get_path("scripts")) / "firstlayer"
for args in (["--help"], ["demo", "--help"]):
    out = subprocess.run([str(script), *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), (args, out.stdout, out.stderr)

core = Path(firstlayer._core.__file__)
print(
    f"ok: Python {sys.version.split()[0]}, numpy {np.__version__}, firstlayer "
    f"{firstlayer.__version__}, core {core.name}, torch installed: "
    f"{importlib.util.find_spec('torch') is not None}"
)
