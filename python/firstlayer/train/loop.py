"""The training loop: data on the device, seeded batch order, atomic checkpoints, exact resume, DDP.

Everything random is a function of the seed and a counter, never of hidden state: the batch order
of epoch ``e`` comes from ``(seed, e)``, the augmentation of step ``s`` from ``(seed, s)``, the
random labels from ``label_seed``. A run resumed from a checkpoint therefore replays the exact
batches of an uninterrupted one; with ``deterministic=True`` on the CPU the weights come out
bit-identical. Under ``torchrun`` each of the ``W`` processes takes its ``1/W`` slice of every
global batch, and gradients are averaged by DDP, which is the same update as one process with the
same global batch (batch-norm statistics are per process, as in any DDP run).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.deterministic
from torch import nn

from .config import TrainConfig
from .data import Dataset, channel_stats, load_dataset, make_labels, test_name
from .models import build_model, first_conv
from .runs import CHECKPOINT, CONFIG, FINAL_MODEL, RESULT, RunDir, dumps

__all__ = ["TrainResult", "run", "train", "whitening_filters"]

_CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    out : pathlib.Path
        The run directory.
    config : dict
        The stored ``config.json`` (options and derived values).
    metrics : list of dict
        One record per epoch (``metrics.jsonl``).
    first_layer_init, first_layer_final : numpy.ndarray
        float32 ``(F, C, k, k)``.
    seconds : float
        Wall time of this call.
    """

    out: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    first_layer_init: np.ndarray
    first_layer_final: np.ndarray
    seconds: float


# ----------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    world: int
    rank: int
    local_rank: int
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(1, 0, 0, False)
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        owns = True
    return _Dist(
        dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), owns
    )


