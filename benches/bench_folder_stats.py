#!/usr/bin/env python3
"""End to end: 7x7 patch statistics of a folder of JPEGs, firstlayer against torchvision.

The bench writes a folder of JPEGs (CIFAR-10 training images upscaled to 256x256 with Pillow's
bicubic filter, quality 90, one sub-folder per class) into a temporary directory, then computes
the second moments of every 7x7x3 patch after ``Resize(256)`` + ``CenterCrop(224)``:

* ``firstlayer``  ``firstlayer.patch_stats(folder, kernel_size=7, resize=256, center_crop=224)``:
                  Rust decoding and resizing in parallel, exact uint8 moments;
* ``torchvision`` ``ImageFolder`` + ``DataLoader(batch_size=32, num_workers=2)`` with the same
                  transforms (``PILToTensor``), then ``unfold`` + ``P^T P`` in float32 on the
                  main process's threads: what a researcher writes with the usual tools. Time-boxed
                  (``--peer-budget``); its rate is measured on the batches it finished.

Each run is a fresh subprocess that reports its wall time and its peak memory (``VmHWM``, which
includes the DataLoader workers' own memory only for torchvision's main process: the workers'
peaks are added from their ``/proc`` status); firstlayer runs at two dataset sizes to show that
its memory does not grow with the dataset. Decoding plus resizing alone is compared per core:
the Rust decoder against Pillow (``decode_image``, libjpeg-turbo), one thread each, best of 3
after a warm-up pass; once with the bench's resize + crop (the Rust decoder skips the blocks and
pixels the crop drops; Pillow decodes everything, as torchvision does) and once decoding whole
images with nothing else.

Usage::

    python benches/bench_folder_stats.py              # 20,000 images (5,000 for the memory check)
    python benches/bench_folder_stats.py --quick      # 1,000 images, short time box

Data: ``$FIRSTLAYER_DATA`` or ``<repo>/../shared/data``.
Result: ``bench-results/folder_stats.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from _cifar import RESULTS, data_dir

K, RESIZE, CROP = 7, 256, 224


def _write_part(args: tuple[str, int, int]) -> int:
    """Write images [lo, hi) of the CIFAR-10 JPEG copy, upscaled, into ``folder/<class>/``."""
    import io

    from PIL import Image

    folder, lo, hi = Path(args[0]), args[1], args[2]
    with np.load(data_dir() / "cifar10_jpeg_q75.npz", allow_pickle=False) as f:
        blob, offsets, labels = f["jpeg"], f["offsets"], f["labels"]
    for i in range(lo, hi):
        img = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
        big = img.resize((RESIZE, RESIZE), Image.Resampling.BICUBIC)
        big.save(folder / f"{int(labels[i])}" / f"{i:05d}.jpg", quality=90)
    return hi - lo


def write_folder(folder: Path, n: int, workers: int) -> None:
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    step = max(1, -(-n // (4 * workers)))
    parts = [(str(folder), lo, min(n, lo + step)) for lo in range(0, n, step)]
    with ProcessPoolExecutor(workers) as pool:
        assert sum(pool.map(_write_part, parts)) == n


def _hwm_bytes(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ---- the measured runs (each in a fresh subprocess) ------------------------------------------


def child_firstlayer(folder: str, n: int) -> dict[str, Any]:
    import firstlayer

    t = time.perf_counter()
    s = firstlayer.patch_stats(folder, kernel_size=K, resize=RESIZE, center_crop=CROP, quiet=True)
    dt = time.perf_counter() - t
    assert s.n_images == n, (s.n_images, n)
    return {"images": s.n_images, "seconds": dt, "peak_bytes": _hwm_bytes(), "patches": s.count}


def child_torchvision(folder: str, n: int, budget: float, threads: int) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F  # noqa: N812
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)
    tf = transforms.Compose(
        [transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.PILToTensor()]
    )
    ds = datasets.ImageFolder(folder, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2, shuffle=False)
    p = 3 * K * K
    m = torch.zeros(p, p, dtype=torch.float32)
    total = torch.zeros(p, dtype=torch.float32)
    seen, worker_peak = 0, 0
    t = time.perf_counter()
    it = iter(loader)
    for x, _ in it:
        cols = F.unfold(x.float(), K)  # (B, p, L)
        pt = cols.transpose(1, 2).reshape(-1, p)
        m += pt.T @ pt
        total += pt.sum(0)
        seen += x.shape[0]
        if time.perf_counter() - t > budget:
            break
    dt = time.perf_counter() - t
    # The workers' peaks, while they are alive.
    for w in getattr(it, "_workers", []):
        if w.pid is not None:
            try:
                worker_peak += _hwm_bytes(str(w.pid))
            except OSError:
                pass
    del it
    return {
        "images": seen,
        "seconds": dt,
        "peak_bytes": _hwm_bytes() + worker_peak,
        "peak_main_bytes": _hwm_bytes(),
        "peak_workers_bytes": worker_peak,
        "time_boxed": seen < n,
    }


def child_decode(folder: str, n: int, which: str, steps: str, repeats: int = 3) -> dict[str, Any]:
    """Decode ``n`` files on one thread (``steps``: "resize+crop" or "decode" alone): best of
    ``repeats`` after a warm-up."""
    paths = sorted(str(p) for p in Path(folder).rglob("*.jpg"))[:n]
    resize, crop = (RESIZE, (CROP, CROP)) if steps == "resize+crop" else (None, None)
    if which == "rust":
        from firstlayer import _core

        def run() -> None:
            for i in range(0, len(paths), 256):
                _core.decode_images(
                    paths[i : i + 256], grayscale=False, resize=resize, center_crop=crop, threads=1
                )
    else:
        from firstlayer.sources import DecodeOptions, decode_image

        opts = DecodeOptions(resize=resize, center_crop=crop)

        def run() -> None:
            for p in paths:
                decode_image(p, opts)

    run()  # warm-up: imports, first allocations, the files into the page cache
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return {"images": len(paths), "seconds": best}


def run_child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--small", type=int, default=5_000, help="second size, for the memory check")
    ap.add_argument("--quick", action="store_true", help="1,000 and 250 images, 20 s time box")
    ap.add_argument("--peer-budget", type=float, default=120.0, help="torchvision time box (s)")
    ap.add_argument("--decode-images", type=int, default=1_000)
    ap.add_argument("--out", type=Path, default=RESULTS / "folder_stats.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, folder, n, *rest = args.child
        if kind == "firstlayer":
            res = child_firstlayer(folder, int(n))
        elif kind == "torchvision":
            res = child_torchvision(folder, int(n), float(rest[0]), int(rest[1]))
        else:
            res = child_decode(folder, int(n), rest[0], rest[1])
        print(json.dumps(res))
        return 0
    if args.quick:
        args.images, args.small, args.peer_budget, args.decode_images = 1_000, 250, 20.0, 200
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="firstlayer-bench-") as tmp:
        big, small = Path(tmp) / "big", Path(tmp) / "small"
        t = time.perf_counter()
        write_folder(big, args.images, cores)
        write_folder(small, args.small, cores)
        print(f"wrote {args.images:,} + {args.small:,} JPEGs in {time.perf_counter() - t:.0f} s")
        for kind, folder, n, extra in (
            ("firstlayer", big, args.images, []),
            ("firstlayer", small, args.small, []),
            ("torchvision", big, args.images, [str(args.peer_budget), str(cores)]),
        ):
            r = run_child(kind, str(folder), str(n), *extra)
            r.update(method=kind, dataset_images=n, images_per_second=r["images"] / r["seconds"])
            rows.append(r)
            print(
                f"{kind:12s} {n:>6,} images: {r['images_per_second']:8.1f} img/s, "
                f"peak {r['peak_bytes'] / 2**20:7.0f} MiB"
                + (" (time-boxed)" if r.get("time_boxed") else "")
            )
        decode: dict[str, dict[str, float]] = {}
        for steps in ("resize+crop", "decode"):
            for which in ("rust", "pillow"):
                r = run_child("decode", str(big), str(args.decode_images), which, steps)
                decode.setdefault(steps, {})[which] = r["images"] / r["seconds"]
                print(f"{steps:12s} 1 thread, {which:6s}: {decode[steps][which]:7.1f} img/s")
    fl = next(r for r in rows if r["method"] == "firstlayer" and r["dataset_images"] == args.images)
    fl_small = next(r for r in rows if r["method"] == "firstlayer" and r is not fl)
    tv = next(r for r in rows if r["method"] == "torchvision")
    summary = {
        "speedup_end_to_end": fl["images_per_second"] / tv["images_per_second"],
        # Decode + Resize(256) + CenterCrop(224), the bench's pipeline (the Rust decoder skips
        # what the crop drops), and decoding whole images alone.
        "decode_per_core_rust_over_pillow": decode["resize+crop"]["rust"]
        / decode["resize+crop"]["pillow"],
        "decode_only_per_core_rust_over_pillow": decode["decode"]["rust"]
        / decode["decode"]["pillow"],
        "firstlayer_peak_mib": {
            str(args.small): fl_small["peak_bytes"] / 2**20,
            str(args.images): fl["peak_bytes"] / 2**20,
        },
    }
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import firstlayer

    doc = {
        "benchmark": "folder_stats",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "kernel_size": K,
            "resize": RESIZE,
            "center_crop": CROP,
            "images": args.images,
            "small": args.small,
            "peer_budget_s": args.peer_budget,
            "decode_images": args.decode_images,
            "data": "CIFAR-10 train (cifar10_jpeg_q75.npz) upscaled to 256x256 bicubic, JPEG q90",
        },
        "machine": {
            "cores": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "firstlayer": firstlayer.__version__,
        },
        "rows": rows,
        "decode_images_per_second_one_thread": decode,
        "summary": summary,
    }
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(doc, indent=1))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
