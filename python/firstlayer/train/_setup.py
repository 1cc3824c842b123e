"""Everything a run needs before its first step: device, data, output, and the resume check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from firstlayer._io import dumps
from firstlayer.streaming import patch_stats
from firstlayer.train._schedule import sub_seed
from firstlayer.train.config import TrainConfig
from firstlayer.train.data import Dataset, load_dataset, test_name
from firstlayer.whitening import whitening_filters

__all__ = [
    "Printer",
    "compare_config",
    "fits_on_device",
    "load_data",
    "pick_device",
    "state_of",
    "whitening_bank",
]


def pick_device(cfg: TrainConfig, d_local: int) -> torch.device:
    """The device of this process: its local GPU when CUDA is asked for or available."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        msg = "device: expected a visible CUDA device with device='cuda', found none"
        raise ValueError(msg)
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(d_local)
        return torch.device("cuda", d_local)
    return torch.device("cpu")


class Printer:
    """The run's console output: a line per epoch, JSON records, or nothing."""

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
            print(dumps(rec, indent=None), file=sys.stdout, flush=True)
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


def compare_config(stored: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume the run in ``out`` with options that change its result."""
    now = cfg.to_dict()
    bad = []
    for name in TrainConfig.result_names():
        a = stored.get("options", {}).get(name)
        b = now[name]
        if dumps(a, indent=None) != dumps(b, indent=None):
            bad.append(f"{name}: stored {a!r}, now {b!r}")
    if bad:
        msg = f"resume: the options differ from the run in {str(out)!r}: " + "; ".join(bad)
        raise ValueError(msg)


def load_data(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training set and the held-out set (``None`` without one), of one image shape."""
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


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict, for ``torch.save``."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fits_on_device(x: torch.Tensor, device: torch.device) -> bool:
    """Whether ``x`` takes under half of the device's free memory (always on the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return x.numel() * x.element_size() < 0.5 * free


def whitening_bank(
    images: np.ndarray,
    *,
    n_filters: int,
    kernel_size: int,
    mean: list[float],
    std: list[float],
    eps: float,
    seed: int,
) -> np.ndarray:
    """The frozen first layer of ``freeze_first="whitening"``: ``n_filters`` whitening filters.

    The ZCA filters (:func:`firstlayer.whitening_filters` with ``kind="zca"``, ``p = C k^2`` of
    them) of the patches as the network sees them (``(x/255 - mean)/std``) are mixed by a seeded
    matrix ``Q`` with orthonormal columns (``n_filters >= p``) or rows (``n_filters < p``): the
    responses ``Q Z p`` have covariance ``Q Q^T``, white within the span of the bank.

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
    stats = patch_stats(images, kernel_size=kernel_size, layout="NCHW").normalized(mean, std)
    zca = whitening_filters(stats, eps, kind="zca")  # (p, C, k, k): the rows of Z
    p = zca.shape[0]
    z = zca.reshape(p, p)
    rng = np.random.Generator(np.random.PCG64(sub_seed(seed, 0x3A)))
    if n_filters >= p:
        q, _ = np.linalg.qr(rng.standard_normal((n_filters, p)))
    else:
        qt, _ = np.linalg.qr(rng.standard_normal((p, n_filters)))
        q = qt.T
    w = q @ z
    c = images.shape[1]
    return w.reshape(n_filters, c, kernel_size, kernel_size).astype(np.float32)
