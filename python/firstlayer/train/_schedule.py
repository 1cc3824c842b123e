"""What each step does, as a function of the seed and a counter only (never of hidden state).

The batch order of epoch ``e`` comes from ``(seed, e)``, the augmentation of step ``s`` from
``(seed, s)``; the learning rate and the snapshot steps follow from the options. This is what
lets a resumed run replay the exact batches of an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from firstlayer.train.config import TrainConfig

__all__ = ["augment", "epoch_order", "lr_at", "snapshot_steps", "sub_seed"]


def sub_seed(*keys: int) -> int:
    """A 63-bit seed derived from ``keys`` (the run's seed and a counter)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the ``n`` training images in epoch ``epoch``."""
    g = torch.Generator().manual_seed(sub_seed(seed, epoch, 0x0E))
    return torch.randperm(n, generator=g)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, total: int) -> float:
    """The learning rate of step ``step`` under the run's schedule."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return cfg.lr


def snapshot_steps(spec: Any, total: int) -> set[int]:
    """The steps after which the first layer is saved: a log-spaced count or explicit steps."""
    if isinstance(spec, int):
        if spec <= 0:
            return set()
        grid = np.unique(np.round(np.geomspace(1, max(total, 1), spec)).astype(np.int64))
        return {0, *(int(s) for s in grid if s <= total)}
    return {int(s) for s in spec if s <= total}


def augment(x: torch.Tensor, seed: int, step: int, offset: int, global_n: int) -> torch.Tensor:
    """Random crop (zero padding 4) and horizontal flip, drawn from ``(seed, step)`` only.

    The draws are made for the whole global batch and sliced at ``offset``, so each DDP process
    augments its images exactly as one process would.
    """
    rng = np.random.Generator(np.random.PCG64(sub_seed(seed, step, 0xA6)))
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
