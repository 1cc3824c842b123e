"""A Hugging Face ``transformers`` ``TrainerCallback``: the first layer of a ``Trainer``'s model.

>>> from firstlayer.integrations.transformers import FirstLayerTrainerCallback  # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=ds,
...                   callbacks=[FirstLayerTrainerCallback("runs/vit")])  # doctest: +SKIP
>>> trainer.train()  # doctest: +SKIP

The folder is the one :func:`firstlayer.track` writes. Steps are the trainer's
``state.global_step`` (optimizer steps), ``total_steps`` its ``state.max_steps``; each log record
of the trainer (loss, learning rate, ...) goes to ``metrics.jsonl``. Only the main process
(``state.is_world_process_zero``) writes. For a vision model whose first convolution the
default probe (zeros of ``3 x 224 x 224``) cannot reach, pass ``example_input=`` or ``name=``.

Needs ``transformers`` (and ``accelerate``, which its ``Trainer`` requires).
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from firstlayer.train.tracker import Tracker

__all__ = ["FirstLayerTrainerCallback"]


class FirstLayerTrainerCallback(TrainerCallback):  # type: ignore[misc]
    """Record the first layer of the model a ``transformers.Trainer`` trains.

    Parameters
    ----------
    out_dir : str or path-like
        The run directory.
    **options
        Passed to :func:`firstlayer.track` (``snapshots``, ``steps``, ``name``,
        ``example_input``, ``dataset``, ``mean``/``std``, ``overwrite``, ...).
    """

    def __init__(self, out_dir: str | os.PathLike[str], **options: Any) -> None:
        self.out_dir = out_dir
        self.options = options
        self.tracker: Tracker | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        options = dict(self.options)
        if "total_steps" not in options and state.max_steps and state.max_steps > 0:
            options["total_steps"] = int(state.max_steps)
        rank = 0 if state.is_world_process_zero else max(int(args.process_index), 1)
        self.tracker = Tracker(kwargs["model"], self.out_dir, rank=rank, **options)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None and state.global_step > self.tracker.steps_done:
            self.tracker.step(state.global_step)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if self.tracker is None or not logs:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        if state.epoch is not None:
            values["epoch"] = float(state.epoch)
        self.tracker.log(**values)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()
