#!/usr/bin/env python3
"""Patch statistics of patch-embedding windows: k = 16 at stride 1 and at stride 16 on 224 x 224.

ViT-B/16 sees 16 x 16 patches at stride 16; the paper's basis is that of all stride-1 patches.
Every method computes, per case, the count, the sum and ``sum p p^T`` over all ``3 x k x k``
windows of the same uint8 images, side by side in this one process:

* ``firstlayer``   ``firstlayer.patch_stats(x, kernel_size=k, stride=s)``, exact integers, the
                   kernel picked automatically (shifted products at stride 1, the block Gram
                   matrix at stride 16); ``firstlayer-direct`` / ``-shifted`` force each kernel
* ``torch-f64``    ``torch.nn.functional.unfold`` + ``P^T P`` matmul in float64, batched
* ``torch-f32``    the same in float32, with its largest relative error against the exact sums

Images: random 224 x 224 crops of the photographs inside the scikit-image wheel (astronaut,
coffee, chelsea, rocket, hubble_deep_field, retina; PNG and JPEG), else exact CIFAR-10 images
upscaled 7x (nearest).
Each timing is the best of ``--repeat`` runs with all threads (``RAYON_NUM_THREADS`` /
``torch.get_num_threads()``). Exactness: the float64 peer's sums are integers below 2**53 and
exact, so firstlayer must equal them bit for bit.

Usage::

    python benches/bench_large_kernels.py                # 64 images, k=16 at strides 1 and 16
    python benches/bench_large_kernels.py --quick        # smoke test (4 images of 96 x 96)
    python benches/bench_large_kernels.py --cases 16:1,16:16,32:32 --out /tmp/large.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _cifar import RESULTS, data_dir

# Colour photographs inside the scikit-image wheel (no download).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")


def load_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` uint8 NCHW RGB images of ``size x size`` and a description of where they came from."""
    rng = np.random.default_rng(seed)
    try:
        import skimage.data as sd

        photos = [np.asarray(getattr(sd, name)()) for name in _PHOTOS if hasattr(sd, name)]
        photos = [p[..., :3] for p in photos if p.ndim == 3 and min(p.shape[:2]) >= size]
        out = np.empty((n, 3, size, size), np.uint8)
        for i in range(n):
            p = photos[i % len(photos)]
            y = int(rng.integers(0, p.shape[0] - size + 1))
            x = int(rng.integers(0, p.shape[1] - size + 1))
            out[i] = p[y : y + size, x : x + size].transpose(2, 0, 1)
        names = ", ".join(_PHOTOS)
        return out, f"random {size}x{size} crops of scikit-image photographs ({names})"
    except ImportError:
        z = np.load(data_dir() / "cifar10_exact_subset.npz", allow_pickle=False)
        x = z["data"][:n].reshape(-1, 3, 32, 32)
        rep = -(-size // 32)
        up = x.repeat(rep, axis=2).repeat(rep, axis=3)[:, :, :size, :size]
        return np.ascontiguousarray(up), f"CIFAR-10 exact images upscaled {rep}x (nearest)"


def run_firstlayer(x: np.ndarray, k: int, s: int, method: str) -> dict[str, Any]:
    import firstlayer

    st = firstlayer.patch_stats(x, kernel_size=k, stride=s, layout="NCHW", method=method)
    return {"count": st.count, "sum": st.sum, "second": st.second_moment}


def run_torch(x: np.ndarray, k: int, s: int, dtype: str, batch_mb: float) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, dtype)
    c, h, w = x.shape[1:]
    p = c * k * k
    windows = ((h - k) // s + 1) * ((w - k) // s + 1)
    per_image = windows * p * torch.finfo(dt).bits // 8
    b = max(1, int(batch_mb * 2**20 // per_image))
    m = torch.zeros((p, p), dtype=dt)
    total = torch.zeros(p, dtype=dt)
    count = 0
    xt = torch.from_numpy(x)
    for lo in range(0, x.shape[0], b):
        xb = xt[lo : lo + b].to(dt)
        cols = F.unfold(xb, kernel_size=k, stride=s)  # (b, p, L), rows in (c, i, j) order
        pt = cols.transpose(1, 2).reshape(-1, p)
        m += pt.T @ pt
        total += pt.sum(0)
        count += pt.shape[0]
    return {"count": count, "sum": total.numpy(), "second": m.numpy()}


def best_of(fn: Any, repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def machine() -> dict[str, Any]:
    import torch

    import firstlayer
    from firstlayer import _core

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "rayon_threads": _core.num_threads(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "firstlayer": getattr(firstlayer, "__version__", "?"),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=None, help="images (default 64; quick 4)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 224; quick 96)")
    ap.add_argument("--cases", default="16:1,16:16", help="k:stride pairs, comma-separated")
    ap.add_argument("--repeat", type=int, default=None, help="best of (default 3; quick 1)")
    ap.add_argument("--batch-mb", type=float, default=512.0, help="torch unfold batch budget")
    ap.add_argument("--no-forced", action="store_true", help="skip firstlayer-direct/-shifted")
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 images of 96 x 96")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    n = args.images or (4 if args.quick else 64)
    size = args.size or (96 if args.quick else 224)
    repeat = args.repeat or (1 if args.quick else 3)
    cases = [tuple(int(v) for v in c.split(":")) for c in args.cases.split(",")]
    x, source = load_images(n, size)
    result: dict[str, Any] = {
        "benchmark": "large_kernels",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "images": {"n": n, "size": size, "source": source},
        "machine": machine(),
        "cases": [],
    }
    # Warm up both (thread pools, first calls) so that no method pays for it in its timing.
    run_firstlayer(x[:1], 3, 1, "auto")
    run_torch(x[:1], 3, 1, "float32", args.batch_mb)
    for k, s in cases:
        windows = ((size - k) // s + 1) ** 2 * n
        methods: dict[str, Any] = {}
        t64, ref = best_of(lambda k=k, s=s: run_torch(x, k, s, "float64", args.batch_mb), repeat)
        methods["torch-f64"] = {"seconds": t64}
        t32, r32 = best_of(lambda k=k, s=s: run_torch(x, k, s, "float32", args.batch_mb), repeat)
        exact_m = np.rint(ref["second"]).astype(np.uint64)
        err32 = float(np.max(np.abs(r32["second"] - ref["second"]) / np.maximum(ref["second"], 1)))
        methods["torch-f32"] = {"seconds": t32, "max_rel_error": err32}
        runs = ["auto"] + ([] if args.no_forced else ["direct", "shifted"])
        for method in runs:
            name = "firstlayer" if method == "auto" else f"firstlayer-{method}"
            t, got = best_of(lambda m=method, k=k, s=s: run_firstlayer(x, k, s, m), repeat)
            exact = (
                got["count"] == ref["count"]
                and np.array_equal(got["second"], exact_m)
                and np.array_equal(got["sum"], np.rint(ref["sum"]).astype(np.uint64))
            )
            methods[name] = {"seconds": t, "exact": bool(exact)}
        fl = methods["firstlayer"]["seconds"]
        case = {
            "kernel_size": k,
            "stride": s,
            "windows": windows,
            "dim": 3 * k * k,
            "methods": methods,
            "speedup_vs_torch_f64": t64 / fl,
            "speedup_vs_torch_f32": t32 / fl,
        }
        result["cases"].append(case)
        line = "  ".join(
            f"{m} {v['seconds'] * 1e3:.1f} ms" + ("" if v.get("exact", True) else " INEXACT")
            for m, v in methods.items()
        )
        print(f"k={k} stride={s} ({windows:,} windows): {line}", flush=True)
        print(
            f"  firstlayer is {t64 / fl:.2f}x torch-f64 and {t32 / fl:.2f}x torch-f32 "
            f"(f32 max rel. error {err32:.1e})",
            flush=True,
        )
    out = args.out or (
        RESULTS / ("large_kernels_quick.json" if args.quick else "large_kernels.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    if not all(v.get("exact", True) for c in result["cases"] for v in c["methods"].values()):
        raise SystemExit("firstlayer's sums differ from the exact reference")
    return result


if __name__ == "__main__":
    main()
