"""firstlayer inside other people's training frameworks, each imported only when used.

* :mod:`~firstlayer.integrations.lightning`: ``FirstLayerCallback``, a PyTorch Lightning
  callback that records the run folder of :func:`firstlayer.track`;
* :mod:`~firstlayer.integrations.transformers`: ``FirstLayerTrainerCallback``, the same for a
  Hugging Face ``transformers.Trainer``;
* :mod:`~firstlayer.integrations.tensorboard`: ``TensorBoardWriter``, the fitted ``eta*t``, the
  theory fit's ``r`` and the energy profile as an image at every snapshot.

Each needs its package (``lightning``, ``transformers`` with ``accelerate``, ``tensorboard``);
importing this package imports none of them.
"""

from __future__ import annotations

__all__: list[str] = []
