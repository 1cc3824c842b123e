"""The models a report compares: run directories, checkpoints, state dicts, torchvision names.

Every input is resolved to a :class:`ModelInput`: its first-layer weights, its initial weights when
known (run directories keep them), the input normalisation it saw when known, and provenance
(seed, labels, files and their SHA-256).

Input forms (``spec``):

* ``DIR``: a run directory written by ``firstlayer train`` (``config.json``,
  ``first_layer_final.npy``, optionally ``first_layer_init.npy``);
* ``FILE``: a checkpoint or state dict (``.pth``, ``.pt``, ``.ckpt``, ``.bin``), an ``.npz`` of
  arrays or an ``.npy`` filter bank ``(F, C, k, k)``;
* ``FILE:KEY``: one layer (module path or state-dict key) of such a file, e.g.
  ``pretrained_first_layers.npz:resnet18``;
* ``ARCH=FILE``: a torchvision architecture with a local weights file (loaded strictly and traced);
* ``ARCH``: a torchvision architecture with its pretrained weights from the local torch hub cache
  (``$TORCH_HOME/hub/checkpoints``); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "NORMALIZATIONS",
    "ModelInput",
    "Normalization",
    "file_sha256",
    "parse_normalization",
    "resolve_model",
    "resolve_models",
]

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".npz", ".npy", ".safetensors")
_RUN_FINAL = "first_layer_final.npy"
_RUN_INIT = "first_layer_init.npy"
_RUN_CONFIG = "config.json"
_RUN_RESULT = "result.json"
_RUN_META = (
    "arch",
    "dataset",
    "labels",
    "corrupt",
    "label_seed",
    "epochs",
    "seed",
    "lr",
    "batch_size",
    "width",
    "freeze_first",
)


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalisation ``(x * scale - mean) / std`` applied by a network.

    Attributes
    ----------
    name : str
        A preset name (``"none"``, ``"imagenet"``, ``"cifar10"``) or ``"custom"``.
    mean, std : tuple of float
        One value per channel, or a single value for all channels.
    scale : float
        Applied to ``uint8`` pixels first (``1/255``).
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255

    @property
    def key(self) -> str:
        """A short identifier used in group names and file names."""
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
        }


#: Named normalisations: ``none`` maps pixels to [0, 1]; the others are the usual presets.
NORMALIZATIONS: dict[str, Normalization] = {
    "none": Normalization("none", (0.0,), (1.0,)),
    "imagenet": Normalization("imagenet", IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": Normalization("cifar10", CIFAR10_MEAN, CIFAR10_STD),
}


def parse_normalization(text: str) -> Normalization | None:
    """Parse a normalisation option.

    Parameters
    ----------
    text : str
        ``"auto"`` (returns None: decided per model), a preset (``none``, ``imagenet``,
        ``cifar10``) or ``"M1,M2,M3/S1,S2,S3"`` (mean and std of pixels scaled to [0, 1]).

    Returns
    -------
    Normalization or None

    Raises
    ------
    ValueError
        For an unknown name or malformed numbers.
    """
    key = text.strip().lower()
    if key == "auto":
        return None
    if key in NORMALIZATIONS:
        return NORMALIZATIONS[key]
    if "/" in key:
        m, s = key.split("/", 1)
        try:
            mean = tuple(float(v) for v in m.split(","))
            std = tuple(float(v) for v in s.split(","))
        except ValueError:
            mean = std = ()
        if mean and std and all(v != 0 for v in std):
            return Normalization("custom", mean, std)
    msg = f"normalize: expected auto, {', '.join(NORMALIZATIONS)} or MEAN,../STD,.., got {text!r}"
    raise ValueError(msg)


def _normalization_from_config(config: dict[str, Any]) -> Normalization | None:
    """Return the normalisation a run recorded, under any of the usual keys."""
    for key in ("normalize", "normalization", "input_normalization"):
        value = config.get(key)
        if isinstance(value, str):  # a preset name
            try:
                return parse_normalization(value)
            except ValueError:
                return None
        if isinstance(value, dict) and "mean" in value and "std" in value:
            return Normalization(
                str(value.get("name", "custom")),
                tuple(float(v) for v in np.atleast_1d(value["mean"])),
                tuple(float(v) for v in np.atleast_1d(value["std"])),
                float(value.get("scale", 1 / 255)),
            )
    if config.get("mean") is not None and config.get("std") is not None:
        return Normalization(
            "run",
            tuple(float(v) for v in np.atleast_1d(config["mean"])),
            tuple(float(v) for v in np.atleast_1d(config["std"])),
        )
    return None


@dataclass(frozen=True)
class ModelInput:
    """One network's first layer, ready for a report.

    Attributes
    ----------
    name : str
        Display name (unique within a report).
    spec : str
        The input as given.
    kind : str
        ``"run"``, ``"checkpoint"``, ``"array"`` or ``"torchvision"``.
    weight : numpy.ndarray
        (F, C, k, k) float64 final weights.
    init : numpy.ndarray or None
        (F, C, k, k) initial weights, when known.
    layer : str
        Layer name or key the weights came from.
    normalization : Normalization or None
        The input normalisation the network saw, when known.
    meta : dict
        Seed, labels, architecture, dataset, epochs... when known.
    files : dict
        Path -> SHA-256 of every file read.
    """

    name: str
    spec: str
    kind: str
    weight: np.ndarray
    init: np.ndarray | None
    layer: str
    normalization: Normalization | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def kernel_size(self) -> int:
        """Filter side ``k``."""
        return int(self.weight.shape[2])

    @property
    def channels(self) -> int:
        """Input channels ``C``."""
        return int(self.weight.shape[1])


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bank(w: Any, what: str) -> np.ndarray:
    arr = np.asarray(w, dtype=np.float64)
    if arr.ndim != 4:
        msg = f"{what}: expected first-layer weights of shape (F, C, k, k), got {arr.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(arr)):
        msg = f"{what}: the weights hold NaN or infinite values"
        raise ValueError(msg)
    return arr


def _from_run(path: Path, spec: str) -> ModelInput:
    final = path / _RUN_FINAL
    if not final.is_file():
        msg = f"{spec}: a run directory needs {_RUN_FINAL}; it is missing (is the run finished?)"
        raise FileNotFoundError(msg)
    config: dict[str, Any] = {}
    files = {}
    cfg = path / _RUN_CONFIG
    if cfg.is_file():
        try:
            config = json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            msg = f"{cfg}: not valid JSON ({exc})"
            raise ValueError(msg) from exc
        files[str(cfg)] = file_sha256(cfg)
    weight = _bank(np.load(final, allow_pickle=False), str(final))
    files[str(final)] = file_sha256(final)
    init = None
    init_path = path / _RUN_INIT
    if init_path.is_file():
        init = _bank(np.load(init_path, allow_pickle=False), str(init_path))
        if init.shape != weight.shape:
            msg = f"{init_path}: shape {init.shape} differs from the final weights {weight.shape}"
            raise ValueError(msg)
        files[str(init_path)] = file_sha256(init_path)
    # firstlayer.train writes {"options": {...}, "derived": {...}}; accept flat files too.
    options = config.get("options", config) if isinstance(config.get("options"), dict) else config
    derived = config.get("derived", {}) if isinstance(config.get("derived"), dict) else {}
    meta: dict[str, Any] = {
        k: options[k]
        for k in _RUN_META
        if k in options and isinstance(options[k], str | int | float | bool | type(None))
    }
    result = path / _RUN_RESULT
    meta["complete"] = result.is_file()
    if result.is_file():
        try:
            last = json.loads(result.read_text()).get("final", {})
        except (json.JSONDecodeError, AttributeError):
            last = {}
        for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
            if isinstance(last, dict) and isinstance(last.get(k), int | float):
                meta[k] = last[k]
        files[str(result)] = file_sha256(result)
    layer = derived.get("first_layer", {})
    layer_name = layer.get("module") if isinstance(layer, dict) else None
    norm = _normalization_from_config(derived) or _normalization_from_config(options)
    return ModelInput(
        name=path.resolve().name,
        spec=spec,
        kind="run",
        weight=weight,
        init=init,
        layer=str(layer_name or "first layer"),
        normalization=norm,
        meta=meta,
        files=files,
    )


def _from_file(path: Path, spec: str, key: str | None, arch: str | None) -> ModelInput:
    from firstlayer.filters import first_layer

    if path.suffix == ".npy":
        weight = _bank(np.load(path, allow_pickle=False), str(path))
        layer = path.name
        kind = "array"
    else:
        fl = first_layer(path, name=key, arch=arch)
        weight = _bank(fl.weight, spec)
        layer = fl.name
        kind = "torchvision" if arch is not None else "checkpoint"
    if key is not None:
        name = key
    elif arch is not None:
        name = arch
    else:
        name = path.stem
    meta: dict[str, Any] = {"arch": arch} if arch is not None else {}
    return ModelInput(
        name=name,
        spec=spec,
        kind=kind,
        weight=weight,
        init=None,
        layer=layer,
        normalization=NORMALIZATIONS["imagenet"] if arch is not None else None,
        meta=meta,
        files={str(path): file_sha256(path)},
    )


def _hub_weights(arch: str) -> Path:
    """Find the cached pretrained weights of a torchvision architecture (never downloaded)."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{arch}-*.pth")) if folder.is_dir() else []
    if not found:
        msg = (
            f"{arch}: no pretrained weights in {folder} (nothing is downloaded); pass "
            f"{arch}=PATH with a local weights file"
        )
        raise FileNotFoundError(msg)
    return found[-1]


