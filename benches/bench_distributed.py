#!/usr/bin/env python3
"""The cost of the engine: patch statistics in one process versus a 2-worker Dask LocalCluster.

The input is the 50,000 CIFAR-10 training images decoded from the JPEG copy
(``cifar10_jpeg_q75.npz``: ``jpeg`` bytes, ``offsets``; cached as a uint8 NCHW ``.npy`` under
``bench-results/``), cut into 20 shards that are index ranges of that ``.npy`` file. Every
configuration computes the same exact statistics (checked bit for bit):

* ``single-1t``   one process, one thread (``RAYON_NUM_THREADS=1``): the 20 shards in a loop,
                  through the same per-shard function the Dask tasks run (``compute_shard``)
* ``single-Nt``   the same with ``N`` threads (all cores of the machine)
* ``in-memory``   one process, ``N`` threads, ``firstlayer.patch_stats`` on the whole array
* ``dask-2w``     ``firstlayer.distributed.dask_patch_stats`` (through ``run_shards``) on a
                  ``LocalCluster`` of 2 worker processes with one thread each (cluster
                  start-up timed separately)

Each single-process configuration runs in a fresh subprocess (the Rust thread pool is sized once
per process). The engine overhead is ``per-core rate of single-1t / per-worker rate of dask-2w``
(goal: at most 1.3). From the measured per-worker rate the script estimates the compute time of
ImageNet (1,281,167 training images at 224 x 224, k = 3) per worker; JPEG decoding is not in it.

Usage::

    python benches/bench_distributed.py            # full run (50,000 images, 20 shards, 3 repeats)
    python benches/bench_distributed.py --quick    # smoke test (5,000 images, 20 shards, 2 repeats)

Data: ``$FIRSTLAYER_DATA`` or ``<repo>/../shared/data``. Result: ``bench-results/distributed.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _cifar import N_TRAIN, RESULTS, train_npy

IMAGENET_TRAIN = 1_281_167
IMAGENET_SIDE = 224


def make_shards(path: Path, n: int, n_shards: int) -> list[tuple[str, int, int]]:
    bounds = [n * i // n_shards for i in range(n_shards + 1)]
    return [(str(path), a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


# ----------------------------------------------------------------------------------------------
# single process (run in a child with RAYON_NUM_THREADS set)


def child(mode: str, path: str, n: int, n_shards: int, k: int, repeats: int) -> dict[str, Any]:
    import firstlayer
    from firstlayer import _core
    from firstlayer.distributed import as_shard, compute_shard

    options = {"kernel_size": k, "stride": 1, "padding": 0, "labels": False,
               "n_classes": None, "method": "auto"}  # fmt: skip
    shards = [as_shard(s, i) for i, s in enumerate(make_shards(Path(path), n, n_shards))]
    x = np.array(np.load(path, mmap_mode="r")[:n]) if mode == "in-memory" else None

    def run() -> Any:
        if x is not None:
            return firstlayer.patch_stats(x, k)
        stats = compute_shard(shards[0], options)
        for s in shards[1:]:
            stats = stats + compute_shard(s, options)
        return stats

    run()  # warm-up: page cache, thread pool
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stats = run()
        times.append(time.perf_counter() - t0)
    return {"threads": _core.num_threads(), "times_s": times, "sha": _digest(stats)}


def _digest(stats: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in (stats.sum, stats.second_moment):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"{stats.count}:{stats.n_images}".encode())
    return h.hexdigest()


def run_child(mode: str, threads: int, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", mode, str(path), str(args.images),
           str(args.shards), str(args.kernel_size), str(args.repeats)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT "))
    return dict(json.loads(line.removeprefix("CHILD_RESULT ")))


# ----------------------------------------------------------------------------------------------
# Dask


def run_dask(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    import distributed

    from firstlayer.distributed import local_cluster, run_shards

    shards = make_shards(path, args.images, args.shards)
    t0 = time.perf_counter()
    cluster = local_cluster(args.workers, threads_per_worker=1)
    client = distributed.Client(cluster)
    client.wait_for_workers(args.workers)
    startup = time.perf_counter() - t0
    try:
        kw = {"client": client, "labels": False, "quiet": True}
        run_shards(shards, args.kernel_size, **kw)  # warm-up: imports in the workers
        times, busy = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run = run_shards(shards, args.kernel_size, **kw)
            times.append(time.perf_counter() - t0)
            busy.append(sum(run.task_seconds.values()))
    finally:
        client.close()
        cluster.close()
    return {"workers": args.workers, "threads_per_worker": 1, "startup_s": startup,
            "times_s": times, "task_seconds_sum": busy, "sha": _digest(run.stats)}  # fmt: skip


# ----------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, path, n, shards, k, repeats = sys.argv[2:8]
        out = child(mode, path, int(n), int(shards), int(k), int(repeats))
        print("CHILD_RESULT " + json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 5,000 images, 2 repeats")
    ap.add_argument("--images", type=int, default=None, help="images (default 50,000)")
    ap.add_argument("--shards", type=int, default=20, help="shards (default 20)")
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    ap.add_argument("--kernel-size", type=int, default=3, help="patch side (default 3)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; quick 2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "distributed.json")
    args = ap.parse_args()
    if args.images is None:
        args.images = 5_000 if args.quick else N_TRAIN
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if not 1 <= args.images <= N_TRAIN:
        raise SystemExit(f"--images: expected 1..{N_TRAIN}, got {args.images}")
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    path = train_npy(args.images)

    rows: dict[str, dict[str, Any]] = {}
    for name, mode, threads in (
        ("single-1t", "shards", 1),
        (f"single-{cores}t", "shards", cores),
        ("in-memory", "in-memory", cores),
    ):
        rows[name] = run_child(mode, threads, args, path)
        print(f"{name:>12}: {min(rows[name]['times_s']):.3f} s", file=sys.stderr)
    rows["dask-2w" if args.workers == 2 else f"dask-{args.workers}w"] = dask = run_dask(args, path)
    print(f"{'dask':>12}: {min(dask['times_s']):.3f} s (start-up {dask['startup_s']:.1f} s)",
          file=sys.stderr)  # fmt: skip

    shas = {r["sha"] for r in rows.values()}
    for r in rows.values():
        best = min(r["times_s"])
        r["best_s"] = best
        r["images_per_s"] = args.images / best
        r["units"] = r.get("workers", r.get("threads", 1))
        r["images_per_s_per_core"] = r["images_per_s"] / r["units"]
        del r["sha"]
    one = rows["single-1t"]["images_per_s_per_core"]
    per_worker = dask["images_per_s_per_core"]
    overhead = one / per_worker
    # Where the time goes: the best run's wall time x workers = time in tasks + engine; time in
    # tasks / single-1t time = slowdown of the same work from sharing the cores (contention).
    i_best = int(np.argmin(dask["times_s"]))
    capacity = dask["times_s"][i_best] * args.workers
    in_tasks = dask["task_seconds_sum"][i_best]
    breakdown = {
        "worker_seconds": capacity,
        "in_tasks_seconds": in_tasks,
        "engine_share": 1 - in_tasks / capacity,
        "task_slowdown_vs_single_1t": in_tasks / rows["single-1t"]["best_s"],
    }
    patches_cifar = (32 - args.kernel_size + 1) ** 2
    patches_imagenet = (IMAGENET_SIDE - args.kernel_size + 1) ** 2
    imagenet_rate = per_worker * patches_cifar / patches_imagenet  # images/s/worker, compute only
    imagenet_hours = IMAGENET_TRAIN / imagenet_rate / 3600
    quiet_rate = one * (1 - breakdown["engine_share"]) * patches_cifar / patches_imagenet
    quiet_hours = IMAGENET_TRAIN / quiet_rate / 3600
    result = {
        "benchmark": "distributed",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "load_average_1m_at_start": load,
        },
        "input": {
            "images": args.images,
            "shards": args.shards,
            "kernel_size": args.kernel_size,
            "source": "cifar10_jpeg_q75.npz train, decoded, uint8 NCHW .npy slices",
            "npy": str(path),
            "repeats": args.repeats,
        },  # fmt: skip
        "results": rows,
        "bit_identical": len(shas) == 1,
        "engine_overhead_per_core": overhead,
        "dask_breakdown": breakdown,
        "goal_per_core": 1.3,
        "within_goal": overhead <= 1.3,
        "imagenet_estimate": {
            "images": IMAGENET_TRAIN,
            "size": f"{IMAGENET_SIDE}x{IMAGENET_SIDE} (resize 256 + center crop 224)",
            "basis": "per-worker CIFAR rate scaled by patches per image "
            f"({patches_cifar} -> {patches_imagenet}); compute only, JPEG decoding not included",
            "images_per_s_per_worker": imagenet_rate,
            "hours_per_worker": imagenet_hours,
            "hours_on_32_workers": imagenet_hours / 32,
            "hours_per_worker_uncontended": quiet_hours,
            "uncontended_basis": "single-1t rate x the share of worker time spent in tasks",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'config':>12} {'best s':>8} {'img/s':>10} {'img/s/core':>11}")
    for name, r in rows.items():
        print(f"{name:>12} {r['best_s']:8.3f} {r['images_per_s']:10,.0f} "
              f"{r['images_per_s_per_core']:11,.0f}")  # fmt: skip
    print(f"engine overhead per core: {overhead:.2f}x (goal <= 1.3); bit-identical: "
          f"{result['bit_identical']}")  # fmt: skip
    print(
        f"dask: {breakdown['engine_share']:.0%} of worker time outside the tasks; the tasks "
        f"ran {breakdown['task_slowdown_vs_single_1t']:.2f}x the single-1t time "
        f"(core contention; load average {load:.1f} on {cores} cores)"
    )
    print(
        f"ImageNet k={args.kernel_size}, compute only: {imagenet_rate:,.1f} img/s per worker, "
        f"{imagenet_hours:.1f} h per worker ({imagenet_hours / 32:.2f} h on 32 workers)"
    )
    print(f"wrote {args.out}")
    if not result["bit_identical"]:
        raise SystemExit("the configurations disagree: statistics are not bit-identical")


if __name__ == "__main__":
    main()
