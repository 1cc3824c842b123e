"""Benchmark: firstlayer.theory.fit against the paper's Python loop over 19,960 step counts.

Same data for both: the energy profile of a real pretrained first layer in the PCA basis of exact
CIFAR-10 patches (ImageNet-normalised, as the network sees its input), and the paper's step size
``a_i = 1e-7 * S_i^2 / (2 * n_images)``. Writes ``bench-results/theory_fit.json``.

Run: ``python benches/bench_theory_fit.py [--repeat 7]`` (data from ``$FIRSTLAYER_DATA`` or
``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import firstlayer
from _cifar import data_dir
from firstlayer.constants import IMAGENET_MEAN, IMAGENET_STD
from firstlayer.profile import energy_profile
from firstlayer.theory import fit, paper_fit_loop

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21, help="timed calls of fit (median)")
    parser.add_argument("--paper-repeat", type=int, default=1, help="timed paper loops")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "theory_fit.json")
    args = parser.parse_args()

    data = data_dir()
    with np.load(data / "cifar10_exact_subset.npz", allow_pickle=False) as d:
        images = d["data"].reshape(-1, 3, 32, 32)
    with np.load(data / "pretrained_first_layers.npz", allow_pickle=False) as d:
        banks = {k: d[k] for k in ("squeezenet1_1", "efficientnet_lite0", "resnet18")}

    rows = []
    for name, weights in banks.items():
        k = weights.shape[-1]
        # 7x7 patches: 2,000 images keep the (exact) statistics quick; the fit does not care.
        subset = images if k == 3 else images[:2000]
        stats = firstlayer.patch_stats(subset, k).normalized(IMAGENET_MEAN, IMAGENET_STD)
        profile = energy_profile(weights, stats)
        s2 = stats.count * stats.pca().eigenvalues  # torch.pca_lowrank's S^2 (centred patches)
        eta = 1e-7 * stats.count / (2 * stats.n_images)  # the same a_i as the paper's loop
        paper_s, (_, paper_r, paper_t) = _timed(
            lambda p=profile, s=s2, n=stats.n_images: paper_fit_loop(p, np.sqrt(s), s, n),
            args.paper_repeat,
        )
        # Both get the same precomputed spectrum: the loop its S_i, fit the per-patch variances.
        ev = stats.pca().eigenvalues
        fit_s, res = _timed(lambda p=profile, v=ev, e=eta: fit(p, v, eta=e), args.repeat)
        rows.append(
            {
                "network": name,
                "dim": int(profile.size),
                "images": int(stats.n_images),
                "paper_loop_s": paper_s,
                "paper_candidates": len(range(10_000, 5_000_000, 250)),
                "paper_t": int(paper_t),
                "paper_correlation": float(paper_r),
                "fit_s": fit_s,
                "fit_t": float(res.t),
                "fit_correlation": float(res.correlation),
                "speedup": paper_s / fit_s,
                "correlation_gain": float(res.correlation - paper_r),
            }
        )

    report = {
        "benchmark": "theory_fit",
        "peer": "paper_fit_loop (Python loop, np.corrcoef per step count, 19,960 candidates)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "numpy": np.__version__,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(
        f"{'network':<20}{'p':>5}{'paper s':>10}{'fit ms':>9}{'speedup':>9}"
        f"{'r paper':>10}{'r fit':>10}"
    )
    for r in rows:
        print(
            f"{r['network']:<20}{r['dim']:>5}{r['paper_loop_s']:>10.3f}{r['fit_s'] * 1e3:>9.2f}"
            f"{r['speedup']:>8.0f}x{r['paper_correlation']:>10.6f}{r['fit_correlation']:>10.6f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