def _is_arch_name(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c == "_" for c in text)


def resolve_model(spec: str) -> ModelInput:
    """Resolve one input of ``firstlayer compare`` (see the module docstring for the forms).

    Parameters
    ----------
    spec : str
        A run directory, a file, ``FILE:KEY``, ``ARCH=FILE`` or ``ARCH``.

    Returns
    -------
    ModelInput

    Raises
    ------
    FileNotFoundError
        If a path does not exist or a torchvision name has no local weights.
    ValueError
        If the input holds no usable first layer.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_run(path, spec)
    if path.is_file():
        return _from_file(path, spec, None, None)
    if "=" in spec:
        arch, _, weights = spec.partition("=")
        if _is_arch_name(arch):
            wpath = Path(weights).expanduser()
            if not wpath.is_file():
                msg = f"{spec}: no such weights file: {weights}"
                raise FileNotFoundError(msg)
            return _from_file(wpath, spec, None, arch)
    if ":" in spec:
        file, _, key = spec.rpartition(":")
        fpath = Path(file).expanduser()
        if fpath.is_file() and key:
            return _from_file(fpath, spec, key, None)
    if _is_arch_name(spec) and not spec.lower().endswith(_CHECKPOINT_SUFFIXES):
        import torchvision  # type: ignore[import-untyped,unused-ignore]

        if spec in torchvision.models.list_models():
            return _from_file(_hub_weights(spec), spec, None, spec)
        msg = f"{spec}: neither an existing run directory or file nor a torchvision model name"
        raise FileNotFoundError(msg)
    msg = f"{spec}: no such run directory or file"
    raise FileNotFoundError(msg)


#: Files a folder of checkpoints contributes to a zoo comparison.
ZOO_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npy", ".npz")


def expand_zoo(spec: str) -> list[str]:
    """The model inputs one command-line input stands for.

    A folder that is not a run directory (it has no ``first_layer_final.npy``) stands for every
    checkpoint in it (``ZOO_SUFFIXES``, sorted by name; run directories inside it count too), and
    an ``.npz`` file given without ``:KEY`` that holds several 4-D arrays stands for each of them
    (``FILE:KEY``). Anything else is itself.
    """
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / _RUN_FINAL).is_file():
        found = sorted(
            p
            for p in path.iterdir()
            if (p.is_file() and p.suffix in ZOO_SUFFIXES) or (p / _RUN_FINAL).is_file()
        )
        if not found:
            msg = (
                f"{spec}: a folder that is neither a run directory (no {_RUN_FINAL}) nor holds "
                f"checkpoints ({', '.join(ZOO_SUFFIXES)})"
            )
            raise FileNotFoundError(msg)
        return [one for p in found for one in expand_zoo(str(p))]
    if path.is_file() and path.suffix == ".npz":
        from firstlayer._io import read_npz

        banks = [k for k, v in read_npz(path, "weights").items() if np.ndim(v) == 4]
        if len(banks) > 1:
            return [f"{spec}:{k}" for k in sorted(banks)]
    return [spec]


def resolve_models(specs: list[str], names: list[str] | None = None) -> list[ModelInput]:
    """Resolve several inputs and give them unique display names.

    Parameters
    ----------
    specs : list of str
        Inputs as for :func:`resolve_model`.
    names : list of str, optional
        Display names, one per input.

    Returns
    -------
    list of ModelInput

    Raises
    ------
    ValueError
        If ``names`` does not have one entry per input.
    """
    if names is not None and len(names) != len(specs):
        msg = f"names: expected one display name per input ({len(specs)}), got {len(names)}"
        raise ValueError(msg)
    if names is None:  # a zoo: folders of checkpoints and multi-layer .npz files, each model
        specs = [one for spec in specs for one in expand_zoo(spec)]
    models = [resolve_model(s) for s in specs]
    out: list[ModelInput] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(models):
        base = names[i] if names is not None else m.name
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        out.append(_renamed(m, name))
    return out


def _renamed(m: ModelInput, name: str) -> ModelInput:
    return ModelInput(
        name=name,
        spec=m.spec,
        kind=m.kind,
        weight=m.weight,
        init=m.init,
        layer=m.layer,
        normalization=m.normalization,
        meta=m.meta,
        files=m.files,
    )
