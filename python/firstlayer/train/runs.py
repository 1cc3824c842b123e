"""The run directory: what a training run leaves on disk, written atomically.

Layout (all arrays readable with plain numpy)::

    config.json              every option, plus what was derived (classes, mean/std, device...)
    labels_train.npy         int64 labels the network was trained on (random ones included)
    labels_true.npy          int64 true labels of the same images
    first_layer_init.npy     float32 (F, C, k, k) first layer before training
    first_layer_final.npy    float32 (F, C, k, k) first layer after training
    snapshots/step_XXXXXXXXX.npy   first layer after that many optimiser steps
    metrics.jsonl            one JSON object per epoch
    checkpoint.pt            full training state (model, optimiser, counters, RNG), for resume
    model_final.pt           the trained model's state dict (torch.load(weights_only=True))
    result.json              written last: the run is complete

Each file is written to a temporary name, flushed, fsynced and renamed, so a run killed at any
moment leaves either the previous or the new version of every file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._io import atomic_write_bytes, dumps, write_json

__all__ = ["RunDir"]

CONFIG = "config.json"
RESULT = "result.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FINAL_MODEL = "model_final.pt"
SNAPSHOTS = "snapshots"


def _interrupted_start(p: Path) -> bool:
    """True when ``p`` holds only what a run writes before ``config.json`` (and something)."""
    entries = list(p.iterdir())
    for x in entries:
        ours = (
            (x.name == SNAPSHOTS and x.is_dir())
            or (x.name.startswith(".") and x.name.endswith(".tmp"))
            or x.name in ("first_layer_init.npy", METRICS)
            or (x.name.startswith("labels_") and x.name.endswith(".npy"))
        )
        if not ours:
            return False
    return bool(entries) and not (p / CONFIG).exists()


class RunDir:
    """A run directory.

    Parameters
    ----------
    path : str or path-like
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- state --------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a run was started here (``config.json`` exists)."""
        return (self.path / CONFIG).is_file()

    def complete(self) -> bool:
        """Whether the run finished (``result.json`` exists)."""
        return (self.path / RESULT).is_file()

    def prepare(self, *, resume: bool, overwrite: bool) -> bool:
        """Create the directory; return whether a previous run is to be resumed.

        Raises
        ------
        FileExistsError
            The directory holds a run and neither ``resume`` nor ``overwrite`` was given, or it
            holds files that are not a run.
        """
        p = self.path
        if p.exists() and not p.is_dir():
            msg = f"out_dir: expected a directory, got the file {str(p)!r}"
            raise FileExistsError(msg)
        if overwrite and p.exists():
            if not self.exists() and any(p.iterdir()):
                msg = (
                    f"out_dir: {str(p)!r} holds files that are not a training run; not deleting it"
                )
                raise FileExistsError(msg)
            shutil.rmtree(p)
        if self.exists():
            if resume:
                return True
            msg = (
                f"out_dir: {str(p)!r} already holds a run; pass resume=True to continue it or "
                "overwrite=True to start again"
            )
            raise FileExistsError(msg)
        if p.exists() and _interrupted_start(p):
            # A run killed before it wrote config.json: nothing of it can be resumed, and
            # everything in the folder is ours, so start again.
            shutil.rmtree(p)
        if p.exists() and any(x.name != SNAPSHOTS for x in p.iterdir()):
            msg = f"out_dir: expected a new or empty directory, {str(p)!r} holds other files"
            raise FileExistsError(msg)
        (p / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        return False

    # -- writers ------------------------------------------------------------------------------

    def write_bytes(self, name: str, payload: bytes) -> Path:
        """Atomically write ``payload`` to ``name`` inside the run."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, payload)
        return target

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write an indented JSON file (strict JSON, keys sorted)."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_json(target, obj, sort_keys=True)

    def write_npy(self, name: str, arr: np.ndarray) -> Path:
        """Atomically write a ``.npy`` file (no pickle)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return self.write_bytes(name, buf.getvalue())

    def write_metrics(self, records: list[dict[str, Any]]) -> Path:
        """Atomically rewrite ``metrics.jsonl`` with all records so far."""
        text = "".join(dumps(r, indent=None) + "\n" for r in records)
        return self.write_bytes(METRICS, text.encode())

    def write_torch(self, name: str, obj: Any) -> Path:
        """Atomically write ``torch.save(obj)``."""
        import torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        return self.write_bytes(name, buf.getvalue())

    def write_snapshot(self, step: int, weights: np.ndarray) -> Path:
        """First-layer snapshot after ``step`` optimiser steps."""
        return self.write_npy(f"{SNAPSHOTS}/step_{step:09d}.npy", weights)

    # -- readers ------------------------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        """Parse a JSON file of the run."""
        return json.loads((self.path / name).read_text())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` (empty when absent)."""
        p = self.path / METRICS
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def read_checkpoint(self, device: Any = "cpu") -> dict[str, Any] | None:
        """The resume state, or ``None`` when no checkpoint was written yet."""
        import torch

        p = self.path / CHECKPOINT
        if not p.is_file():
            return None
        return torch.load(p, map_location=device, weights_only=True)  # type: ignore[no-any-return]

    def snapshots(self) -> tuple[np.ndarray, np.ndarray]:
        """All snapshots: steps ``(S,)`` and first layers ``(S, F, C, k, k)``, by step."""
        files = sorted((self.path / SNAPSHOTS).glob("step_*.npy"))
        steps = np.array([int(f.stem[5:]) for f in files], dtype=np.int64)
        if not files:
            return steps, np.zeros((0,), dtype=np.float32)
        return steps, np.stack([np.load(f, allow_pickle=False) for f in files])
