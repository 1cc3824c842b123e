#!/usr/bin/env python3
"""Sampled patch extraction: firstlayer next to its peers, on CIFAR-10.

Every method produces ``count`` sampled ``3 x 7 x 7`` patches of the CIFAR-10 training images
(uint8, decoded from the JPEG copy; ``--quick``: the exact-pixel subset) as one array:

* ``firstlayer-u8``   ``firstlayer.extract_patches(x_uint8_nchw, 7, max_patches=count)``: a uniform
                      sample without replacement over every (image, i, j), uint8 rows in (c, i, j)
                      order, the sampling included in the time
* ``firstlayer-f32``  the same on float32 images (float32 rows)
* ``sklearn``         ``sklearn.feature_extraction.image.PatchExtractor(patch_size=(7, 7),
                      max_patches=ceil(count / N))`` on uint8 NHWC images: every image gives the
                      same number of patches, drawn with replacement, in (i, j, c) order (not
                      reordered: the time is sklearn's alone); its output is float64
* ``torch-unfold``    ``torch.nn.functional.unfold`` of float32 batches of 256 images, then advanced
                      indexing ``u[img, :, pos]`` of the sampled positions into a preallocated
                      ``(count, 147)`` tensor; the sorted sample (``numpy.random.Generator.choice``
                      without replacement) is drawn before the clock starts (its time is reported
                      as ``sample_seconds``). ``unfold`` has no uint8 kernel on the CPU.

Each (method, count) runs in a fresh subprocess of this script (``--child``): the input is loaded
and every library imported and warmed up on a tiny input first, then the method runs
``--repeat`` times (best time kept; each run allocates its own output). Peak memory is
``ru_maxrss`` after the runs; ``rss_increase_mb`` subtracts ``ru_maxrss`` before them, and is
compared with the output array plus 64 MB. ``ratio`` is firstlayer's patches per second over the
fastest peer's.

Usage::

    python benches/bench_extract.py               # full: 50,000 images, 1M and 10M patches
    python benches/bench_extract.py --quick       # exact subset (6,102 images), 200k and 1M
    python benches/bench_extract.py --counts 1000000 --methods firstlayer-u8,torch-unfold

Data: ``$FIRSTLAYER_DATA`` or ``<repo>/../shared/data`` (``cifar10_jpeg_q75.npz``,
``cifar10_exact_subset.npz``). Results: ``bench-results/extract.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _cifar import N_TRAIN, RESULTS, data_dir, train_npy

K = 7
SEED = 2024
METHODS = ("firstlayer-u8", "firstlayer-f32", "sklearn", "torch-unfold")
OURS = METHODS[:2]
PEERS = METHODS[2:]
UNFOLD_BATCH = 256


# ----------------------------------------------------------------------------------------------
# data


def exact_subset() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / "cifar10_exact_subset_nchw.npy"
    if not cache.exists():
        with np.load(data_dir() / "cifar10_exact_subset.npz", allow_pickle=False) as z:
            x = np.ascontiguousarray(z["data"].reshape(-1, 3, 32, 32))
        np.save(cache, x)
    return cache


# ----------------------------------------------------------------------------------------------
# methods: each returns the number of patches it produced (the array is dropped after timing)


def prepare(method: str, x: np.ndarray) -> Any:
    """Input in the form the method reads, made before the clock starts."""
    if method == "firstlayer-f32" or method == "torch-unfold":
        return x.astype(np.float32)
    if method == "sklearn":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def run_method(method: str, x: Any, count: int) -> tuple[Any, dict[str, float]]:
    extra: dict[str, float] = {}
    if method in OURS:
        from firstlayer.extract import extract_patches

        return extract_patches(x, K, max_patches=count, seed=SEED, layout="NCHW"), extra
    if method == "sklearn":
        from sklearn.feature_extraction.image import PatchExtractor

        per = math.ceil(count / len(x))
        pe = PatchExtractor(patch_size=(K, K), max_patches=per, random_state=SEED)
        return pe.transform(x), extra
    if method == "torch-unfold":
        import torch

        n = len(x)
        side = x.shape[2] - K + 1
        per_image = side * side
        t0 = time.perf_counter()
        rng = np.random.default_rng(SEED)
        sample = np.sort(rng.choice(n * per_image, size=count, replace=False))
        extra["sample_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        xt = torch.from_numpy(x)
        out = torch.empty((count, 3 * K * K), dtype=torch.float32)
        img = torch.from_numpy(sample // per_image)
        pos = torch.from_numpy(sample % per_image)
        bounds = np.searchsorted(sample, np.arange(0, n + UNFOLD_BATCH, UNFOLD_BATCH) * per_image)
        for b, start in enumerate(range(0, n, UNFOLD_BATCH)):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            if lo == hi:
                continue
            u = torch.nn.functional.unfold(xt[start : start + UNFOLD_BATCH], K)
            out[lo:hi] = u[img[lo:hi] - start, :, pos[lo:hi]]
        extra["extract_seconds"] = time.perf_counter() - t1
        return out, extra
    raise SystemExit(f"unknown method {method!r}")


def child(method: str, count: int, input_path: str, repeat: int) -> dict[str, Any]:
    x = np.load(input_path)
    data = prepare(method, x)
    # import and warm up on a tiny input, so that only the method's own memory is measured
    run_method(method, prepare(method, x[:8]), 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = math.inf
    extras: dict[str, float] = {}
    produced, nbytes = 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out, extra = run_method(method, data, count)
        dt = time.perf_counter() - t0
        if "extract_seconds" in extra:
            dt = extra["extract_seconds"]
        if dt < best:
            best, extras = dt, extra
        produced = int(out.shape[0])
        nbytes = int(out.numel() * out.element_size()) if hasattr(out, "numel") else out.nbytes
        del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    output_mb = nbytes / 2**20
    return {
        "method": method,
        "requested": count,
        "patches": produced,
        "images": len(x),
        "seconds": best,
        "patches_per_s": produced / best,
        **extras,
        "output_mb": output_mb,
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        "rss_increase_mb": peak - before,
        "budget_mb": output_mb + 64,
        "within_budget": peak - before <= output_mb + 64,
    }


# ----------------------------------------------------------------------------------------------
# driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="exact subset, 200k and 1M patches")
    ap.add_argument("--images", type=int, default=N_TRAIN, help="training images (full mode)")
    ap.add_argument("--counts", default=None, help="comma-separated patch counts")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeat", type=int, default=None, help="runs per method (best kept)")
    ap.add_argument("--out", default=str(RESULTS / "extract.json"))
    ap.add_argument("--child", nargs=4, metavar=("METHOD", "COUNT", "INPUT", "REPEAT"))
    args = ap.parse_args()
    if args.child:
        method, count, path, repeat = args.child
        print(json.dumps(child(method, int(count), path, int(repeat))))
        return

    if args.quick:
        path, counts, repeat = exact_subset(), [200_000, 1_000_000], args.repeat or 1
    else:
        if not 1 <= args.images <= N_TRAIN:
            raise SystemExit(f"--images must be in 1..{N_TRAIN}, got {args.images}")
        path, counts, repeat = train_npy(args.images), [1_000_000, 10_000_000], args.repeat or 3
    if args.counts:
        counts = [int(c) for c in args.counts.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown {m!r}; choose from {', '.join(METHODS)}")
    n_images = int(np.load(path, mmap_mode="r").shape[0])

    import firstlayer._core as core

    rows: list[dict[str, Any]] = []
    for count in counts:
        for method in methods:
            cmd = [sys.executable, __file__, "--child", method, str(count), str(path), str(repeat)]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print(f"{method} {count}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
                rows.append({"method": method, "requested": count, "error": run.stderr[-500:]})
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{method:15s} {count:>11,d}  {r['patches_per_s'] / 1e6:8.2f} M patches/s  "
                f"{r['seconds']:7.3f} s  peak +{r['rss_increase_mb']:7.1f} MB "
                f"(output {r['output_mb']:.1f} MB, budget {r['budget_mb']:.1f} MB)",
                flush=True,
            )

    summary = []
    for count in counts:
        done = {r["method"]: r for r in rows if r["requested"] == count and "error" not in r}
        peers = [done[m]["patches_per_s"] for m in PEERS if m in done]
        fastest = max(peers) if peers else None
        for m in OURS:
            if m in done and fastest:
                summary.append(
                    {
                        "count": count,
                        "method": m,
                        "ratio_vs_fastest_peer": done[m]["patches_per_s"] / fastest,
                        "fastest_peer": max(
                            (p for p in PEERS if p in done), key=lambda p: done[p]["patches_per_s"]
                        ),
                        "within_budget": done[m]["within_budget"],
                    }
                )
    result = {
        "benchmark": "extract",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "input": str(path),
        "images": n_images,
        "kernel_size": K,
        "seed": SEED,
        "repeat": repeat,
        "threads": core.num_threads(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "goal": "firstlayer >= 10x the fastest peer in patches/s; rss increase <= output + 64 MB",
        "results": rows,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| patches | method | M patches/s | ratio vs fastest peer | peak RSS increase / budget |")
    print("|---:|---|---:|---:|---|")
    for r in rows:
        if "error" in r:
            continue
        ratio = next(
            (
                f"{s['ratio_vs_fastest_peer']:.1f}x"
                for s in summary
                if s["method"] == r["method"] and s["count"] == r["requested"]
            ),
            "",
        )
        print(
            f"| {r['requested']:,} | {r['method']} | {r['patches_per_s'] / 1e6:.2f} | {ratio} | "
            f"{r['rss_increase_mb']:.0f} / {r['budget_mb']:.0f} MB |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
