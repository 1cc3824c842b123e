"""Record the first layer of *your own* training: ``firstlayer.track(model, out_dir=...)``.

The tracker writes the same run directory as ``firstlayer train`` (see
:mod:`firstlayer.train.runs`): ``config.json``, ``first_layer_init.npy``,
``snapshots/step_XXXXXXXXX.npy``, ``metrics.jsonl``, and on :meth:`Tracker.close`
``first_layer_final.npy`` and, last, ``result.json``. Every file is written atomically, so
``firstlayer compare`` (and anything else that reads runs) works on it unchanged, and a training
killed at any moment leaves a folder whose files are each complete.

A snapshot costs the step one device-to-host copy of the first layer (a few thousand floats);
turning it into a ``.npy`` file and writing it happens in a background thread, and
:meth:`Tracker.close` (or leaving the ``with`` block) waits for every write. Under DDP
(``torch.distributed`` initialised) only rank 0 writes; the other ranks count steps and nothing
else.

Examples
--------
>>> import firstlayer  # doctest: +SKIP
>>> tracker = firstlayer.track(model, out_dir="runs/mine", optimizer=opt)  # doctest: +SKIP
>>> for x, y in loader:  # doctest: +SKIP
...     loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
>>> tracker.close()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from firstlayer._validate import check_int, check_int_list, check_optional_int, type_error
from firstlayer.filters import first_layer
from firstlayer.train._schedule import snapshot_steps
from firstlayer.train.runs import CONFIG, RESULT, RunDir

__all__ = ["Tracker", "log_grid", "track"]

# What an ``on_snapshot`` listener is called with, in the writer thread: the step, the first
# layer then (float32 (F, C, k, k)) and at step 0.
SnapshotListener = Callable[[int, np.ndarray, np.ndarray], None]


def log_grid(per_decade: int, up_to: int) -> list[int]:
    """Log-spaced steps ``0, 1, 2, ...`` up to ``up_to``: ``per_decade`` points per factor 10.

    Used when the number of steps is not known in advance (the grid never ends: each decade gets
    the same number of snapshots, so a run of any length is sampled evenly in ``log t``).

    >>> log_grid(4, 100)
    [0, 1, 2, 3, 6, 10, 18, 32, 56, 100]
    """
    check_int("per_decade", per_decade, 1)
    check_int("up_to", up_to, 0)
    if up_to == 0:
        return [0]
    n = int(np.ceil(per_decade * np.log10(up_to))) + 1
    grid = np.round(10.0 ** (np.arange(n) / per_decade)).astype(np.int64)
    return sorted({0, *(int(s) for s in grid if s <= up_to)})


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def _world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def _unwrap(model: Any) -> Any:
    """The module inside DDP/DataParallel wrappers (whose parameters are the same tensors)."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel) or (
        type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")
    ):
        model = model.module if hasattr(model, "module") else model._orig_mod
    return model


