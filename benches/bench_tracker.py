"""What ``firstlayer.track`` costs a training step: ResNet-18 on the CPU, with and without it.

The model is the paper's CIFAR-style ResNet-18 (``firstlayer.train.build_model("resnet18")``),
trained with plain SGD on batches of the bundled CIFAR-10 sample (offline). Steps are timed in
alternating blocks, plain loop then tracked loop, so that drift in the machine's speed hits both
alike; the overhead is the difference of the median step times. Two tracked settings:

* ``default``: ``track(model, out_dir, optimizer=opt)``, the log-spaced snapshots a user gets;
* ``every_step``: a snapshot after every step, the worst case (one host copy of the layer on the
  step, the ``.npy`` written by the background thread).

Because a 1% difference is close to the noise of two medians, the time spent inside the
tracker's step hook is also measured directly (``perf_counter`` around it, every step) and
reported per step and as a share of the plain step.

Usage::

    python benches/bench_tracker.py                      # 4 blocks of 20 steps, batch 64
    python benches/bench_tracker.py --quick              # smoke test: seconds
    python benches/bench_tracker.py --json bench-results/tracker.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    import firstlayer
    from firstlayer.train import build_model
    from firstlayer.train.tracker import Tracker

    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, _ = firstlayer.load_sample("test")
    x_all = torch.from_numpy(images).float().div_(255).contiguous(memory_format=torch.channels_last)
    y_all = torch.from_numpy(labels)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3).to(
        memory_format=torch.channels_last
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    n = len(x_all)
    cursor = [0]

    def one_step() -> float:
        i = cursor[0] % (n - args.batch)
        cursor[0] += args.batch
        xb, yb = x_all[i : i + args.batch], y_all[i : i + args.batch]
        t = time.perf_counter()
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    # time inside the tracker's hook, measured on every step
    inside: dict[str, list[float]] = {"default": [], "every_step": []}
    original = Tracker._advance

    def timed(self: Tracker, step: int | None) -> None:
        t = time.perf_counter()
        original(self, step)
        inside[self._bench_mode].append(time.perf_counter() - t)  # type: ignore[attr-defined]

    Tracker._advance = timed  # type: ignore[method-assign]
    times: dict[str, list[float]] = {"plain": [], "default": [], "every_step": []}
    snapshots: dict[str, int] = {}
    for _ in range(args.warmup):
        one_step()
    with tempfile.TemporaryDirectory() as tmp:
        for block in range(args.blocks):
            times["plain"] += [one_step() for _ in range(args.steps)]
            for mode in ("default", "every_step"):
                extra: dict[str, Any] = {}
                if mode == "every_step":
                    extra["snapshots"] = list(range(args.steps + 1))
                tracker = firstlayer.track(
                    model, Path(tmp) / f"{mode}-{block}", optimizer=opt, input_size=32, **extra
                )
                tracker._bench_mode = mode  # type: ignore[attr-defined]
                times[mode] += [one_step() for _ in range(args.steps)]
                tracker.close()
                snapshots[mode] = len(tracker.snapshot_steps)
    Tracker._advance = original  # type: ignore[method-assign]

    plain = statistics.median(times["plain"])
    out: dict[str, Any] = {
        "model": "resnet18 (CIFAR-style, firstlayer.train.build_model)",
        "batch": args.batch,
        "blocks": args.blocks,
        "steps_per_block": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "plain_step_ms": 1e3 * plain,
    }
    for mode in ("default", "every_step"):
        med = statistics.median(times[mode])
        hook = statistics.mean(inside[mode])
        out[mode] = {
            "step_ms": 1e3 * med,
            "overhead_of_medians": (med - plain) / plain,
            "hook_us_per_step": 1e6 * hook,
            "hook_share_of_step": hook / plain,
            "snapshots_per_block": snapshots[mode],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps per block")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args()
    if args.quick:
        args.batch, args.steps, args.blocks, args.warmup = 8, 3, 1, 1
    summary = run(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