def _on_main(d: _Dist, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its exception) to every rank."""
    if d.world == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if d.main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("err", exc)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


def _all_reduce(d: _Dist, t: torch.Tensor) -> torch.Tensor:
    if d.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


# ----------------------------------------------------------------------------------------------
# Seeds, schedules, snapshots
# ----------------------------------------------------------------------------------------------


def _sub_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_sub_seed(seed, epoch, 0x0E))
    return torch.randperm(n, generator=g)


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return cfg.lr


def _snapshot_steps(spec: Any, total: int) -> set[int]:
    if isinstance(spec, int):
        if spec <= 0:
            return set()
        grid = np.unique(np.round(np.geomspace(1, max(total, 1), spec)).astype(np.int64))
        return {0, *(int(s) for s in grid if s <= total)}
    return {int(s) for s in spec if s <= total}


# ----------------------------------------------------------------------------------------------
# Frozen whitening filters
# ----------------------------------------------------------------------------------------------


def whitening_filters(
    images: np.ndarray,
    *,
    n_filters: int,
    kernel_size: int,
    mean: list[float],
    std: list[float],
    eps: float,
    seed: int,
) -> np.ndarray:
    """A bank of ``n_filters`` filters that whitens the normalised patches of ``images``.

    The ZCA matrix ``Z`` (``p x p``, ``p = C k^2``) of the patches as the network sees them
    (``(x/255 - mean)/std``) is mixed by a seeded matrix ``Q`` with orthonormal columns
    (``n_filters >= p``) or rows (``n_filters < p``): the responses ``Q Z p`` have covariance
    ``Q Q^T``, white within the span of the bank.

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8`` ``(N, C, H, W)``.
    n_filters, kernel_size : int
    mean, std : list of float
        Per-channel input normalisation.
    eps : float
        Added to the eigenvalues before the inverse square root.
    seed : int

    Returns
    -------
    numpy.ndarray
        float32 ``(n_filters, C, k, k)``.
    """
    from firstlayer import patch_stats

    stats = patch_stats(images, kernel_size=kernel_size, layout="NCHW")
    z = stats.normalized(mean, std).zca(eps)
    p = z.shape[0]
    rng = np.random.Generator(np.random.PCG64(_sub_seed(seed, 0x3A)))
    if n_filters >= p:
        q, _ = np.linalg.qr(rng.standard_normal((n_filters, p)))
    else:
        qt, _ = np.linalg.qr(rng.standard_normal((p, n_filters)))
        q = qt.T
    w = q @ z
    c = images.shape[1]
    return w.reshape(n_filters, c, kernel_size, kernel_size).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(**kwargs: Any) -> TrainResult:
    """Train a network and record its first layer in a run directory.

    All options are keyword arguments (the fields of :class:`TrainConfig`); ``firstlayer train``
    takes the same ones as ``--options``. Every option is checked before any data is read.

    Parameters
    ----------
    out : str or path-like
        Run directory (see :mod:`firstlayer.train.runs` for its files). Required.
    arch : str
        ``small_cnn`` (default), ``linear_cnn``, ``vgg11_bn``, ``vgg13_bn``, ``vgg16_bn``,
        ``resnet20``, ``resnet32``, ``resnet56``, ``resnet18`` (CIFAR-style), or
        ``"torchvision:<name>"``.
    dataset : str, path or object
        Anything :func:`firstlayer.sources.open_source` reads: ``"sample"`` (default),
        ``"cifar10"``, ``"cifar100"``, ``"mnist"``, a folder, a ``.npy``/``.npz`` file, a torch
        dataset. Images must share one size.
    subset, test_subset : int, optional
        Use the first N training / held-out images.
    test_dataset : str, path or None
        Held-out set for test loss and accuracy (true labels). ``"auto"``: the dataset's test
        split (``cifar10`` -> ``cifar10-test``; ``sample`` -> ``sample-train``); ``"none"``.
    root, download
        Where named datasets are found, and whether to download missing ones.
    labels : {"true", "random", "uniform"}
        ``random``: a fixed permutation of the labels (the paper's); ``uniform``: uniform draws.
    corrupt : float
        Fraction of examples whose label is randomised (default 1.0 = all).
    label_seed : int, optional
        Seed of the random labels (default: ``seed``). The labels are stored in the run.
    seed : int
        Seed of the initialisation, batch order and augmentation.
    width : float
        Channel-width multiplier; ``first_width`` sets the number of first-layer filters alone.
    first_width, kernel_size : int, optional
        First-layer filters and kernel size (firstlayer's architectures).
    freeze_first : {"none", "random", "whitening"}
        Freeze the first layer at its random initialisation or at ZCA whitening filters of the
        normalised training patches (``whitening_eps`` added to the eigenvalues).
    whitening_eps : float
    epochs, batch_size, lr : int, int, float
        Defaults 1, 256 and 0.01 (the paper's code: plain SGD, no momentum or weight decay).
    momentum, nesterov, weight_decay
        SGD options.
    schedule : {"constant", "cosine", "step"}
        ``step`` multiplies the rate by ``gamma`` at each epoch in ``milestones``.
    milestones, gamma
    augment : bool
        Random crop (padding 4) and horizontal flip, drawn on the device.
    loss : {"cross_entropy", "mse"}
        ``mse`` on one-hot targets (the theory's loss).
    mean, std : sequence of float, optional
        Input normalisation ``(x/255 - mean)/std``; default: the training images' exact
        per-channel values (stored in ``config.json``).
    drop_last : bool
        Drop the last incomplete batch (default, as the paper's loader).
    snapshots : int or sequence of int
        A count of log-spaced steps (default 16, step 0 included) or the steps at which the
        first layer is saved.
    checkpoint_every : int
        Steps between checkpoints; 0 (default): at the end of every epoch.
    eval_batch_size : int
    device : {"auto", "cpu", "cuda"}
    amp : {"none", "bf16"}
        bf16 autocast (CUDA and CPU).
    channels_last : bool
        Channels-last memory format (default; faster on CPU and GPU).
    data_on_device : {"auto", True, False}
        Keep the whole uint8 dataset on the device (``auto``: when it takes under half of the
        free GPU memory).
    threads : int, optional
        CPU threads for this run.
    deterministic : bool
        Deterministic algorithms (default): a resumed CPU run is bit-identical.
    resume, overwrite : bool
        Continue the run in ``out`` (options must match), or delete it first.
    quiet, log_json : bool
        Print nothing, or one JSON record per epoch instead of a progress line.

    Returns
    -------
    TrainResult

    Raises
    ------
    TypeError, ValueError
        A bad option, naming it, what was expected and what came.
    FileExistsError
        ``out`` holds a run and neither ``resume`` nor ``overwrite`` was given.
    firstlayer.sources.DatasetNotFoundError
        A named dataset is nowhere to be found.

    Notes
    -----
    Under ``torchrun`` the processes share each global batch (``batch_size`` must be a
    multiple of the number of processes) and rank 0 writes the run directory.

    Examples
    --------
    >>> res = train(out="runs/r", dataset="sample", labels="random", batch_size=64,
    ...             quiet=True)  # doctest: +SKIP
    >>> res.first_layer_final.shape  # doctest: +SKIP
    (32, 3, 3, 3)
    """
    unknown = sorted(set(kwargs) - set(TrainConfig.names()))
    if unknown:
        import difflib

        names = TrainConfig.names()
        hints = []
        for u in unknown:
            close = difflib.get_close_matches(u, names, 1)
            hints.append(f"{u} (did you mean {close[0]}?)" if close else u)
        msg = f"train: unexpected option(s) {', '.join(hints)}; expected {', '.join(names)}"
        raise TypeError(msg)
    if "out" not in kwargs:
        msg = "out: expected a run directory, got nothing (pass out=...)"
        raise TypeError(msg)
    cfg = TrainConfig(**kwargs)
    cfg.validate()
    return run(cfg)


def _device(cfg: TrainConfig, d_local: int) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        msg = "device: expected a visible CUDA device with device='cuda', found none"
        raise ValueError(msg)
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(d_local)
        return torch.device("cuda", d_local)
    return torch.device("cpu")


class _Printer:
    def __init__(self, cfg: TrainConfig, main: bool) -> None:
        self.on = main and not cfg.quiet
        self.json = cfg.log_json

    def info(self, text: str) -> None:
        if self.on and not self.json:
            print(text, file=sys.stdout, flush=True)

    def record(self, rec: dict[str, Any], epochs: int) -> None:
        if not self.on:
            return
        if self.json:
            print(dumps(rec), file=sys.stdout, flush=True)
            return
        test = (
            f"  test loss {rec['test_loss']:.4f} acc {rec['test_acc']:.3f}"
            if rec.get("test_acc") is not None
            else ""
        )
        print(
            f"epoch {rec['epoch']}/{epochs}  step {rec['step']}  loss {rec['train_loss']:.4f}  "
            f"acc {rec['train_acc']:.3f}{test}  lr {rec['lr']:.4g}  "
            f"{rec['epoch_seconds']:.1f}s ({rec['images_per_second']:.0f} img/s)",
            file=sys.stdout,
            flush=True,
        )


def _compare_config(stored: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    now = cfg.to_dict()
    bad = []
    for name in TrainConfig.result_names():
        a = stored.get("options", {}).get(name)
        b = now[name]
        if dumps(a) != dumps(b):
            bad.append(f"{name}: stored {a!r}, now {b!r}")
    if bad:
        msg = f"resume: the options differ from the run in {str(out)!r}: " + "; ".join(bad)
        raise ValueError(msg)


def _load_data(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    train_set = load_dataset(
        cfg.dataset, subset=cfg.subset, root=cfg.root, download=cfg.download, what="dataset"
    )
    test_src: Any = cfg.test_dataset
    if isinstance(test_src, str) and test_src.lower() == "auto":
        test_src = test_name(cfg.dataset)
    elif isinstance(test_src, str) and test_src.lower() == "none":
        test_src = None
    test_set = None
    if test_src is not None:
        test_set = load_dataset(
            test_src, subset=cfg.test_subset, root=cfg.root, download=cfg.download,
            what="test_dataset",
        )  # fmt: skip
        if test_set.images.shape[1:] != train_set.images.shape[1:]:
            msg = (
                f"test_dataset: expected images of shape {train_set.images.shape[1:]} like the "
                f"training set, got {test_set.images.shape[1:]}"
            )
            raise ValueError(msg)
    return train_set, test_set


def _state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def run(cfg: TrainConfig) -> TrainResult:
    """Run a validated configuration (``train(**kwargs)`` validates and calls this)."""
    t_start = time.perf_counter()
    device_kind = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    dist_ = _dist_setup(device_kind)
    try:
        return _run(cfg, dist_, t_start)
    finally:
        if dist_.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(cfg: TrainConfig, d: _Dist, t_start: float) -> TrainResult:
    device = _device(cfg, d.local_rank)
    runs = RunDir(cfg.out)
    printer = _Printer(cfg, d.main)
    if cfg.batch_size % d.world:
        msg = (
            f"batch_size: expected a multiple of the number of processes ({d.world}), got "
            f"{cfg.batch_size}"
        )
        raise ValueError(msg)
    resuming = _on_main(d, lambda: runs.prepare(resume=cfg.resume, overwrite=cfg.overwrite))
    stored: dict[str, Any] | None = None
    if resuming:
        stored = runs.read_json(CONFIG)
        _compare_config(stored, cfg, runs.path)
        if runs.complete():
            printer.info(f"{runs.path}: run already complete")
            return _result(runs, t_start)

    # ---- data, labels, normalisation: every check before any training ----------------------
    train_set, test_set = _load_data(cfg)
    images, true_labels = train_set.images, train_set.labels
    n, c, h, w = images.shape
    n_classes = max(
        int(true_labels.max()) + 1,
        train_set.n_classes or 0,
        0 if test_set is None else int(test_set.labels.max()) + 1,
    )
    label_seed = cfg.seed if cfg.label_seed is None else cfg.label_seed
    labels = make_labels(
        true_labels, cfg.labels, fraction=cfg.corrupt, seed=label_seed, n_classes=n_classes
    )
    if cfg.mean is not None or cfg.std is not None:
        if cfg.mean is None or cfg.std is None:
            msg = "mean: expected mean and std together, got only one of them"
            raise ValueError(msg)
        mean, std = list(cfg.mean), list(cfg.std)
        for name, v in (("mean", mean), ("std", std)):
            if len(v) != c:
                msg = f"{name}: expected {c} values (one per channel), got {len(v)}"
                raise ValueError(msg)
    else:
        mean, std = channel_stats(images)
    steps_per_epoch = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
    if steps_per_epoch == 0:
        msg = (
            f"batch_size: expected at most the number of training images ({n}) with "
            f"drop_last=True, got {cfg.batch_size}"
        )
        raise ValueError(msg)
    if not cfg.drop_last and n % cfg.batch_size and d.world > 1:
        msg = "drop_last: expected True when training with several processes, got False"
        raise ValueError(msg)
    total_steps = steps_per_epoch * cfg.epochs
    snap_steps = _snapshot_steps(cfg.snapshots, total_steps)

    # ---- model ------------------------------------------------------------------------------
    torch.manual_seed(_sub_seed(cfg.seed, 0x1A))
    model = build_model(
        cfg.arch,
        num_classes=n_classes,
        in_channels=c,
        width=cfg.width,
        first_width=cfg.first_width,
        kernel_size=cfg.kernel_size,
    )
    conv1 = first_conv(model, (c, h, w))
    if cfg.freeze_first == "whitening":
        k = int(conv1.kernel_size[0])
        wf = whitening_filters(
            images, n_filters=conv1.out_channels, kernel_size=k, mean=mean, std=std,
            eps=cfg.whitening_eps, seed=cfg.seed,
        )  # fmt: skip
        ks = tuple(conv1.kernel_size)
        if conv1.in_channels != c or conv1.groups != 1 or ks[0] != ks[1]:
            msg = f"freeze_first: whitening needs a plain square first convolution, got {conv1}"
            raise ValueError(msg)
        with torch.no_grad():
            conv1.weight.copy_(torch.from_numpy(wf))
            if conv1.bias is not None:
                conv1.bias.zero_()
    if cfg.freeze_first != "none":
        for p in conv1.parameters():
            p.requires_grad_(False)
    init_first = conv1.weight.detach().cpu().numpy().astype(np.float32)

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )  # fmt: skip

    derived = {
        "n_train": n,
        "n_test": 0 if test_set is None else len(test_set.images),
        "image_shape": [c, h, w],
        "n_classes": n_classes,
        "mean": mean,
        "std": std,
        "label_seed": label_seed,
        "labels_changed": int((labels != true_labels).sum()),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "snapshot_steps": sorted(snap_steps),
        "first_layer": {
            "module": next(name for name, m in model.named_modules() if m is conv1),
            "shape": list(init_first.shape),
        },
        "dataset_name": train_set.name,
        "dataset_fingerprint": train_set.fingerprint,
        "test_dataset_name": None if test_set is None else test_set.name,
        "world_size": d.world,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }

    # ---- fresh start or resume --------------------------------------------------------------
    metrics: list[dict[str, Any]] = []
    step = 0
    epoch = 0
    batch_in_epoch = 0
    acc = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    ckpt = runs.read_checkpoint(device) if resuming else None
    if resuming:
        assert stored is not None
        if stored.get("derived", {}).get("dataset_fingerprint") != train_set.fingerprint:
            msg = (
                f"resume: the dataset changed since the run in {str(runs.path)!r} started "
                f"({stored['derived'].get('dataset_fingerprint')!r} -> {train_set.fingerprint!r})"
            )
            raise ValueError(msg)
        stored_labels = np.load(runs / "labels_train.npy", allow_pickle=False)
        if not np.array_equal(stored_labels, labels):
            msg = "resume: the stored training labels differ from the regenerated ones"
            raise ValueError(msg)
    if ckpt is not None:
        if ckpt.get("version") != _CHECKPOINT_VERSION:
            got = ckpt.get("version")
            msg = f"resume: unknown checkpoint version {got!r} in {runs / CHECKPOINT}"
            raise ValueError(msg)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        acc = dict(ckpt["accumulators"])
        metrics = runs.read_metrics()[: ckpt["n_metrics"]]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu(), device)
        printer.info(f"{runs.path}: resuming at epoch {epoch + 1}, step {step}")
    elif d.main:
        runs.write_npy("labels_train.npy", labels)
        runs.write_npy("labels_true.npy", true_labels)
        runs.write_npy("first_layer_init.npy", init_first)
        if 0 in snap_steps:
            runs.write_snapshot(0, init_first)
        runs.write_metrics([])
        runs.write_json(CONFIG, {"options": cfg.to_dict(), "derived": derived})
    if ckpt is None:  # dropout and other global-RNG users (torchvision models)
        torch.manual_seed(_sub_seed(cfg.seed, 0x2B))

    # ---- data on the device -----------------------------------------------------------------
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)
    on_device = cfg.data_on_device
    if on_device == "auto":
        on_device = device.type == "cpu" or _fits(x_all, device)
    if on_device:
        x_all, y_all = x_all.to(device), y_all.to(device)
    elif device.type == "cuda":
        x_all = x_all.pin_memory()
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, c, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
    shift = shift.view(1, c, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float() * scale + shift
        return x.contiguous(memory_format=memory_format)

    test_x = test_y = None
    if test_set is not None:
        test_x = torch.from_numpy(test_set.images)
        test_y = torch.from_numpy(test_set.labels)
        if on_device:
            test_x, test_y = test_x.to(device), test_y.to(device)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if cfg.loss == "mse":
            return F.mse_loss(out, F.one_hot(y, n_classes).float())
        return F.cross_entropy(out, y)

    def evaluate() -> tuple[float | None, float | None]:
        if test_x is None or test_y is None:
            return None, None
        model.eval()
        m = len(test_x)
        lo, hi = m * d.rank // d.world, m * (d.rank + 1) // d.world
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        with torch.no_grad(), autocast:
            for i in range(lo, hi, cfg.eval_batch_size):
                j = min(i + cfg.eval_batch_size, hi)
                out = model(prepare(test_x[i:j])).float()
                yy = test_y[i:j].to(device)
                sums[0] += F.cross_entropy(out, yy, reduction="sum").double()
                sums[1] += (out.argmax(1) == yy).sum()
                sums[2] += j - i
        model.train()
        _all_reduce(d, sums)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def save_checkpoint(n_metrics: int, acc: dict[str, Any]) -> None:
        if not d.main:
            return
        state = {
            "version": _CHECKPOINT_VERSION,
            "model": _state_of(model),
            "optimizer": opt.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "accumulators": dict(acc),
            "n_metrics": n_metrics,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }
        runs.write_torch(CHECKPOINT, state)

    def snapshot() -> None:
        if d.main:
            runs.write_snapshot(step, conv1.weight.detach().float().cpu().numpy())

    # ---- the loop ---------------------------------------------------------------------------
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_bench = torch.backends.cudnn.benchmark
    saved_threads = torch.get_num_threads()
    saved_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    # Filling fresh tensors with NaN costs a fifth of a CPU step and buys nothing here.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if epoch == 0 and step == 0:
        printer.info(
            f"training {cfg.arch} on {n} images of {train_set.name} ({cfg.labels} labels, "
            f"{n_classes} classes), {cfg.epochs} epochs x {steps_per_epoch} steps, {device}"
            + (f", {d.world} processes" if d.world > 1 else "")
        )
    net.train()
    try:
        while epoch < cfg.epochs:
            order = _epoch_order(cfg.seed, epoch, n)
            t_epoch = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            while batch_in_epoch < steps_per_epoch:
                idx = order[batch_in_epoch * cfg.batch_size : (batch_in_epoch + 1) * cfg.batch_size]
                if len(idx) % d.world == 0:
                    share = len(idx) // d.world
                    mine = idx[d.rank * share : (d.rank + 1) * share]
                else:  # only with drop_last=False in one process
                    mine = idx
                    share = len(idx)
                if on_device:
                    mine = mine.to(device)
                x = x_all[mine]
                if cfg.augment:
                    x = _augment(x, cfg.seed, step, d.rank * share, len(idx))
                x = prepare(x)
                y = y_all[mine].to(device, non_blocking=True)
                lr = _lr_at(cfg, step, steps_per_epoch, total_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                with autocast:
                    out = net(x)
                loss = loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                batch_in_epoch += 1
                loss_sum += loss.detach().double() * len(y)
                correct += (out.detach().argmax(1) == y).sum()
                seen += len(y)
                if step in snap_steps:
                    snapshot()
                if (
                    cfg.checkpoint_every
                    and step % cfg.checkpoint_every == 0
                    and batch_in_epoch < steps_per_epoch
                ):
                    elapsed = time.perf_counter() - t_epoch
                    save_checkpoint(len(metrics), _merge_acc(acc, loss_sum, correct, seen, elapsed))
            # end of epoch
            acc = _merge_acc(acc, loss_sum, correct, seen, time.perf_counter() - t_epoch)
            totals = torch.tensor(
                [acc["loss"], float(acc["correct"]), float(acc["seen"])],
                dtype=torch.float64,
                device=device,
            )
            _all_reduce(d, totals)
            t_eval = time.perf_counter()
            test_loss, test_acc = evaluate()
            epoch += 1
            rec = {
                "epoch": epoch,
                "step": step,
                "lr": _lr_at(cfg, step - 1, steps_per_epoch, total_steps),
                "train_loss": float(totals[0] / totals[2]),
                "train_acc": float(totals[1] / totals[2]),
                "test_loss": test_loss,
                "test_acc": test_acc,
                "epoch_seconds": acc["seconds"],
                "eval_seconds": time.perf_counter() - t_eval,
                "images_per_second": float(totals[2]) / max(acc["seconds"], 1e-9),
            }
            metrics.append(rec)
            printer.record(rec, cfg.epochs)
            batch_in_epoch = 0
            acc = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            if d.main:
                runs.write_metrics(metrics)
            save_checkpoint(len(metrics), acc)
    finally:
        torch.use_deterministic_algorithms(saved_det)
        torch.backends.cudnn.benchmark = saved_bench
        torch.set_num_threads(saved_threads)
        torch.utils.deterministic.fill_uninitialized_memory = saved_fill  # type: ignore[attr-defined]

    # ---- final files ------------------------------------------------------------------------
    if d.main:
        final_first = conv1.weight.detach().float().cpu().numpy()
        runs.write_npy("first_layer_final.npy", final_first)
        runs.write_torch(FINAL_MODEL, _state_of(model))
        last = metrics[-1] if metrics else {}
        runs.write_json(
            RESULT,
            {
                "steps": step,
                "epochs": epoch,
                "final": last,
                "train_seconds": sum(r["epoch_seconds"] for r in metrics),
            },
        )
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return _result(runs, t_start)


def _merge_acc(
    acc: dict[str, Any], loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, sec: float
) -> dict[str, Any]:
    return {
        "loss": acc["loss"] + float(loss_sum),
        "correct": acc["correct"] + int(correct),
        "seen": acc["seen"] + seen,
        "seconds": acc["seconds"] + sec,
    }


def _fits(x: torch.Tensor, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return x.numel() * x.element_size() < 0.5 * free


def _augment(x: torch.Tensor, seed: int, step: int, offset: int, global_n: int) -> torch.Tensor:
    """Random crop (zero padding 4) and horizontal flip, drawn from ``(seed, step)`` only.

    The draws are made for the whole global batch and sliced at ``offset``, so each DDP process
    augments its images exactly as one process would.
    """
    rng = np.random.Generator(np.random.PCG64(_sub_seed(seed, step, 0xA6)))
    shifts = rng.integers(0, 9, size=(global_n, 2))[offset : offset + len(x)]
    flips = rng.random(global_n)[offset : offset + len(x)] < 0.5
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (4, 4, 4, 4))
    rows = torch.from_numpy(shifts[:, 0]).to(dev)[:, None] + torch.arange(h, device=dev)
    cols = torch.from_numpy(shifts[:, 1]).to(dev)[:, None] + torch.arange(w, device=dev)
    flip = torch.from_numpy(flips).to(dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def _result(runs: RunDir, t_start: float) -> TrainResult:
    return TrainResult(
        out=runs.path,
        config=runs.read_json(CONFIG),
        metrics=runs.read_metrics(),
        first_layer_init=np.load(runs / "first_layer_init.npy", allow_pickle=False),
        first_layer_final=np.load(runs / "first_layer_final.npy", allow_pickle=False),
        seconds=time.perf_counter() - t_start,
    )
