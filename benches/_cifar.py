"""The data every benchmark reads: where it lies, and CIFAR-10 decoded once into a cached array."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from firstlayer._io import atomic_write

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench-results"
N_TRAIN = 50_000


def data_dir() -> Path:
    """``$FIRSTLAYER_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("FIRSTLAYER_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def train_npy(n: int) -> Path:
    """A uint8 NCHW ``.npy`` of exactly the first ``n`` CIFAR-10 training images.

    Decoded with Pillow from the JPEG copy (``cifar10_jpeg_q75.npz``) once, and cached in
    ``bench-results/``; a cached 50,000-image file is sliced instead of decoding again.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / f"cifar10_train_jpeg_q75_nchw_{n}.npy"
    if cache.exists():
        return cache
    full = RESULTS / f"cifar10_train_jpeg_q75_nchw_{N_TRAIN}.npy"
    if full.exists():
        out = np.array(np.load(full, mmap_mode="r")[:n])
    else:
        from PIL import Image

        src = data_dir() / "cifar10_jpeg_q75.npz"
        if not src.exists():
            raise SystemExit(f"{src} not found; set FIRSTLAYER_DATA to the folder holding it")
        t0 = time.perf_counter()
        with np.load(src, allow_pickle=False) as z:
            jpeg, offsets = z["jpeg"], z["offsets"]
        out = np.empty((n, 3, 32, 32), dtype=np.uint8)
        for i in range(n):
            with Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())) as im:
                out[i] = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        print(f"decoded {n:,} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    with atomic_write(cache) as f:
        np.save(f, out)
    return cache