class Tracker:
    """Snapshots of a model's first layer while it trains; see :func:`track`.

    Attributes
    ----------
    run : RunDir
        The run directory.
    layer : str
        Module path of the first layer (as :func:`firstlayer.first_layer` found it).
    steps_done : int
        Optimizer steps counted so far.
    rank : int
        This process's rank; only rank 0 writes.
    """

    def __init__(
        self,
        model: Any,
        out_dir: str | os.PathLike[str],
        *,
        optimizer: Any = None,
        snapshots: int | Sequence[int] = 16,
        steps: Sequence[int] = (),
        total_steps: int | None = None,
        name: str | None = None,
        example_input: Any = None,
        input_size: int = 224,
        dataset: str | None = None,
        labels: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        config: dict[str, Any] | None = None,
        on_snapshot: Sequence[SnapshotListener] = (),
        overwrite: bool = False,
        rank: int | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise type_error("model", "a torch.nn.Module", model)
        if isinstance(out_dir, bool) or not isinstance(out_dir, str | os.PathLike):
            raise type_error("out_dir", "a folder path", out_dir)
        total = check_optional_int("total_steps", total_steps, 1)
        extra = check_int_list("steps", list(steps), 0)
        if isinstance(snapshots, bool) or not isinstance(snapshots, int | Sequence):
            raise type_error("snapshots", "a count or a list of steps", snapshots)
        if isinstance(snapshots, int):
            check_int("snapshots", snapshots, 0)
            chosen: list[int] = []
        else:
            chosen = check_int_list("snapshots", list(snapshots), 0)
        if config is not None and not isinstance(config, dict):
            raise type_error("config", "a dict of JSON values", config)
        for label, v in (("mean", mean), ("std", std)):
            if v is not None and (isinstance(v, str) or not isinstance(v, Sequence)):
                raise type_error(label, "a sequence of floats, one per channel", v)
        if (mean is None) != (std is None):
            msg = "mean: expected mean and std together, got only one of them"
            raise ValueError(msg)
        if optimizer is not None and not hasattr(optimizer, "register_step_post_hook"):
            raise type_error("optimizer", "a torch.optim.Optimizer", optimizer)
        inner = _unwrap(model)
        found = first_layer(inner, name=name, example_input=example_input, input_size=input_size)
        self.layer = found.name
        self._weight = dict(inner.named_modules())[found.name].weight
        self.rank = _rank() if rank is None else check_int("rank", rank, 0)
        self.run = RunDir(out_dir)
        self.steps_done = 0
        self._snapshots = snapshots
        self._total = total
        self._chosen = set(chosen) | set(extra)
        self._written: list[int] = []
        self._records: list[dict[str, Any]] = []
        self._listeners = list(on_snapshot)
        self._closed = False
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._pending: list[Future[None]] = []
        self._hook = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="firstlayer-track")
        self._next = self._plan(0)
        self.init = self._weight.detach().float().cpu().numpy().copy()

        self._config = {
            "options": {
                "out_dir": str(out_dir),
                "arch": type(inner).__name__,
                "dataset": dataset,
                "labels": labels,
                "mean": None if mean is None else [float(v) for v in mean],
                "std": None if std is None else [float(v) for v in std],
                "snapshots": snapshots if isinstance(snapshots, int) else chosen,
                "steps": extra,
                **(config or {}),
            },
            "derived": {
                "tracker": "firstlayer.track",
                "first_layer": {"module": self.layer, "shape": list(self.init.shape)},
                "total_steps": total,
                "snapshot_steps": [],
                "world_size": _world(),
                "device": str(self._weight.device),
                "torch": torch.__version__,
                **(
                    {}
                    if mean is None or std is None
                    else {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
                ),
            },
        }
        if self.main:
            self.run.prepare(resume=False, overwrite=overwrite)
            self.run.write_npy("first_layer_init.npy", self.init)
            self.run.write_metrics([])
            self.run.write_json(CONFIG, self._config)
        if optimizer is not None:
            self._hook = optimizer.register_step_post_hook(lambda *_: self._advance(None))
        if self._plan(-1) == 0:
            self._snapshot(0)

    # -- which steps --------------------------------------------------------------------------

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0

    def _plan(self, after: int) -> int | None:
        """The first snapshot step after ``after`` (None: there is none)."""
        if isinstance(self._snapshots, int) and self._snapshots > 0:
            if self._total is not None:
                grid = snapshot_steps(self._snapshots, self._total)
            else:  # open-ended: as dense per decade as `snapshots` over 100 steps, for ever
                grid = set(log_grid(max(self._snapshots // 2, 1), 10 * (after + 1)))
        else:
            grid = set()
        later = [s for s in grid | self._chosen if s > after]
        return min(later) if later else None

    @property
    def snapshot_steps(self) -> list[int]:
        """Steps whose snapshot was taken so far."""
        return list(self._written)

    # -- the step -----------------------------------------------------------------------------

    def step(self, step: int | None = None) -> None:
        """Count one optimizer step (or set the count: ``step`` steps are done so far).

        Call it once per optimizer step, after ``optimizer.step()``; with ``optimizer=`` given
        to :func:`track` the tracker counts by itself and this must not be called.
        """
        if self._hook is not None:
            msg = "step(): this tracker counts the optimizer's steps (optimizer=...); don't call it"
            raise RuntimeError(msg)
        self._advance(step)

    def _advance(self, step: int | None) -> None:
        if self._closed:
            msg = "step(): the tracker is closed"
            raise RuntimeError(msg)
        self._raise_failure()
        if step is None:
            self.steps_done += 1
        else:
            s = check_int("step", step, self.steps_done)
            self.steps_done = s
        while self._next is not None and self._next <= self.steps_done:
            if self._next == self.steps_done:
                self._snapshot(self.steps_done)
            self._next = self._plan(self._next)

    def _snapshot(self, step: int) -> None:
        if not self.main or step in self._written:
            return
        # The only work on the training thread: one copy of the layer to the host, so later
        # optimizer steps cannot change what is written.
        w = self._weight.detach().to("cpu", dtype=torch.float32, copy=True)
        self._written.append(step)
        self._submit(self._write_snapshot, step, w)

    def _write_snapshot(self, step: int, w: torch.Tensor) -> None:
        arr = w.numpy()
        self.run.write_snapshot(step, arr)
        for fn in self._listeners:
            fn(step, arr, self.init)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        def guarded() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # re-raised on the training thread
                with self._lock:
                    self._failure = self._failure or exc

        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._writer.submit(guarded))

    def _raise_failure(self) -> None:
        with self._lock:
            exc, self._failure = self._failure, None
        if exc is not None:
            msg = f"tracker: writing {self.run.path} failed ({type(exc).__name__}: {exc})"
            raise RuntimeError(msg) from exc

    # -- metrics ------------------------------------------------------------------------------

    def log(self, **values: Any) -> None:
        """Add a record to ``metrics.jsonl`` (``step`` is added; e.g. once per epoch).

        ``train_loss``, ``train_acc``, ``test_loss`` and ``test_acc`` are the names
        ``firstlayer train`` uses (reports show them).
        """
        record = {"step": self.steps_done, **values}
        self._records.append(record)
        if self.main:
            snapshot = list(self._records)
            self._submit(self.run.write_metrics, snapshot)

    # -- the end ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until everything submitted so far is on disk."""
        for f in list(self._pending):
            f.result()
        self._raise_failure()

    def close(self, *, complete: bool = True) -> None:
        """Write the final layer (a last snapshot included) and ``result.json``; wait for it.

        With ``complete=False`` (a failed training) only the pending snapshots are flushed:
        the run stays incomplete, as a killed ``firstlayer train`` does.
        """
        if self._closed:
            return
        if self._hook is not None:
            self._hook.remove()
        try:
            if complete and self.main:
                if self.steps_done not in self._written:
                    self._snapshot(self.steps_done)
                final = self._weight.detach().to("cpu", dtype=torch.float32, copy=True)
                self.flush()
                self._config["derived"]["snapshot_steps"] = sorted(self._written)
                self._config["derived"]["steps_done"] = self.steps_done
                self.run.write_json(CONFIG, self._config)
                self.run.write_npy("first_layer_final.npy", final.numpy())
                last = self._records[-1] if self._records else {}
                self.run.write_json(
                    RESULT,
                    {
                        "steps": self.steps_done,
                        "epochs": last.get("epoch"),
                        "final": last,
                        "train_seconds": time.perf_counter() - self._t0,
                    },
                )
            else:
                self.flush()
        finally:
            self._closed = True
            self._writer.shutdown(wait=True)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(complete=exc_type is None)

    def _repr_html_(self) -> str:
        """The run folder, the layer and the snapshots so far, as a table (for Jupyter)."""
        from firstlayer._display import html_table

        state = "closed" if self._closed else ("writing" if self.main else f"rank {self.rank}")
        rows = [
            ("run folder", str(self.run.path)),
            ("first layer", f"{self.layer} {tuple(self.init.shape)}"),
            ("steps", self.steps_done),
            ("snapshots", ", ".join(str(s) for s in self._written) or "none"),
            ("state", state),
        ]
        return html_table("Tracker", rows)

    def __repr__(self) -> str:
        return (
            f"Tracker({str(self.run.path)!r}, layer={self.layer!r}, steps={self.steps_done}, "
            f"snapshots={len(self._written)}{', closed' if self._closed else ''})"
        )


def track(model: Any, out_dir: str | os.PathLike[str], **options: Any) -> Tracker:
    """Record a model's first layer during *your* training, into a ``firstlayer train`` run folder.

    Parameters
    ----------
    model : torch.nn.Module
        The model (DDP/DataParallel/``torch.compile`` wrappers are unwrapped). Its first layer is
        found as :func:`firstlayer.first_layer` finds it (``name=`` picks one).
    out_dir : str or path-like
        The run directory (new or empty; ``overwrite=True`` replaces a previous run).
    optimizer : torch.optim.Optimizer, optional
        Count steps by hooking the optimizer (``register_step_post_hook``) instead of calling
        :meth:`Tracker.step`.
    snapshots : int or sequence of int
        A count of log-spaced steps (default 16, as ``firstlayer train``; spread over
        ``total_steps`` when given, otherwise ``snapshots // 2`` per factor 10 of steps, for
        ever), or the exact steps.
    steps : sequence of int
        Further steps to snapshot.
    total_steps : int, optional
        The number of optimizer steps the training will take, when known.
    name, example_input, input_size
        Passed to :func:`firstlayer.first_layer`.
    dataset, labels : str, optional
        What the model trains on (``"cifar10"``, ``"sample"``, ...; ``"true"``/``"random"``):
        ``firstlayer compare`` takes the dataset from the run when it names one.
    mean, std : sequence of float, optional
        The input normalisation ``(x/255 - mean)/std`` the model sees; reports normalise the
        patch statistics with it.
    config : dict, optional
        More options to store in ``config.json``.
    on_snapshot : sequence of callables
        ``fn(step, weight, init)`` called in the writer thread after each snapshot (e.g.
        :class:`firstlayer.integrations.tensorboard.TensorBoardWriter`).
    overwrite : bool
    rank : int, optional
        This process's rank (default: ``torch.distributed``'s, else 0); only rank 0 writes.

    Returns
    -------
    Tracker
        Call ``.step()`` once per optimizer step (unless ``optimizer=``), ``.log(**metrics)``
        when you like, and ``.close()`` at the end, or use it as a context manager.
    """
    return Tracker(model, out_dir, **options)
