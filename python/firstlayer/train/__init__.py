"""Training networks with true and random labels, and recording their first layers.

:func:`train` trains one of the paper's architectures (CIFAR-style VGG11/13/16 with batch norm,
ResNet20/32/56, ResNet18), a small CNN for CPU runs, the theory's linear CNN or any torchvision
classifier, on any source :mod:`firstlayer.sources` reads, with true, randomly permuted, uniformly
drawn or partly corrupted labels, and writes a run directory (see :mod:`firstlayer.train.runs`):
options, labels, the first layer before and after training and at chosen steps, metrics per epoch
and checkpoints from which a killed run resumes to the same result. ``firstlayer train`` on the
command line (:mod:`firstlayer.cli.train`) takes the same options.

Defaults follow the paper's code: plain SGD, learning rate 0.01, batch 256, no augmentation,
the last incomplete batch dropped. Importing this package imports torch; ``import firstlayer``
does not.

Examples
--------
>>> from firstlayer.train import train
>>> res = train(arch="small_cnn", dataset="sample", labels="random", epochs=1,
...             batch_size=64, out_dir="runs/sample-random", quiet=True)  # doctest: +SKIP
>>> res.first_layer_final.shape  # doctest: +SKIP
(32, 3, 3, 3)
"""

from __future__ import annotations

import sys
import types
from typing import Any

from firstlayer.train.config import TrainConfig
from firstlayer.train.data import LABEL_MODES, load_dataset, make_labels
from firstlayer.train.loop import TrainResult, train
from firstlayer.train.models import ARCHITECTURES, build_model, first_conv
from firstlayer.train.runs import RunDir

__all__ = [
    "ARCHITECTURES",
    "LABEL_MODES",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "first_conv",
    "load_dataset",
    "make_labels",
    "train",
]


class _CallableModule(types.ModuleType):
    """Lets ``firstlayer.train(...)`` call :func:`train` although ``firstlayer.train`` is this
    package (a submodule attribute always wins over a function of the same name)."""

    def __call__(self, **kwargs: Any) -> TrainResult:
        return train(**kwargs)


sys.modules[__name__].__class__ = _CallableModule
