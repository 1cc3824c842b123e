"""Training benchmarks of ``firstlayer.train`` (issue 5).

``cpu``: the small CNN on 10,000 CIFAR-10 training images (the shared JPEG set, decoded), once
with true and once with random labels; prints each run's time and the Pearson correlations of
the first layers' energy profiles (PCA basis of the normalised patches, initialisation
subtracted) between the two runs and with the initialisations' profiles.

``gpu``: epochs of VGG11-bn on CIFAR-10 (50,000 images, batch 256, plain SGD lr 0.01) with
``firstlayer.train`` against the paper's own loop (a torchvision-style ``Dataset`` of PIL images,
``ToTensor`` + ``Normalize``, ``DataLoader(num_workers=3, shuffle=True, drop_last=True)``, SGD) on
the same GPU in one process; prints seconds per epoch of each and the device name.

Both write a JSON summary with ``--json PATH``. The data come from ``$FIRSTLAYER_DATA`` or
``<repo>/../shared/data`` (``cifar10_jpeg_q75.npz``).

Usage::

    python benches/bench_train.py cpu --n 10000 --epochs 4 --out /tmp/bench_cpu
    python benches/bench_train.py gpu --epochs 3 --out /tmp/bench_gpu
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from _cifar import data_dir

REPO = Path(__file__).resolve().parent.parent


def cifar_jpeg_npz(n: int, cache: Path, *, start: int = 0) -> Path:
    """Decode images ``start .. start+n`` of the JPEG set into ``cache/cifar10_jpeg_<..>.npz``."""
    from PIL import Image

    out = cache / f"cifar10_jpeg_{start}_{n}.npz"
    if out.is_file():
        return out
    with np.load(data_dir() / "cifar10_jpeg_q75.npz", allow_pickle=False) as f:
        data, offsets, labels = f["jpeg"], f["offsets"], f["labels"]
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i in range(n):
        g = start + i
        img = Image.open(io.BytesIO(data[offsets[g] : offsets[g + 1]].tobytes())).convert("RGB")
        images[i] = np.asarray(img).transpose(2, 0, 1)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=images, labels=labels[start : start + n].astype(np.int64))
    return out


def bench_cpu(args: argparse.Namespace) -> dict[str, object]:
    import firstlayer
    from firstlayer.profile import energy_profile, profile_correlation
    from firstlayer.train import train

    out = Path(args.out)
    train_npz = cifar_jpeg_npz(args.n, out / "data")
    test_npz = cifar_jpeg_npz(2000, out / "data", start=50_000)
    runs = {}
    for mode in ("true", "random"):
        res = train(
            out_dir=out / mode, arch=args.arch, dataset=str(train_npz), test_dataset=str(test_npz),
            labels=mode, epochs=args.epochs, seed=args.seed, threads=args.threads,
            overwrite=True, lr=args.lr, batch_size=args.batch_size,
        )  # fmt: skip
        runs[mode] = res
    x = np.load(train_npz)["images"]
    d = runs["true"].config["derived"]
    stats = firstlayer.patch_stats(x, kernel_size=3).normalized(d["mean"], d["std"])
    prof = {
        m: energy_profile(r.first_layer_final, stats, init=r.first_layer_init)
        for m, r in runs.items()
    }
    init = {m: energy_profile(r.first_layer_init, stats) for m, r in runs.items()}
    summary = {
        "arch": args.arch,
        "n_images": args.n,
        "epochs": args.epochs,
        "threads": args.threads,
        "seconds": {m: sum(e["epoch_seconds"] for e in r.metrics) for m, r in runs.items()},
        "wall_seconds": {m: r.seconds for m, r in runs.items()},
        "final_metrics": {m: r.metrics[-1] for m, r in runs.items()},
        "r_true_vs_random": profile_correlation(prof["true"], prof["random"]),
        "r_true_vs_init": profile_correlation(prof["true"], init["true"]),
        "r_random_vs_init": profile_correlation(prof["random"], init["random"]),
        "profiles": {m: p.tolist() for m, p in prof.items()},
    }
    # trajectories: correlation between the two runs at every common snapshot
    from firstlayer.train import RunDir

    s_t, w_t = RunDir(out / "true").snapshots()
    s_r, w_r = RunDir(out / "random").snapshots()
    traj = []
    for i, s in enumerate(s_t):
        if s == 0 or s not in s_r:
            continue
        j = int(np.flatnonzero(s_r == s)[0])
        pt = energy_profile(w_t[i], stats, init=runs["true"].first_layer_init)
        pr = energy_profile(w_r[j], stats, init=runs["random"].first_layer_init)
        traj.append((int(s), profile_correlation(pt, pr)))
    summary["r_true_vs_random_by_step"] = traj
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["cpu", "gpu"])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    t0 = time.perf_counter()
    summary = bench_cpu(args) if args.mode == "cpu" else bench_gpu(args)
    summary["total_seconds"] = time.perf_counter() - t0
    text = json.dumps({k: v for k, v in summary.items() if k != "profiles"}, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


class _PaperCIFAR:
    """What the paper's notebooks trained on: torchvision's ``CIFAR10`` item logic (uint8 HWC
    array -> PIL image -> transform), here over the decoded JPEG set since the original tarball
    is not available offline."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, transform: object) -> None:
        self.data = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[object, int]:
        from PIL import Image

        img = self.transform(Image.fromarray(self.data[i]))  # type: ignore[operator]
        return img, self.targets[i]


