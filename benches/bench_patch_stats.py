#!/usr/bin/env python3
"""Patch second-moment statistics: firstlayer next to its peers, on CIFAR-10.

Every method computes, for ``kernel_size`` k, the sum over all valid ``3 x k x k`` patches of
``p p^T`` (and the patch sum and count) of the 50,000 CIFAR-10 training images:

* ``firstlayer``    ``firstlayer.patch_stats(x_uint8_nchw, kernel_size=k)`` (exact, integer)
* ``torch-f32``     ``torch.nn.functional.unfold`` + matmul in float32, batched
* ``torch-f64``     the same in float64
* ``numpy-f64``     ``numpy.lib.stride_tricks.sliding_window_view`` + matmul in float64, batched
* ``paper``         the paper's notebooks: float64 ``Tensor.unfold`` patches of a 10,000-image
                    subset held in memory at once, then ``torch.pca_lowrank(P, q=p)``; compared as
                    patches/second (it yields the PCA, not ``M``)

All timings run in this one process, side by side on the same decoded array. Peak memory is
measured per method and k in a fresh subprocess of this script (``--child METHOD K``):
``ru_maxrss`` after the run minus ``ru_maxrss`` after importing everything and loading the input.
Exactness is checked on the exact-pixel CIFAR subset against an integer reference (float64
unfold + matmul, rounded: every product and partial sum is an integer below 2**53, so float64 is
exact whatever the summation order).

Usage::

    python benches/bench_patch_stats.py                 # full run (50,000 images, k=3,5,7,11)
    python benches/bench_patch_stats.py --quick         # smoke test (2,000 images)
    python benches/bench_patch_stats.py --images 10000 --kernels 3,7 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _cifar import N_TRAIN, REPO, RESULTS, data_dir, train_npy

METHODS = ("firstlayer", "torch-f32", "torch-f64", "numpy-f64", "paper")
PEERS = METHODS[1:]
DESCRIPTIONS = {
    "firstlayer": "firstlayer.patch_stats(uint8 NCHW), exact integer accumulation",
    "torch-f32": "torch F.unfold + matmul (float32), batched, accumulating P^T P",
    "torch-f64": "torch F.unfold + matmul (float64), batched, accumulating P^T P",
    "numpy-f64": "numpy sliding_window_view + reshape + matmul (float64), batched",
    "paper": "float64 Tensor.unfold patches of a subset held at once + torch.pca_lowrank(P, q=p)",
}


# ----------------------------------------------------------------------------------------------
# data


def load_input(n: int) -> np.ndarray:
    if not 1 <= n <= N_TRAIN:
        raise SystemExit(f"--images must be in 1..{N_TRAIN}, got {n}")
    return np.load(train_npy(n))


def load_exact(n: int) -> np.ndarray:
    """First ``n`` rows of the exact-pixel subset as uint8 NCHW (R, G, B planes of 32x32)."""
    with np.load(data_dir() / "cifar10_exact_subset.npz", allow_pickle=False) as z:
        data = z["data"]
    return np.ascontiguousarray(data[:n].reshape(-1, 3, 32, 32))


# ----------------------------------------------------------------------------------------------
# methods: each returns (second_moment float64/uint64 (p,p), sum (p,), count, images_used)


def n_patches(n_images: int, k: int, h: int = 32, w: int = 32) -> int:
    return n_images * (h - k + 1) * (w - k + 1)


def batch_size(k: int, itemsize: int, budget_mb: float) -> int:
    """Images per batch: at most 1000, and the unfolded batch within ``budget_mb``."""
    per_image = n_patches(1, k) * 3 * k * k * itemsize
    return int(max(1, min(1000, budget_mb * 2**20 // per_image)))


def run_firstlayer(x: np.ndarray, k: int, **_: Any) -> dict[str, Any]:
    import firstlayer

    st = firstlayer.patch_stats(x, kernel_size=k)
    return {"M": st.second_moment, "sum": st.sum, "count": int(st.count), "images": len(x)}


def _timeboxed(batches: Any, step: Any, time_budget: float | None) -> int:
    """Run ``step`` over batches until done or ``time_budget`` seconds passed; images used."""
    t0 = time.perf_counter()
    used = 0
    for lo, hi in batches:
        step(lo, hi)
        used = hi
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
    return used


def _ranges(n: int, b: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + b)) for lo in range(0, n, b)]


def run_torch(
    x: np.ndarray,
    k: int,
    *,
    dtype: str,
    batch_mb: float,
    variant: str = "pL",
    time_budget: float | None = None,
    max_images: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    tdt = {"f32": torch.float32, "f64": torch.float64}[dtype]
    p = 3 * k * k
    n = len(x) if max_images is None else min(len(x), max_images)
    b = batch_size(k, tdt.itemsize, batch_mb)
    m = torch.zeros((p, p), dtype=tdt)
    s = torch.zeros(p, dtype=tdt)
    xt = torch.from_numpy(x)

    def step(lo: int, hi: int) -> None:
        u = F.unfold(xt[lo:hi].to(tdt), kernel_size=k)  # (B, p, L), rows in (c, i, j) order
        if variant == "bmm":
            m.add_(torch.bmm(u, u.transpose(1, 2)).sum(0))
            s.add_(u.sum(dim=(0, 2)))
        elif variant == "Lp":
            a = u.transpose(1, 2).reshape(-1, p)  # (B*L, p), one copy
            m.add_(a.T @ a)
            s.add_(a.sum(dim=0))
        else:
            a = u.transpose(0, 1).reshape(p, -1)  # (p, B*L), one copy
            m.add_(a @ a.T)
            s.add_(a.sum(dim=1))

    with torch.inference_mode():
        used = _timeboxed(_ranges(n, b), step, time_budget)
    return {
        "M": m.double().numpy(),
        "sum": s.double().numpy(),
        "count": n_patches(used, k),
        "images": used,
        "batch_images": b,
        "variant": variant,
    }


TORCH_VARIANTS = ("pL", "Lp", "bmm")


def pick_torch_variant(x: np.ndarray, k: int, dtype: str, batch_mb: float) -> dict[str, float]:
    """Seconds per variant of the torch peer on one batch (best of 2), so that the peer runs the
    matmul layout that is fastest on this machine: ``pL`` = (p, B*L) @ its transpose, ``Lp`` =
    transpose of (B*L, p) @ it, ``bmm`` = batched (p, L) @ (L, p) summed over the batch."""
    b = batch_size(k, 4 if dtype == "f32" else 8, batch_mb)
    xb = x[: min(len(x), b)]
    out = {}
    for v in TORCH_VARIANTS:
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            run_torch(xb, k, dtype=dtype, batch_mb=batch_mb, variant=v)
            best = min(best, time.perf_counter() - t0)
        out[v] = best
    return out


def run_numpy(
    x: np.ndarray,
    k: int,
    *,
    batch_mb: float,
    time_budget: float | None = None,
    max_images: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    from numpy.lib.stride_tricks import sliding_window_view

    p = 3 * k * k
    n = len(x) if max_images is None else min(len(x), max_images)
    b = batch_size(k, 8, batch_mb)
    m = np.zeros((p, p))
    s = np.zeros(p)

    def step(lo: int, hi: int) -> None:
        xb = x[lo:hi].astype(np.float64)
        v = sliding_window_view(xb, (k, k), axis=(2, 3))  # (B, C, H', W', k, k), a view
        a = v.transpose(0, 2, 3, 1, 4, 5).reshape(-1, p)  # (B*L, p), one copy
        np.add(m, a.T @ a, out=m)
        np.add(s, a.sum(axis=0), out=s)

    used = _timeboxed(_ranges(n, b), step, time_budget)
    return {"M": m, "sum": s, "count": n_patches(used, k), "images": used, "batch_images": b}


def paper_images(n: int, k: int, subset: int, max_gb: float) -> int:
    """Images of the paper's subset: ``subset`` (10,000) capped so P fits in ``max_gb``."""
    per_image = n_patches(1, k) * 3 * k * k * 8
    return int(max(1, min(n, subset, max_gb * 2**30 // per_image)))


def run_paper(
    x: np.ndarray,
    k: int,
    *,
    paper_subset: int,
    paper_max_gb: float,
    paper_n: int | None = None,
    **_: Any,
) -> dict[str, Any]:
    import torch

    n = paper_images(len(x), k, paper_subset, paper_max_gb)
    if paper_n is not None:
        n = max(1, min(n, paper_n))
    p = 3 * k * k
    with torch.inference_mode():
        imgs = torch.from_numpy(x[:n]).double()
        patches = imgs.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        pm = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, p)  # (N*L, p) in (c, i, j) order
        del patches, imgs
        _u, sv, v = torch.pca_lowrank(pm, q=p)
        count = pm.shape[0]
        eig = (sv.double() ** 2 / (count - 1)).numpy()
    return {"eigenvalues": eig, "components": v.numpy(), "count": count, "images": n}


RUNNERS = {
    "firstlayer": run_firstlayer,
    "torch-f32": lambda x, k, **kw: run_torch(x, k, dtype="f32", **kw),
    "torch-f64": lambda x, k, **kw: run_torch(x, k, dtype="f64", **kw),
    "numpy-f64": run_numpy,
    "paper": run_paper,
}


def method_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch_mb": args.batch_mb,
        "paper_subset": args.paper_subset,
        "paper_max_gb": args.paper_max_gb,
    }


# ----------------------------------------------------------------------------------------------
# timing


def plan_paper(x: np.ndarray, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """Images for the paper's method: its 10,000-image subset, capped so that the patch matrix
    stays within ``--paper-max-gb`` and the run within about ``--paper-budget`` seconds (its cost
    is linear in the number of patches; a pilot run on a few images gives the rate)."""
    mem_cap = paper_images(len(x), k, args.paper_subset, args.paper_max_gb)
    pilot = min(mem_cap, args.paper_pilot)
    t0 = time.perf_counter()
    run_paper(x, k, paper_subset=pilot, paper_max_gb=args.paper_max_gb)
    per_image = (time.perf_counter() - t0) / pilot
    time_cap = max(pilot, int(args.paper_budget / per_image))
    n = min(mem_cap, time_cap)
    return {
        "images": n,
        "subset_target": min(len(x), args.paper_subset),
        "memory_cap_images": mem_cap,
        "pilot_images": pilot,
        "pilot_seconds_per_image": per_image,
        "time_cap_images": time_cap,
    }


def time_method(
    method: str, x: np.ndarray, k: int, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Best-of-repeats timing. Peers other than the paper are time-boxed to ``--peer-budget``
    seconds: they stop after the batch that crosses it, and later repeats reuse that image count.
    """
    kw = method_kwargs(args)
    runs: list[float] = []
    res: dict[str, Any] = {}
    boxed = method in ("torch-f32", "torch-f64", "numpy-f64")
    tuning = None
    plan = None
    if method == "paper":
        plan = plan_paper(x, k, args)
        kw["paper_n"] = plan["images"]
    if method.startswith("torch-"):
        tuning = pick_torch_variant(x, k, method[-3:], args.batch_mb)
        kw["variant"] = min(tuning, key=tuning.__getitem__)
    for rep in range(max(1, args.repeats)):
        if boxed:
            if rep == 0:
                kw["time_budget"] = args.peer_budget
            else:
                kw["time_budget"] = None
                kw["max_images"] = res["images"]
        t0 = time.perf_counter()
        res = RUNNERS[method](x, k, **kw)
        runs.append(time.perf_counter() - t0)
        if runs[-1] > args.repeat_below:
            break
    best = min(runs)
    patches = n_patches(res["images"], k)
    timing = {
        "seconds_best": best,
        "seconds_all": runs,
        "images_used": res["images"],
        "patches": patches,
        "patches_per_second": patches / best,
        "subset": res["images"] < len(x),
    }
    if "batch_images" in res:
        timing["batch_images"] = res["batch_images"]
    if plan is not None:
        timing["paper_plan"] = plan
    if tuning is not None:
        timing["variant"] = kw["variant"]
        timing["variant_seconds_one_batch"] = tuning
    return timing, res


# ----------------------------------------------------------------------------------------------
# memory (fresh subprocess)


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


def proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_main(args: argparse.Namespace) -> None:
    method, k = args.child[0], int(args.child[1])
    import torch  # noqa: F401  (imported before the baseline, as every method may need it)

    import firstlayer  # noqa: F401

    torch.set_num_threads(args.threads)
    x = load_input(args.images)
    ru_base = maxrss_bytes()
    rss_base = proc_status_bytes("VmRSS")
    was_reset = reset_peak_rss()
    hwm_base = proc_status_bytes("VmHWM")
    kw = method_kwargs(args)
    if method in ("torch-f32", "torch-f64", "numpy-f64") and args.mem_images:
        kw["max_images"] = args.mem_images
    if method.startswith("torch-") and args.torch_variant:
        kw["variant"] = args.torch_variant
    if method == "paper" and args.paper_n:
        kw["paper_n"] = args.paper_n
    res = RUNNERS[method](x, k, **kw)
    ru_peak = maxrss_bytes()
    hwm_peak = proc_status_bytes("VmHWM")
    out: dict[str, Any] = {"images": res["images"]}
    if hwm_peak is not None and hwm_base is not None and rss_base is not None:
        # with the reset, VmHWM restarts from the RSS after loading: the peak is the run's own
        out["how"] = (
            "VmHWM after run - VmRSS after load (VmHWM reset)"
            if was_reset
            else ("VmHWM after run - VmHWM after load (no reset: may under-report)")
        )
        out["baseline_bytes"] = rss_base if was_reset else hwm_base
        out["peak_bytes"] = hwm_peak
    else:
        out["how"] = "ru_maxrss after run - ru_maxrss after load"
        out["baseline_bytes"] = ru_base
        out["peak_bytes"] = ru_peak
    out["ru_maxrss_baseline_bytes"] = ru_base
    out["ru_maxrss_peak_bytes"] = ru_peak
    print("CHILD_RESULT " + json.dumps(out))


def measure_memory(
    method: str, k: int, args: argparse.Namespace, timing: dict[str, Any]
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        method,
        str(k),
        "--images",
        str(args.images),
        "--threads",
        str(args.threads),
        "--batch-mb",
        str(args.batch_mb),
        "--paper-subset",
        str(args.paper_subset),
        "--paper-max-gb",
        str(args.paper_max_gb),
        "--mem-images",
        str(args.mem_images),
    ]
    if "variant" in timing:
        cmd += ["--torch-variant", timing["variant"]]
    if "paper_plan" in timing:
        cmd += ["--paper-n", str(timing["paper_plan"]["images"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            r = json.loads(line.split(" ", 1)[1])
            r["peak_over_baseline_mb"] = (r["peak_bytes"] - r["baseline_bytes"]) / 2**20
            return r
    return {"error": f"rc={proc.returncode}: {proc.stderr.strip()[-2000:]}"}


# ----------------------------------------------------------------------------------------------
# exactness


def exact_reference(x: np.ndarray, k: int, batch_mb: float) -> dict[str, Any]:
    """Integer moments of ``x`` by float64 unfold + matmul, checked integral, then rounded."""
    r = run_torch(x, k, dtype="f64", batch_mb=batch_mb)
    m, s = r["M"], r["sum"]
    assert float(np.abs(m).max()) < 2.0**53, "reference past float64's exact integer range"
    integral = bool(np.all(m == np.rint(m)) and np.all(s == np.rint(s)))
    return {
        "M": np.rint(m).astype(np.uint64),
        "sum": np.rint(s).astype(np.uint64),
        "count": r["count"],
        "integral": integral,
    }


def covariance(m: np.ndarray, s: np.ndarray, n: int) -> np.ndarray:
    mu = np.asarray(s, dtype=np.float64) / n
    return np.asarray(m, dtype=np.float64) / n - np.outer(mu, mu)


def check_exactness(
    k: int, xe: np.ndarray, args: argparse.Namespace, methods: list[str], variants: dict[str, str]
) -> dict[str, Any]:
    import firstlayer

    ref = exact_reference(xe, k, args.batch_mb)
    ref_m = ref["M"].astype(np.float64)
    ref_scale = float(ref_m.max())
    out: dict[str, Any] = {
        "images": len(xe),
        "patches": ref["count"],
        "reference": f"torch float64 unfold + matmul, rounded (integral: {ref['integral']})",
        "reference_max_entry": ref_scale,
        "methods": {},
    }
    # firstlayer, with every kernel it offers: must be bit-identical
    for fm in ("auto", "direct", "shifted"):
        st = firstlayer.patch_stats(xe, kernel_size=k, method=fm)
        sm = np.asarray(st.second_moment)
        equal = (
            sm.dtype == np.uint64
            and np.array_equal(sm, ref["M"])
            and np.array_equal(np.asarray(st.sum).astype(np.uint64), ref["sum"])
            and int(st.count) == ref["count"]
        )
        diff = np.abs(sm.astype(np.float64) - ref_m).max()
        name = "firstlayer" if fm == "auto" else f"firstlayer[{fm}]"
        out["methods"][name] = {
            "dtype": str(sm.dtype),
            "exact": bool(equal),
            "max_abs_error": float(diff),
            "max_rel_error": float(diff / ref_scale),
        }
    kw = method_kwargs(args)
    for meth in ("torch-f32", "torch-f64", "numpy-f64"):
        if meth not in methods:
            continue
        extra = {"variant": variants[meth]} if meth in variants else {}
        r = RUNNERS[meth](xe, k, **kw, **extra)
        diff = float(np.abs(r["M"] - ref_m).max())
        out["methods"][meth] = {
            "exact": diff == 0.0 and np.array_equal(r["sum"], ref["sum"].astype(np.float64)),
            "max_abs_error": diff,
            "max_rel_error": diff / ref_scale,
        }
    # eigenvalues of the covariance: exact (from the integer reference) vs firstlayer and paper
    exact_eig = np.linalg.eigvalsh(covariance(ref["M"], ref["sum"], ref["count"]))[::-1]
    fl_eig = np.asarray(firstlayer.patch_stats(xe, kernel_size=k).pca().eigenvalues)
    out["eigenvalues_reference"] = "numpy eigvalsh of the covariance from the exact moments"
    out["methods"]["firstlayer"]["eigenvalue_max_rel_error"] = float(
        np.abs(fl_eig - exact_eig).max() / exact_eig[0]
    )
    if "paper" not in methods:
        return out
    pr = run_paper(xe, k, paper_subset=args.paper_exact_images, paper_max_gb=args.paper_max_gb)
    if pr["images"] < len(xe):
        sub = exact_reference(xe[: pr["images"]], k, args.batch_mb)
        e_ref = np.linalg.eigvalsh(covariance(sub["M"], sub["sum"], sub["count"]))[::-1]
    else:
        e_ref = exact_eig
    # pca_lowrank divides by nothing; we scaled by 1/(n-1); the exact covariance uses 1/n
    pe = pr["eigenvalues"] * (pr["count"] - 1) / pr["count"]
    out["methods"]["paper"] = {
        "images": pr["images"],
        "compares": "covariance eigenvalues (it does not produce M)",
        "eigenvalue_max_abs_error": float(np.abs(pe - e_ref).max()),
        "eigenvalue_max_rel_error": float(np.abs(pe - e_ref).max() / e_ref[0]),
    }
    return out


# ----------------------------------------------------------------------------------------------
# machine info, report


def machine_info(threads: int) -> dict[str, Any]:
    import PIL
    import torch

    import firstlayer

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_bytes": mem,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "requested_threads": threads,
        "env": {
            v: os.environ.get(v)
            for v in (
                "RAYON_NUM_THREADS",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
            )
        },
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "firstlayer": getattr(firstlayer, "__version__", "?"),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:,.2f} M" if r >= 1e6 else f"{r / 1e3:,.1f} k"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Input: {result['input']['images']:,} images, uint8 NCHW, "
        f"{result['input']['bytes'] / 2**20:.1f} MiB; "
        f"{result['machine']['usable_cores']} cores, torch threads "
        f"{result['machine']['torch_threads']}, RAYON_NUM_THREADS="
        f"{result['machine']['env']['RAYON_NUM_THREADS']}",
        "",
        "| k | method | images timed | patches/s | firstlayer speedup | peak MiB over input "
        "| max abs err (exact subset) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for kk, entry in result["kernels"].items():
        for meth, row in entry["methods"].items():
            t = row["timing"]
            mem = row.get("memory", {})
            memtxt = (
                f"{mem['peak_over_baseline_mb']:.1f}" if "peak_over_baseline_mb" in mem else "-"
            )
            ex = entry.get("exactness", {}).get("methods", {}).get(meth, {})
            if "max_abs_error" in ex:
                err = "0 (exact)" if ex["max_abs_error"] == 0 else f"{ex['max_abs_error']:.3g}"
            elif "eigenvalue_max_rel_error" in ex:
                err = f"eig rel {ex['eigenvalue_max_rel_error']:.2g}"
            else:
                err = "-"
            sub = "*" if t["subset"] else ""
            speed = "-" if meth == "firstlayer" else f"{row['firstlayer_speedup']:.1f}x"
            lines.append(
                f"| {kk} | {meth} | {t['images_used']:,}{sub} | "
                f"{fmt_rate(t['patches_per_second'])} | {speed} | {memtxt} | {err} |"
            )
    lines += [
        "",
        "`*` timed on a subset (time-boxed or the paper's subset), patches/s scaled accordingly.",
        "",
        "Cost growth, ns per patch divided by (2k-1)^2 and by k^4 (flat = grows like that):",
        "",
        "| method | k | ns/patch | /(2k-1)^2 | /k^4 |",
        "|---|---:|---:|---:|---:|",
    ]
    for meth, rows in result["cost_growth"].items():
        for r in rows:
            lines.append(
                f"| {meth} | {r['k']} | {r['ns_per_patch']:.2f} | "
                f"{r['ns_per_patch_over_2k1_sq']:.4f} | {r['ns_per_patch_over_k4']:.5f} |"
            )
    g = result["goals"]
    lines += ["", "Goals: " + "; ".join(f"{key}: {val}" for key, val in g.items())]
    return "\n".join(lines)


def goals(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kk, need in (("3", 20.0), ("7", 50.0)):
        if kk in result["kernels"]:
            sp = result["kernels"][kk]["fastest_peer_speedup"]
            out[f"k={kk} speedup vs fastest peer >= {need:g}x"] = f"{sp:.1f}x " + (
                "PASS" if sp >= need else "FAIL"
            )
    mems = [
        e["methods"]["firstlayer"].get("memory", {}).get("peak_over_baseline_mb")
        for e in result["kernels"].values()
    ]
    mems = [m for m in mems if m is not None]
    if mems:
        out["firstlayer peak <= input + 100 MB"] = f"max {max(mems):.1f} MiB over input " + (
            "PASS" if max(mems) <= 100 * 1e6 / 2**20 else "FAIL"
        )
    ex = [
        e["exactness"]["methods"]["firstlayer"]["exact"]
        for e in result["kernels"].values()
        if "exactness" in e
    ]
    if ex:
        out["firstlayer exact"] = "PASS" if all(ex) else "FAIL"
    fl = result["cost_growth"].get("firstlayer", [])
    if len(fl) >= 2:
        a, b = fl[0], fl[-1]
        out["firstlayer cost growth"] = (
            f"k={a['k']}->{b['k']}: x{b['ns_per_patch'] / a['ns_per_patch']:.2f} "
            f"((2k-1)^2 predicts x{((2 * b['k'] - 1) / (2 * a['k'] - 1)) ** 2:.2f}, "
            f"k^4 predicts x{(b['k'] / a['k']) ** 4:.2f})"
        )
    return out


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=None, help="training images (default 50000)")
    ap.add_argument("--kernels", default="3,5,7,11", help="comma-separated kernel sizes")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2,000 images, 300 exact")
    ap.add_argument("--out", type=Path, default=RESULTS / "patch_stats.json")
    ap.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many (if cheap)")
    ap.add_argument(
        "--repeat-below", type=float, default=8.0, help="repeat only runs shorter than this (s)"
    )
    ap.add_argument(
        "--peer-budget",
        type=float,
        default=25.0,
        help="time box (s) for the batched peers; past it they stop and are scaled",
    )
    ap.add_argument("--batch-mb", type=float, default=256.0, help="peers' unfolded batch cap")
    ap.add_argument("--paper-subset", type=int, default=10_000)
    ap.add_argument("--paper-max-gb", type=float, default=2.0, help="cap on the paper's P")
    ap.add_argument(
        "--paper-budget", type=float, default=30.0, help="cap (s) on the paper's timed run"
    )
    ap.add_argument("--paper-pilot", type=int, default=50, help="images in the paper's pilot")
    ap.add_argument(
        "--paper-exact-images", type=int, default=200, help="exact rows for the paper's check"
    )
    ap.add_argument("--paper-n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--exact-images", type=int, default=None, help="exact rows (default 2000)")
    ap.add_argument("--mem-images", type=int, default=None, help="peers' images in --child")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--no-exact", action="store_true", help="skip the exactness checks")
    ap.add_argument("--torch-variant", choices=TORCH_VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.images is None:
        args.images = 2000 if args.quick else N_TRAIN
    if args.exact_images is None:
        args.exact_images = 300 if args.quick else 2000
    if args.mem_images is None:
        args.mem_images = min(args.images, 4000)
    if args.threads is None:
        args.threads = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
    if args.quick:
        args.peer_budget = min(args.peer_budget, 5.0)
        args.paper_budget = min(args.paper_budget, 5.0)
        args.paper_exact_images = min(args.paper_exact_images, 100)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        child_main(args)
        return
    kernels = [int(v) for v in args.kernels.split(",") if v.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or "firstlayer" not in methods:
        raise SystemExit(f"--methods: need firstlayer and names from {METHODS}, got {methods}")

    t_load = time.perf_counter()
    x = load_input(args.images)
    t_load = time.perf_counter() - t_load
    xe = None if args.no_exact else load_exact(args.exact_images)
    result: dict[str, Any] = {
        "benchmark": "patch second moments (sum of p p^T over all valid 3 x k x k patches)",
        "machine": machine_info(args.threads),
        "input": {
            "source": "cifar10_jpeg_q75.npz, training images decoded with Pillow",
            "images": len(x),
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "bytes": int(x.nbytes),
            "load_seconds": t_load,
            "exact_subset_images": 0 if xe is None else len(xe),
        },
        "methods": {m: DESCRIPTIONS[m] for m in methods},
        "settings": {
            "repeats": args.repeats,
            "repeat_only_below_s": args.repeat_below,
            "peer_time_budget_s": args.peer_budget,
            "peer_batch_cap_mb": args.batch_mb,
            "paper_subset": args.paper_subset,
            "paper_max_patch_matrix_gb": args.paper_max_gb,
            "paper_time_budget_s": args.paper_budget,
            "paper_exact_images": args.paper_exact_images,
            "memory_child_peer_images": args.mem_images,
            "notes": [
                "Timings run in one process on the same array; the best of the repeats counts.",
                "Batched peers are time-boxed: they stop after the batch that crosses "
                "peer_time_budget_s; patches/s are measured on the images they processed "
                "(timing.subset = true).",
                "The paper's method holds all patches of its subset at once: 10,000 images, "
                "fewer where P would pass paper_max_patch_matrix_gb or the run "
                "paper_time_budget_s (estimated by a pilot run; its cost is linear in the "
                "number of patches); see timing.paper_plan and timing.images_used.",
                "Peak memory: fresh subprocess per method and k (imports, then the input "
                "loaded, then one run). On Linux: VmHWM after the run minus VmRSS after loading, "
                "with VmHWM reset (clear_refs) after loading; ru_maxrss is recorded too but on "
                "Linux a child inherits its parent's ru_maxrss across fork+exec, so it can "
                "hide the run's peak. The batched peers process memory_child_peer_images "
                "images there (their peak is per batch, set by peer_batch_cap_mb); the paper's "
                "method processes the same images as its timed run.",
            ],
        },
        "kernels": {},
    }

    for k in kernels:
        entry: dict[str, Any] = {"p": 3 * k * k, "patches_per_image": n_patches(1, k)}
        rows: dict[str, Any] = {}
        for meth in methods:
            timing, _res = time_method(meth, x, k, args)
            rows[meth] = {"timing": timing}
            print(
                f"k={k:<2} {meth:<11} {fmt_rate(timing['patches_per_second'])} patches/s "
                f"({timing['images_used']} images, best {timing['seconds_best']:.3f}s)",
                file=sys.stderr,
                flush=True,
            )
            if not args.no_memory:
                rows[meth]["memory"] = measure_memory(meth, k, args, timing)
        fl_rate = rows["firstlayer"]["timing"]["patches_per_second"]
        for meth in methods:
            if meth != "firstlayer":
                rows[meth]["firstlayer_speedup"] = (
                    fl_rate / rows[meth]["timing"]["patches_per_second"]
                )
        peers = [m for m in methods if m != "firstlayer"]
        if peers:
            fastest = max(peers, key=lambda m: rows[m]["timing"]["patches_per_second"])
            entry["fastest_peer"] = fastest
            entry["fastest_peer_speedup"] = rows[fastest]["firstlayer_speedup"]
        entry["methods"] = rows
        if xe is not None:
            variants = {
                m: r["timing"]["variant"] for m, r in rows.items() if "variant" in r["timing"]
            }
            entry["exactness"] = check_exactness(k, xe, args, methods, variants)
        result["kernels"][str(k)] = entry

    growth: dict[str, list[dict[str, Any]]] = {}
    for meth in methods:
        for k in kernels:
            ns = 1e9 / result["kernels"][str(k)]["methods"][meth]["timing"]["patches_per_second"]
            growth.setdefault(meth, []).append(
                {
                    "k": k,
                    "ns_per_patch": ns,
                    "ns_per_patch_over_2k1_sq": ns / (2 * k - 1) ** 2,
                    "ns_per_patch_over_k4": ns / k**4,
                }
            )
    result["cost_growth"] = growth
    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["goals"] = goals(result)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
