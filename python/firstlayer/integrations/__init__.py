"""firstlayer inside other people's training frameworks, each imported only when used.

* :mod:`~firstlayer.integrations.lightning`: ``FirstLayerCallback``, a PyTorch Lightning
  callback that records the run folder of :func:`firstlayer.track`;
* :mod:`~firstlayer.integrations.tensorboard`: ``TensorBoardWriter``, the fitted ``eta*t``, the
  theory fit's ``r`` and the energy profile as an image at every snapshot.

Each needs its package (``pip install lightning`` / ``pip install tensorboard``); importing
this package imports neither.
"""

from __future__ import annotations

__all__: list[str] = []