def _paper_epochs(npz: Path, epochs: int, seed: int) -> list[float]:
    """The paper's ``train_model`` loop; seconds of each epoch."""
    import torch
    import torchvision.transforms as T

    from firstlayer.constants import CIFAR10_MEAN, CIFAR10_STD
    from firstlayer.train import build_model

    torch.manual_seed(seed)
    with np.load(npz) as f:
        ds = _PaperCIFAR(f["images"], f["labels"], T.Compose([
            T.ToTensor(),
            T.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD),
        ]))  # fmt: skip
    loader = torch.utils.data.DataLoader(
        ds, batch_size=256, shuffle=True, drop_last=True, num_workers=3
    )
    model = build_model("vgg11_bn", num_classes=10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.train()
        for x, y in loader:
            x, y = x.cuda(), y.cuda()
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def bench_gpu(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from firstlayer.train import train

    if not torch.cuda.is_available():
        raise SystemExit("gpu benchmark: no CUDA device visible")
    out = Path(args.out)
    npz = cifar_jpeg_npz(50_000, out / "data")
    device = torch.cuda.get_device_name(0)
    result: dict[str, object] = {"device": device, "epochs": args.epochs, "batch_size": 256}
    paper = _paper_epochs(npz, args.epochs, args.seed)
    result["paper_loop_epoch_seconds"] = paper
    for name, opts in (("firstlayer_fp32", {"amp": "none"}), ("firstlayer_bf16", {"amp": "bf16"})):
        res = train(
            out_dir=out / name, arch="vgg11_bn", dataset=str(npz), test_dataset="none",
            epochs=args.epochs, seed=args.seed, overwrite=True, deterministic=False,
            snapshots=0, **opts,
        )  # fmt: skip
        result[f"{name}_epoch_seconds"] = [r["epoch_seconds"] for r in res.metrics]
    # the first epoch carries start-up costs (cuDNN autotuning, worker start): compare the rest
    base = float(np.median(paper[1:] or paper))
    for name in ("firstlayer_fp32", "firstlayer_bf16"):
        secs = result[f"{name}_epoch_seconds"]
        assert isinstance(secs, list)
        result[f"{name}_speedup"] = base / float(np.median(secs[1:] or secs))
    return result


if __name__ == "__main__":
    main()
