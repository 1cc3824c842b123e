"""A PyTorch Lightning callback: the first layer of a ``Trainer``'s model, as a run folder.

>>> from firstlayer.integrations.lightning import FirstLayerCallback  # doctest: +SKIP
>>> trainer = L.Trainer(max_epochs=3, callbacks=[FirstLayerCallback("runs/mine")])  # doctest: +SKIP
>>> trainer.fit(model, loader)  # doctest: +SKIP

The folder is the one :func:`firstlayer.track` writes (the same as ``firstlayer train``), so
``firstlayer compare runs/mine ...`` reads it. Steps are the trainer's ``global_step`` (optimizer
steps, gradient accumulation included); the epoch-end metrics Lightning logged
(``trainer.callback_metrics``) go to ``metrics.jsonl``. Under DDP only global rank 0 writes.
With ``stats=`` and a TensorBoard logger, the theory fit of every snapshot goes to TensorBoard too
(:class:`firstlayer.integrations.tensorboard.TensorBoardWriter`).

Needs ``lightning`` (``import lightning``) or the older ``pytorch_lightning``.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the package's older name
    from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef,assignment]

from firstlayer.train.tracker import Tracker

__all__ = ["FirstLayerCallback"]


class FirstLayerCallback(Callback):  # type: ignore[misc]
    """Record the first layer of the model a Lightning ``Trainer`` fits.

    Parameters
    ----------
    out_dir : str or path-like
        The run directory.
    stats : PatchStats, optional
        Patch statistics as the model sees them: with a TensorBoard logger on the trainer, the
        fitted ``eta*t``, the fit's ``r`` and the profile image are logged at every snapshot.
    **options
        Passed to :func:`firstlayer.track` (``snapshots``, ``steps``, ``name``,
        ``example_input``, ``dataset``, ``mean``/``std``, ``overwrite``, ...). ``total_steps``
        defaults to the trainer's ``estimated_stepping_batches`` when it is finite.
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], *, stats: Any = None, **options: Any
    ) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.stats = stats
        self.options = options
        self.tracker: Tracker | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        options = dict(self.options)
        if "total_steps" not in options:
            total = trainer.estimated_stepping_batches
            if isinstance(total, int) or (isinstance(total, float) and total.is_integer()):
                options["total_steps"] = int(total)
        listeners = list(options.pop("on_snapshot", ()))
        experiment = getattr(trainer.logger, "experiment", None)
        if self.stats is not None and hasattr(experiment, "add_scalar"):
            from firstlayer.integrations.tensorboard import TensorBoardWriter

            listeners.append(TensorBoardWriter(experiment, self.stats))
        self.tracker = Tracker(
            pl_module,
            self.out_dir,
            rank=trainer.global_rank,
            on_snapshot=listeners,
            **options,
        )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.tracker is not None and trainer.global_step > self.tracker.steps_done:
            self.tracker.step(trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is None:
            return
        values = {}
        for key, v in trainer.callback_metrics.items():
            try:
                values[str(key)] = float(v)
            except (TypeError, ValueError):
                continue
        self.tracker.log(epoch=trainer.current_epoch + 1, **values)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.tracker is not None:
            self.tracker.close(complete=False)
