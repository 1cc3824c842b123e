"""What the experiments share: the data, its patch statistics and the training runs.

Runs are trained on first use and kept in ``runs/<name>/``; a finished run is reused, an
interrupted one is continued only with ``resume``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._io import atomic_write
from firstlayer.constants import CIFAR10_MEAN, CIFAR10_STD
from firstlayer.reproduce.data import load_data
from firstlayer.reproduce.scales import Run, Scale, runs

__all__ = ["Context", "Trained"]


@dataclass
class Trained:
    """A finished training run: its first layer at init, at the end and at the snapshots."""

    name: str
    path: Path
    init: np.ndarray
    final: np.ndarray
    steps: np.ndarray
    snapshots: np.ndarray
    metrics: dict[str, Any]


class Context:
    """Everything the experiments share: data, statistics and the training runs."""

    def __init__(
        self,
        scale: Scale,
        out_dir: Path,
        dirs: list[Path],
        *,
        device: str,
        threads: int | None,
        resume: bool,
        say: Callable[[str], None],
    ) -> None:
        self.scale, self.out_dir, self.dirs = scale, out_dir, dirs
        self.device, self.threads, self.resume, self.say = device, threads, resume, say
        self._data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]] | None
        self._data = None
        self._stats: Any = None
        self._trained: dict[str, Trained] = {}
        self._trajectories: dict[str, Any] = {}
        self.plan = runs(scale)

    # -- data ---------------------------------------------------------------------------------

    def data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Training and held-out images and labels, and their description (loaded once)."""
        if self._data is None:
            self.say(f"loading data ({self.scale.data})")
            self._data = load_data(self.scale, self.dirs)
        return self._data

    def data_files(self) -> tuple[Path, Path | None]:
        """``data/train.npz`` and ``data/test.npz`` (None when empty), written on first use."""
        folder = self.out_dir / "data"
        train_p, test_p = folder / "train.npz", folder / "test.npz"
        if not train_p.is_file():
            x, y, tx, ty, _ = self.data()
            folder.mkdir(parents=True, exist_ok=True)
            for p, a, b in ((train_p, x, y), (test_p, tx, ty)):
                with atomic_write(p) as f:
                    np.savez(f, images=a, labels=b)
        with np.load(test_p, allow_pickle=False) as f:
            has_test = len(f["labels"]) > 0
        return train_p, (test_p if has_test else None)

    def raw_stats(self) -> Any:
        """Exact patch statistics (3x3, uint8, with labels) of the training images."""
        if self._stats is None:
            from firstlayer.streaming import patch_stats

            x, y, *_ = self.data()
            self.say(f"patch statistics of {len(x):,} training images")
            self._stats = patch_stats(x, kernel_size=3, layout="NCHW", labels=y)
        return self._stats

    def stats(self) -> Any:
        """The statistics as the networks saw the patches (CIFAR normalisation)."""
        return self.raw_stats().normalized(CIFAR10_MEAN, CIFAR10_STD)

    # -- runs ---------------------------------------------------------------------------------

    def trained(self, role: str) -> list[Trained]:
        """The finished runs of ``role`` (see :func:`firstlayer.reproduce.scales.runs`)."""
        return [self._train(r) for r in self.plan[role]]

    def _train(self, run: Run) -> Trained:
        if run.name in self._trained:
            return self._trained[run.name]
        from firstlayer.train.runs import RunDir

        path = self.out_dir / "runs" / run.name
        rd = RunDir(path)
        if not rd.complete():
            if rd.exists() and not self.resume:
                msg = (
                    f"resume: the run {str(path)!r} was interrupted; expected --resume to continue "
                    "it (or a new --out), got no --resume"
                )
                raise FileExistsError(msg)
            self._run_training(run, path, resume=rd.exists())
        init = np.load(path / "first_layer_init.npy", allow_pickle=False).astype(np.float64)
        final = np.load(path / "first_layer_final.npy", allow_pickle=False).astype(np.float64)
        steps, snaps = rd.snapshots()
        metrics = rd.read_metrics()
        t = Trained(
            name=run.name,
            path=path,
            init=init,
            final=final,
            steps=steps,
            snapshots=snaps.astype(np.float64),
            metrics=metrics[-1] if metrics else {},
        )
        self._trained[run.name] = t
        return t

    def _run_training(self, run: Run, path: Path, *, resume: bool) -> None:
        from firstlayer.train import train

        s = self.scale
        train_p, test_p = self.data_files()
        snapshots = self._snapshot_steps(run)
        self.say(f"{'resuming' if resume else 'training'} {run.name} ({run.epochs} epochs)")
        t0 = time.monotonic()
        train(
            out_dir=str(path),
            arch=run.arch,
            dataset=str(train_p),
            test_dataset=str(test_p) if test_p is not None else "none",
            labels=run.labels,
            seed=run.seed,
            width=run.width,
            first_width=run.first_width,
            epochs=run.epochs,
            batch_size=s.batch_size,
            lr=s.lr,
            momentum=s.momentum,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            snapshots=snapshots,
            channels_last=s.channels_last,
            device=self.device,
            threads=self.threads,
            resume=resume,
            quiet=True,
        )
        self.say(f"  {run.name} done in {time.monotonic() - t0:.0f}s")

    def _snapshot_steps(self, run: Run) -> list[int]:
        """Steps at which ``run`` records its first layer: the log-spaced steps of every run
        length of the scale, and the step at which the settling rule's window starts, so that
        runs of different lengths (random labels train longer) share their snapshots up to the
        shorter one's end and compare at the same steps."""
        from firstlayer.train._schedule import snapshot_steps
        from firstlayer.trajectory import SETTLE_FRACTION

        s = self.scale
        n = len(self.data()[0])
        per_epoch = max(n // s.batch_size, 1)  # train drops the last incomplete batch
        total = per_epoch * run.epochs
        lengths = {per_epoch * e for e in (s.epochs, s.random_epochs, s.arch_epochs)}
        steps: set[int] = set()
        for length in lengths:
            steps |= snapshot_steps(s.snapshots, length)
            # The settling rule compares the profile at the end with the one at (1 - fraction)
            # of the steps: a snapshot there makes that exact, not interpolated between
            # log-spaced snapshots far apart.
            steps.add(round((1.0 - SETTLE_FRACTION) * length))
        return sorted(v for v in steps if v <= total)

    # -- along training -----------------------------------------------------------------------

    def trajectory(self, run: Trained) -> Any:
        """The run's :class:`firstlayer.trajectory.Trajectory` (PCA basis), computed once."""
        if run.name not in self._trajectories:
            from firstlayer.profile import energy_profile
            from firstlayer.trajectory import trajectory

            st = self.stats()
            keep = run.steps > 0
            steps, snaps = run.steps[keep], run.snapshots[keep]
            if not np.any(keep):  # a run without snapshots: its final layer alone
                steps = np.array([max(int(run.metrics.get("step") or 1), 1)])
                snaps = run.final[None]
            profiles = np.stack([energy_profile(w, st, init=run.init) for w in snaps])
            n0 = float(np.linalg.norm(run.init))
            rel = [float(np.linalg.norm(w - run.init)) / n0 for w in snaps]
            acc = run.metrics.get("train_acc")
            self._trajectories[run.name] = trajectory(
                steps, profiles, st, name=run.name, relative_change=rel,
                train_acc=float(acc) if isinstance(acc, int | float) else None,
            )  # fmt: skip
        return self._trajectories[run.name]

    def regime(self, runs: list[Trained]) -> dict[str, dict[str, Any]]:
        """Run name -> regime (:meth:`Trajectory.regime` plus the labels it was trained on)."""
        labels = {r.name: r.labels for items in self.plan.values() for r in items}
        return {r.name: {**self.trajectory(r).regime(), "labels": labels.get(r.name)} for r in runs}
