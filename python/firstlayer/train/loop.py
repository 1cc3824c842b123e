"""The training loop: data on the device, seeded batch order, atomic checkpoints, exact resume, DDP.

:func:`train` validates the options and :func:`run` trains: the setup before the first step is in
:mod:`firstlayer.train._setup`, the per-step randomness in :mod:`firstlayer.train._schedule` and
the process group in :mod:`firstlayer.train._ddp`; this module is the epoch loop itself.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.deterministic
from torch import nn

from firstlayer.train._ddp import Dist, all_reduce, barrier, dist_setup, dist_teardown, on_main
from firstlayer.train._schedule import augment, epoch_order, lr_at, snapshot_steps, sub_seed
from firstlayer.train._setup import (
    Printer,
    compare_config,
    fits_on_device,
    load_data,
    pick_device,
    state_of,
    whitening_bank,
)
from firstlayer.train.config import TrainConfig
from firstlayer.train.data import channel_stats, make_labels
from firstlayer.train.models import build_model, first_conv
from firstlayer.train.runs import CHECKPOINT, CONFIG, FINAL_MODEL, RESULT, RunDir

__all__ = ["TrainResult", "run", "train"]

_CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    out_dir : pathlib.Path
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

    out_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    first_layer_init: np.ndarray
    first_layer_final: np.ndarray
    seconds: float


def train(**kwargs: Any) -> TrainResult:
    """Train a network and record its first layer in a run directory.

    All options are keyword arguments (the fields of :class:`TrainConfig`); ``firstlayer train``
    takes the same ones as ``--options``. Every option is checked before any data is read.

    Parameters
    ----------
    out_dir : str or path-like
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
        Continue the run in ``out_dir`` (options must match), or delete it first.
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
        ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` was given.
    firstlayer.exceptions.DatasetNotFoundError
        A named dataset is nowhere to be found.

    Notes
    -----
    Under ``torchrun`` the processes share each global batch (``batch_size`` must be a
    multiple of the number of processes) and rank 0 writes the run directory.

    Examples
    --------
    >>> res = train(out_dir="runs/r", dataset="sample", labels="random", batch_size=64,
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
    if "out_dir" not in kwargs:
        msg = "out_dir: expected a run directory, got nothing (pass out_dir=...)"
        raise TypeError(msg)
    cfg = TrainConfig(**kwargs)
    cfg.validate()
    return run(cfg)


def run(cfg: TrainConfig) -> TrainResult:
    """Run a validated configuration (``train(**kwargs)`` validates and calls this)."""
    t_start = time.perf_counter()
    device_kind = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    dist_ = dist_setup(device_kind)
    try:
        return _run(cfg, dist_, t_start)
    finally:
        dist_teardown(dist_)


def _run(cfg: TrainConfig, d: Dist, t_start: float) -> TrainResult:
    device = pick_device(cfg, d.local_rank)
    runs = RunDir(cfg.out_dir)
    printer = Printer(cfg, d.main)
    if cfg.batch_size % d.world:
        msg = (
            f"batch_size: expected a multiple of the number of processes ({d.world}), got "
            f"{cfg.batch_size}"
        )
        raise ValueError(msg)
    resuming = on_main(d, lambda: runs.prepare(resume=cfg.resume, overwrite=cfg.overwrite))
    stored: dict[str, Any] | None = None
    if resuming:
        stored = runs.read_json(CONFIG)
        compare_config(stored, cfg, runs.path)
        if runs.complete():
            printer.info(f"{runs.path}: run already complete")
            return _result(runs, t_start)

    # ---- data, labels, normalisation: every check before any training ----------------------
    train_set, test_set = load_data(cfg)
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
    snap_steps = snapshot_steps(cfg.snapshots, total_steps)

    # ---- model ------------------------------------------------------------------------------
    torch.manual_seed(sub_seed(cfg.seed, 0x1A))
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
        wf = whitening_bank(
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
        torch.manual_seed(sub_seed(cfg.seed, 0x2B))

    # ---- data on the device -----------------------------------------------------------------
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)
    on_device = cfg.data_on_device
    if on_device == "auto":
        on_device = device.type == "cpu" or fits_on_device(x_all, device)
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
        all_reduce(d, sums)
        return float(sums[0] / sums[2]), float(sums[1] / sums[2])

    def save_checkpoint(n_metrics: int, acc: dict[str, Any]) -> None:
        if not d.main:
            return
        state = {
            "version": _CHECKPOINT_VERSION,
            "model": state_of(model),
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
            order = epoch_order(cfg.seed, epoch, n)
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
                    x = augment(x, cfg.seed, step, d.rank * share, len(idx))
                x = prepare(x)
                y = y_all[mine].to(device, non_blocking=True)
                lr = lr_at(cfg, step, steps_per_epoch, total_steps)
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
            all_reduce(d, totals)
            t_eval = time.perf_counter()
            test_loss, test_acc = evaluate()
            epoch += 1
            rec = {
                "epoch": epoch,
                "step": step,
                "lr": lr_at(cfg, step - 1, steps_per_epoch, total_steps),
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
        runs.write_torch(FINAL_MODEL, state_of(model))
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
    barrier(d)
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


def _result(runs: RunDir, t_start: float) -> TrainResult:
    return TrainResult(
        out_dir=runs.path,
        config=runs.read_json(CONFIG),
        metrics=runs.read_metrics(),
        first_layer_init=np.load(runs / "first_layer_init.npy", allow_pickle=False),
        first_layer_final=np.load(runs / "first_layer_final.npy", allow_pickle=False),
        seconds=time.perf_counter() - t_start,
    )
