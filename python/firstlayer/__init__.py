"""firstlayer: what CNNs learn in their first layer, and why.

Exact patch statistics computed by a Rust core, energy profiles of any network's first layer,
the linear-CNN theory of Chowers & Weiss (ICML 2023), training and reports. ``import firstlayer``
loads only numpy and the compiled core; torch and matplotlib are imported when first needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from firstlayer._core import __version__
from firstlayer.spectrum import ImageSpectrum, dft2, image_spectrum
from firstlayer.stats import PCA, PatchStats, patch_stats

# Names served lazily from modules that import torch or are large: name -> module.
_LAZY = {
    # modules
    "theory": "firstlayer.theory",
    "sources": "firstlayer.sources",
    "filters": "firstlayer.filters",
    "profile": "firstlayer.profile",
    "whitening": "firstlayer.whitening",
    "report": "firstlayer.report",
    "distributed": "firstlayer.distributed",
    "reproduce": "firstlayer.reproduce",
    # the patches themselves
    "extract_patches": "firstlayer.extract",
    "iter_patches": "firstlayer.extract",
    "train": "firstlayer.train",  # a callable package: firstlayer.train(...) trains
    # first layers and energy profiles
    "FirstLayer": "firstlayer.filters",
    "first_layer": "firstlayer.filters",
    "energy_profile": "firstlayer.profile",
    "dft_profile": "firstlayer.profile",
    "profile_correlation": "firstlayer.profile",
    "correlation_matrix": "firstlayer.profile",
    "DFTProfile": "firstlayer.profile",
    "radial_average": "firstlayer.profile",
    "whitening_filters": "firstlayer.whitening",
    "init_first_layer": "firstlayer.whitening",
    # datasets
    "load_sample": "firstlayer.sources",
    "open_source": "firstlayer.sources",
    "ImageDecodeError": "firstlayer.sources",
    "DatasetNotFoundError": "firstlayer.sources",
    "UnsafePickleError": "firstlayer.cifar_reader",
}

__all__ = [
    "PCA",
    "ImageSpectrum",
    "PatchStats",
    "__version__",
    "dft2",
    "image_spectrum",
    "patch_stats",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name] == f"firstlayer.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    msg = f"module 'firstlayer' has no attribute {name!r}"
    raise AttributeError(msg)
