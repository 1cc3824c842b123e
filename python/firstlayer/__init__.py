"""firstlayer: what CNNs learn in their first layer, and why.

Exact patch statistics computed by a Rust core, energy profiles of any network's first layer,
the linear-CNN theory of Chowers & Weiss (ICML 2023), training and reports. ``import firstlayer``
loads only the compiled core; every other name is imported when first used, and torch and
matplotlib only by the functions that need them.

The package follows the data: :mod:`~firstlayer.sources` (anything holding images, as batches)
-> :mod:`~firstlayer.streaming` (``patch_stats``: batches through the Rust kernels) ->
:mod:`~firstlayer.stats` (``PatchStats``) -> analysis (:mod:`~firstlayer.profile`,
:mod:`~firstlayer.theory`, :mod:`~firstlayer.whitening`, :mod:`~firstlayer.filters`) ->
:mod:`~firstlayer.report`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from firstlayer._core import __version__

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
    from firstlayer.exceptions import DatasetNotFoundError, ImageDecodeError, UnsafePickleError
    from firstlayer.extract import extract_patches, iter_patches
    from firstlayer.filters import FirstLayer, first_layer
    from firstlayer.models import input_normalization, strided_profiles, zoo_table
    from firstlayer.profile import (
        DFTProfile,
        correlation_matrix,
        dft_profile,
        energy_profile,
        profile_correlation,
        radial_average,
    )
    from firstlayer.sources import load_sample, open_source
    from firstlayer.spectrum import ImageSpectrum, dft2, image_spectrum
    from firstlayer.stats import PCA, PatchStats
    from firstlayer.streaming import patch_stats
    from firstlayer.trajectory import compare_runs
    from firstlayer.whitening import init_first_layer, whitening_filters

# Every public name but __version__, served lazily: name -> the module defining it (a name equal
# to its module's last part is the module itself).
_LAZY = {
    # modules, along the flow
    "exceptions": "firstlayer.exceptions",
    "constants": "firstlayer.constants",
    "sources": "firstlayer.sources",
    "stats": "firstlayer.stats",
    "checkpoint": "firstlayer.checkpoint",
    "spectrum": "firstlayer.spectrum",
    "streaming": "firstlayer.streaming",
    "extract": "firstlayer.extract",
    "profile": "firstlayer.profile",
    "theory": "firstlayer.theory",
    "whitening": "firstlayer.whitening",
    "filters": "firstlayer.filters",
    "train": "firstlayer.train",  # a callable package: firstlayer.train(...) trains
    "track": "firstlayer.train.tracker",  # firstlayer.track(model, out_dir=...) (imports torch)
    "distributed": "firstlayer.distributed",
    "report": "firstlayer.report",
    "reproduce": "firstlayer.reproduce",
    "models": "firstlayer.models",
    "trajectory": "firstlayer.trajectory",
    "integrations": "firstlayer.integrations",
    # patch statistics
    "PatchStats": "firstlayer.stats",
    "PCA": "firstlayer.stats",
    "patch_stats": "firstlayer.streaming",
    "extract_patches": "firstlayer.extract",
    "iter_patches": "firstlayer.extract",
    "ImageSpectrum": "firstlayer.spectrum",
    "dft2": "firstlayer.spectrum",
    "image_spectrum": "firstlayer.spectrum",
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
    # errors
    "ImageDecodeError": "firstlayer.exceptions",
    "DatasetNotFoundError": "firstlayer.exceptions",
    "UnsafePickleError": "firstlayer.exceptions",
    # models people study today, and training trajectories
    "input_normalization": "firstlayer.models",
    "strided_profiles": "firstlayer.models",
    "zoo_table": "firstlayer.models",
    "compare_runs": "firstlayer.trajectory",
}

# Every lazy name but those whose import imports torch (``train``, ``reproduce``), so that
# ``from firstlayer import *`` stays light; tests/test_stats.py checks both.
__all__ = [
    "PCA",
    "DFTProfile",
    "DatasetNotFoundError",
    "FirstLayer",
    "ImageDecodeError",
    "ImageSpectrum",
    "PatchStats",
    "UnsafePickleError",
    "__version__",
    "checkpoint",
    "compare_runs",
    "constants",
    "correlation_matrix",
    "dft2",
    "dft_profile",
    "distributed",
    "energy_profile",
    "exceptions",
    "extract",
    "extract_patches",
    "filters",
    "first_layer",
    "image_spectrum",
    "init_first_layer",
    "input_normalization",
    "integrations",
    "iter_patches",
    "load_sample",
    "models",
    "open_source",
    "patch_stats",
    "profile",
    "profile_correlation",
    "radial_average",
    "report",
    "sources",
    "spectrum",
    "stats",
    "streaming",
    "strided_profiles",
    "theory",
    "trajectory",
    "whitening",
    "whitening_filters",
    "zoo_table",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name] == f"firstlayer.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    msg = f"module 'firstlayer' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
