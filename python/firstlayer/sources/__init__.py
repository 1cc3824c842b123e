"""Every input kind as a stream of image batches.

A *source* is anything a user holds images in: a torch ``Dataset`` or ``DataLoader``, a
torchvision dataset, a folder of image files, a ``.npy`` file, the original CIFAR python batches,
or a dataset name (``"cifar10"``, ``"sample"``, ...). :func:`open_source` turns it into a
:class:`Source`, which yields :class:`Step` s: a few C-contiguous ``uint8`` (or float) arrays
with their labels, and the number of source items they account for.
:func:`firstlayer.streaming.stream_stats` feeds the steps to ``PatchStats.update``.

One module per concern:

* :mod:`~firstlayer.sources.base`: ``Part``, ``Step``, ``Source`` and the array sources;
* :mod:`~firstlayer.sources.decode`: image files to arrays (``DecodeOptions``, Pillow, Rust);
* :mod:`~firstlayer.sources.files`: lists and folders of image files;
* :mod:`~firstlayer.sources.formats`: ``.npy``, ``.npz``, CIFAR batches, MNIST IDX files,
  with the safe CIFAR unpickler in :mod:`~firstlayer.sources.cifar_pickle`;
* :mod:`~firstlayer.sources.torch_data`: torch datasets, loaders and other iterables;
* :mod:`~firstlayer.sources.datasets`: dataset names, downloads, the bundled sample;
* :mod:`~firstlayer.sources.open`: :func:`open_source`, which picks one of the above.
"""

from __future__ import annotations

from firstlayer.sources.base import ArraySource, ChainSource, Layout, OnError, Part, Source, Step
from firstlayer.sources.datasets import DATASET_NAMES, dataset_source, load_sample, sample_path
from firstlayer.sources.decode import DecodeOptions, center_crop_array, decode_image, decode_options
from firstlayer.sources.files import IMAGE_EXTENSIONS, FileListSource, image_folder
from firstlayer.sources.formats import cifar_source, npy_source, npz_source, read_idx
from firstlayer.sources.open import open_source
from firstlayer.sources.torch_data import IterableSource, MapDatasetSource

__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "ChainSource",
    "DecodeOptions",
    "FileListSource",
    "IterableSource",
    "Layout",
    "MapDatasetSource",
    "OnError",
    "Part",
    "Source",
    "Step",
    "center_crop_array",
    "cifar_source",
    "dataset_source",
    "decode_image",
    "decode_options",
    "image_folder",
    "load_sample",
    "npy_source",
    "npz_source",
    "open_source",
    "read_idx",
    "sample_path",
]
