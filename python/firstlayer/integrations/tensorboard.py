"""TensorBoard scalars and images of the first layer while it trains.

:class:`TensorBoardWriter` is an ``on_snapshot`` listener of :func:`firstlayer.track`: at every
snapshot it computes the energy profile of the change from the initial layer in the PCA basis of
the patch statistics you give it, fits the linear-CNN theory to it, and writes

* ``firstlayer/eta_t``: the fitted ``eta * t``;
* ``firstlayer/fit_r``: the Pearson correlation of the profile with the fitted formula;
* ``firstlayer/profile``: the profile and the fitted curve as an image (the same figure as a
  report's theory fit, drawn by :mod:`firstlayer._display`).

It runs in the tracker's writer thread, never on the training step. Needs ``tensorboard``
(through ``torch.utils.tensorboard``) and matplotlib for the image.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from firstlayer._display import draw_fit, figure_rgb
from firstlayer._validate import type_error
from firstlayer.profile import energy_profile
from firstlayer.stats import PatchStats
from firstlayer.theory import fit

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter:
    """Write the theory fit of each snapshot to TensorBoard.

    Parameters
    ----------
    writer : torch.utils.tensorboard.SummaryWriter or str or path-like
        A writer (e.g. a Lightning ``TensorBoardLogger``'s ``.experiment``) or a log folder.
    stats : PatchStats
        Statistics of the patches as the network sees them (``PatchStats.normalized`` with the
        model's input normalisation).
    images : bool
        Also write the profile as an image (needs matplotlib).
    tag : str
        Prefix of the tags.
    """

    def __init__(
        self, writer: Any, stats: PatchStats, *, images: bool = True, tag: str = "firstlayer"
    ) -> None:
        if not isinstance(stats, PatchStats):
            raise type_error("stats", "a PatchStats", stats)
        if isinstance(writer, str | os.PathLike):
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.fspath(writer))
        if not hasattr(writer, "add_scalar"):
            raise type_error("writer", "a SummaryWriter or a log folder", writer)
        self.writer = writer
        self.stats = stats
        self.images = images
        self.tag = tag

    def __call__(self, step: int, weight: np.ndarray, init: np.ndarray) -> None:
        """Write the fit of the layer ``weight`` after ``step`` steps (``init``: at step 0)."""
        if step == 0 or np.array_equal(weight, init):
            return  # no change from the initialisation yet: nothing to fit
        profile = energy_profile(weight, self.stats, init=init)
        result = fit(profile, self.stats)
        self.writer.add_scalar(f"{self.tag}/eta_t", result.eta_t, step)
        self.writer.add_scalar(f"{self.tag}/fit_r", result.correlation, step)
        if self.images:
            title = f"step {step}: eta*t = {result.eta_t:.4g}, r = {result.correlation:.4f}"
            fig = draw_fit(profile, result.curve, title)
            self.writer.add_image(f"{self.tag}/profile", figure_rgb(fig), step, dataformats="HWC")
        self.writer.flush()
