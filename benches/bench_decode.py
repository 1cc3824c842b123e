#!/usr/bin/env python3
"""Image decoding throughput: ``firstlayer._core.decode_images`` (Rust, rayon) vs Pillow threads.

Two folders of JPEG files are decoded to uint8 arrays, each with and without torchvision's
``Resize(256)`` + ``CenterCrop(224)``:

* ``cifar``  CIFAR-10 training images as the dataset stores them (``cifar10_jpeg_q75.npz``:
             ``jpeg`` bytes, ``offsets``), 32 x 32
* ``large``  photo-sized JPEGs (quality 90, 4:2:0) between 256 and 512 pixels a side: crops of
             scikit-image's photos when it is installed, else upsampled CIFAR mosaics

Decoders, with the same number of threads ``N`` (all cores unless ``--threads``):

* ``rust``    ``_core.decode_images(paths, threads=N)`` on batches of 256 paths (the GIL is
              released for the whole batch)
* ``pillow``  ``firstlayer.sources.decode_image`` mapped over a ``ThreadPoolExecutor(N)``, which
              is what ``firstlayer.sources`` does without the Rust decoder

The files are read from the page cache (one untimed warm-up pass first). Each timing is the best
of ``--repeats``. The largest |difference| between the two decoders' outputs is recorded too
(JPEG decoders may differ by 1).

Usage::

    python benches/bench_decode.py            # 2,000 CIFAR JPEGs + 300 large JPEGs, 3 repeats
    python benches/bench_decode.py --quick    # 1,000 + 60, 2 repeats

Data: ``$FIRSTLAYER_DATA`` or ``<repo>/../shared/data``. Result: ``bench-results/decode.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from _cifar import RESULTS, data_dir

BATCH = 256


def write_cifar(folder: Path, n: int) -> list[Path]:
    with np.load(data_dir() / "cifar10_jpeg_q75.npz", allow_pickle=False) as f:
        blob, offsets = f["jpeg"], f["offsets"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.jpg"
        p.write_bytes(blob[offsets[i] : offsets[i + 1]].tobytes())
        paths.append(p)
    return paths


def large_sources() -> tuple[str, list[np.ndarray]]:
    """Natural RGB images to cut the large JPEGs from."""
    try:
        from skimage import data

        photos = []
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
            try:
                photos.append(np.asarray(getattr(data, name)()))
            except Exception:  # noqa: BLE001, S112 - photos that need a download are skipped
                continue
        if photos:
            return "scikit-image photos", photos
    except ImportError:
        pass
    from PIL import Image

    with np.load(data_dir() / "cifar10_exact_subset.npz", allow_pickle=False) as f:
        x = f["data"][:256].reshape(16, 16, 3, 32, 32).transpose(0, 3, 1, 4, 2)
    grid = np.ascontiguousarray(x.reshape(512, 512, 3))
    up = np.asarray(Image.fromarray(grid).resize((1024, 1024), Image.Resampling.BICUBIC))
    return "upsampled CIFAR mosaics", [up]


def write_large(folder: Path, n: int, seed: int = 0) -> tuple[str, list[Path]]:
    from PIL import Image

    kind, photos = large_sources()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        h = int(rng.integers(256, min(512, img.shape[0]) + 1))
        w = int(rng.integers(256, min(512, img.shape[1]) + 1))
        y = int(rng.integers(0, img.shape[0] - h + 1))
        x = int(rng.integers(0, img.shape[1] - w + 1))
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(img[y : y + h, x : x + w])).save(p, quality=90)
        paths.append(p)
    return kind, paths


def rust_decoder(threads: int, opts: Any) -> Callable[[list[str]], list[Any]]:
    from firstlayer import _core

    fn = _core.decode_images

    def run(paths: list[str]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(paths), BATCH):
            out += fn(
                paths[i : i + BATCH],
                grayscale=opts.grayscale,
                resize=opts.resize,
                center_crop=opts.center_crop,
                threads=threads,
            )
        return out

    return run


def pillow_decoder(pool: ThreadPoolExecutor, opts: Any) -> Callable[[list[str]], list[Any]]:
    from firstlayer.sources import decode_image

    return lambda paths: list(pool.map(lambda p: decode_image(p, opts), paths))


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def max_abs_diff(a: list[Any], b: list[Any]) -> int:
    worst = 0
    for x, y in zip(a, b, strict=True):
        if isinstance(x, str) or isinstance(y, str):
            raise RuntimeError(f"a decoder failed: {x if isinstance(x, str) else y}")
        worst = max(worst, int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 + 60 images, 2 repeats")
    ap.add_argument("--cifar", type=int, help="number of CIFAR JPEGs (default 2,000)")
    ap.add_argument("--large", type=int, help="number of large JPEGs (default 300)")
    ap.add_argument("--repeats", type=int, help="timed repeats, best kept (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    args = ap.parse_args(argv)
    n_cifar = args.cifar or (1000 if args.quick else 2000)
    n_large = args.large or (60 if args.quick else 300)
    repeats = args.repeats or (2 if args.quick else 3)

    from firstlayer import _core
    from firstlayer.sources import DecodeOptions

    if getattr(_core, "decode_images", None) is None:
        print("firstlayer._core.decode_images is not built", file=sys.stderr)
        return 1
    options = {
        "decode": DecodeOptions(),
        "resize256+crop224": DecodeOptions(resize=256, center_crop=(224, 224)),
    }
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp,
        ThreadPoolExecutor(args.threads) as pool,
    ):
        folders = {"cifar": ("CIFAR-10 q75 32x32", write_cifar(Path(tmp) / "cifar", n_cifar))}
        kind, large = write_large(Path(tmp) / "large", n_large)
        folders["large"] = (f"{kind}, 256-512 px, q90", large)
        for folder, (what, files) in folders.items():
            paths = [str(p) for p in files]
            mbytes = sum(p.stat().st_size for p in files) / 1e6
            for opt_name, opts in options.items():
                decoders = {
                    "rust": rust_decoder(args.threads, opts),
                    "pillow": pillow_decoder(pool, opts),
                }
                outputs = {name: fn(paths) for name, fn in decoders.items()}  # warm-up
                diff = max_abs_diff(outputs["rust"], outputs["pillow"])
                row: dict[str, Any] = {
                    "folder": folder,
                    "files": what,
                    "images": len(paths),
                    "megabytes": round(mbytes, 2),
                    "options": opt_name,
                    "max_abs_diff_rust_vs_pillow": diff,
                }
                for name, fn in decoders.items():
                    t = best_time(lambda fn=fn, paths=paths: fn(paths), repeats)
                    row[f"{name}_seconds"] = round(t, 4)
                    row[f"{name}_images_per_s"] = round(len(paths) / t, 1)
                row["speedup"] = round(row["rust_images_per_s"] / row["pillow_images_per_s"], 2)
                results.append(row)
                print(
                    f"{folder:6s} {opt_name:18s} n={len(paths):5d}  "
                    f"rust {row['rust_images_per_s']:9.1f} img/s  "
                    f"pillow {row['pillow_images_per_s']:9.1f} img/s  "
                    f"x{row['speedup']:.2f}  max|d|={diff}"
                )
    import PIL

    report = {
        "benchmark": "decode",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "threads": args.threads,
        "batch": BATCH,
        "repeats": repeats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
