"""First-layer weights of any network: modules, state dicts, checkpoint files, torchvision names.

The first layer is the convolution *applied to the input*. For a module it is found by running a
forward pass with hooks on every ``Conv2d`` and stopping at the first one that is called, so the
registration order of submodules does not matter. A state dict has no forward pass: the known stem
names are tried first (``conv1``, ``features.0``, ViT ``conv_proj``, ...), then
the first 4D weight; pass ``arch=`` to trace the real architecture instead: a torchvision name
(``"vit_b_16"``), ``"timm:<name>"`` (``timm.create_model(name, pretrained=False)``) or
``"open_clip:<name>"`` (``open_clip.create_model(name, pretrained=None)``, its visual tower).
Files: ``.pth``/``.pt``/``.ckpt``/``.bin`` (``torch.load(weights_only=True)``), ``.safetensors``
(the ``safetensors`` package) and ``.npz``.

torch (and torchvision) are imported inside the functions that need them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer._arrays import is_torch_tensor
from firstlayer._io import read_npy, read_npz
from firstlayer.profile import _host_array

__all__ = ["FirstLayer", "first_layer"]

# Keys under which checkpoints nest their state dict (plain training scripts, Lightning, timm).
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "model_ema")
# Prefixes added by DataParallel/DDP, torch.compile and wrapper modules.
_PREFIXES = ("module.", "_orig_mod.", "model.")
# First layers of common families, tried before the dict-order fallback.
_STEM_KEYS = (
    "conv1.weight",  # torchvision ResNet/ResNeXt/Wide-ResNet, many CIFAR nets
    "features.0.weight",  # VGG, AlexNet, SqueezeNet
    "features.0.0.weight",  # MobileNet, EfficientNet, ConvNeXt, Swin (torchvision)
    "features.conv0.weight",  # DenseNet
    "conv1.conv.weight",  # GoogLeNet
    "Conv2d_1a_3x3.conv.weight",  # Inception v3
    "conv_proj.weight",  # torchvision ViT
    "patch_embed.proj.weight",  # timm ViT / DeiT / Swin
    "embeddings.patch_embeddings.projection.weight",  # Hugging Face ViT
    "vit.embeddings.patch_embeddings.projection.weight",
    "transformer.embeddings.patch_embeddings.weight",  # the paper's ViT code
    "_conv_stem.weight",  # efficientnet_pytorch
    "visual.conv1.weight",  # open_clip ViT and ModifiedResNet visual towers
    "visual.trunk.patch_embed.proj.weight",  # open_clip towers built on timm ViTs
    "visual.trunk.stem.0.weight",  # open_clip towers built on timm ConvNeXts
    "conv_stem.weight",  # timm EfficientNet / MobileNet
    "stem.conv.weight",
    "stem.0.weight",
)


@dataclass(frozen=True)
class FirstLayer:
    """The first layer of a network.

    Attributes
    ----------
    weight : numpy.ndarray
        (F, C, kh, kw) copy of the weights in their stored precision (float32, or float64 if
        stored so; half precision is widened to float64, exactly), patch order (c, i, j).
    name : str
        Module path (``"conv1"``) for a module, the tensor key (``"conv1.weight"``) otherwise.
    bias : numpy.ndarray or None
        (F,) bias when the layer has one.
    stride : tuple of int or None
        Known for modules only.
    padding : tuple of int or str or None
        Known for modules only.
    kind : str
        ``"patch_embedding"`` when the stride equals the kernel size (ViT-style patchify),
        ``"conv"`` otherwise (or when unknown).
    """

    weight: np.ndarray
    name: str
    bias: np.ndarray | None = None
    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | str | None = None
    kind: str = "conv"

    @property
    def kernel_size(self) -> int:
        """Spatial size ``kh`` of the filters."""
        return int(self.weight.shape[2])

    @property
    def in_channels(self) -> int:
        """Number of input channels ``C``."""
        return int(self.weight.shape[1])


def _tensor_copy(t: Any, name: str) -> np.ndarray:
    """A numpy copy of a tensor on any device; half precision comes back as float64 (exact)."""
    return _host_array(t, name).copy()


def _is_module(x: Any) -> bool:
    return hasattr(x, "named_modules") and hasattr(x, "forward")


def first_layer(
    obj: Any,
    *,
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    name: str | None = None,
    arch: str | None = None,
    example_input: Any = None,
    input_size: int = 224,
) -> FirstLayer:
    """Return the first-layer weights of a network.

    Parameters
    ----------
    obj : nn.Module, state dict, checkpoint path, torchvision model name, or array
        * an ``nn.Module``: traced with a forward pass; the first ``Conv2d`` called wins;
        * a state dict or checkpoint dict (nested ``state_dict``/``model`` keys and ``module.``
          prefixes are handled);
        * a path to a ``.pth``/``.pt``/``.ckpt``/``.bin`` file (loaded with
          ``torch.load(weights_only=True)``) or to a ``.npz`` of arrays;
        * a torchvision model name such as ``"resnet18"``, with ``weights=`` a local file;
        * a (F, C, k, k) array or tensor, returned as is.
    weights : path or state dict, optional
        Weights for a torchvision model name (required with a name; never downloaded).
    name : str, optional
        Pick a layer explicitly: a module path for modules, a key (with or without
        ``.weight``) for state dicts and ``.npz`` files.
    arch : str, optional
        torchvision architecture of a state dict or checkpoint: build it, load the weights and
        trace it instead of guessing from key names.
    example_input : torch.Tensor, optional
        Input for the traced forward pass; default zeros of shape
        ``(1, in_channels, input_size, input_size)``.
    input_size : int
        Spatial size of the default example input.

    Returns
    -------
    FirstLayer
        ``.weight`` (F, C, k, k) and ``.name``, plus bias, stride and padding when known.

    Raises
    ------
    ValueError
        If no convolution is applied to the input, a named layer or key does not exist, a file
        cannot be read with ``weights_only=True``, or a name is not a torchvision model.
    TypeError
        If ``obj`` is of an unsupported type.

    Examples
    --------
    >>> import torchvision  # doctest: +SKIP
    >>> first_layer(torchvision.models.resnet18()).name  # doctest: +SKIP
    'conv1'
    """
    if isinstance(obj, np.ndarray) or is_torch_tensor(obj):
        w = _tensor_copy(obj, "obj") if is_torch_tensor(obj) else np.array(obj, copy=True)
        _check_bank(w, "obj")
        return FirstLayer(weight=w, name=name or "weight")
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_file():
            return _from_file(
                path, name=name, arch=arch, example_input=example_input, input_size=input_size
            )
        if isinstance(obj, str) and (
            obj.startswith(_LIBRARY_PREFIXES) or (os.sep not in obj and "." not in obj)
        ):
            if weights is None:
                msg = (
                    f"weights: a model name ({obj!r}) needs a local weights file "
                    "or state dict (nothing is downloaded), got None"
                )
                raise ValueError(msg)
            return _from_arch(
                obj, weights, name=name, example_input=example_input, input_size=input_size
            )
        msg = f"obj: expected an existing checkpoint file or a torchvision model name, got {obj!r}"
        raise ValueError(msg)
    if isinstance(obj, Mapping):
        if arch is not None:
            return _from_arch(
                arch, obj, name=name, example_input=example_input, input_size=input_size
            )
        return _from_state_dict(obj, name=name)
    if _is_module(obj):
        return _from_module(obj, name=name, example_input=example_input, input_size=input_size)
    msg = (
        "obj: expected an nn.Module, a state dict, a checkpoint path, a torchvision model name "
        f"or a (F, C, k, k) array, got {type(obj).__name__}"
    )
    raise TypeError(msg)


def _check_bank(w: np.ndarray, what: str) -> None:
    if w.ndim != 4:
        msg = f"{what}: expected first-layer weights of shape (F, C, k, k), got {tuple(w.shape)}"
        raise ValueError(msg)


# --- modules ------------------------------------------------------------------------------------


class _FoundFirstConv(Exception):
    """Raised by the hook to stop the forward pass at the first convolution."""


def _layer_from_conv(module: Any, path: str) -> FirstLayer:
    w = _tensor_copy(module.weight, f"module {path!r} weight")
    _check_bank(w, f"module {path!r} weight")
    bias = getattr(module, "bias", None)
    stride = tuple(getattr(module, "stride", ())) or None
    pad = getattr(module, "padding", None)
    padding = pad if isinstance(pad, str) else (tuple(pad) if pad is not None else None)
    ks = tuple(w.shape[2:])
    kind = "patch_embedding" if stride is not None and stride == ks and ks != (1, 1) else "conv"
    return FirstLayer(
        weight=w,
        name=path,
        bias=None if bias is None else _tensor_copy(bias, f"module {path!r} bias"),
        stride=stride,
        padding=padding,
        kind=kind,
    )


def _probe(model: Any, convs: dict[Any, str], x: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """Run ``model(x)`` until the first Conv2d is called; return [(conv, its input)] and x."""
    import torch

    seen: list[tuple[Any, Any]] = []

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        seen.append((module, args[0] if args else None))
        raise _FoundFirstConv

    handles = [m.register_forward_pre_hook(hook) for m in convs]
    was_training = model.training
    model.eval()  # no BatchNorm statistics are touched by the probe
    try:
        with torch.no_grad():
            model(x)
    except _FoundFirstConv:
        pass
    except Exception as exc:
        msg = (
            f"model: the probing forward pass on an input of shape {tuple(x.shape)} failed "
            f"({type(exc).__name__}: {exc}); pass example_input= with a valid input, or name="
        )
        raise ValueError(msg) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen, x


def _from_module(
    model: Any, *, name: str | None, example_input: Any, input_size: int
) -> FirstLayer:
    import torch

    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            msg = f"name: expected a module path of the model, got {name!r} (close: {close})"
            raise ValueError(msg)
        if getattr(modules[name], "weight", None) is None:
            msg = f"name: module {name!r} has no weight ({type(modules[name]).__name__})"
            raise ValueError(msg)
        return _layer_from_conv(modules[name], name)

    convs = {m: path for path, m in modules.items() if isinstance(m, torch.nn.Conv2d)}
    if not convs:
        msg = (
            "model: expected a network with a Conv2d (or a ViT conv patch embedding) on its input, "
            f"found none among its {len(modules)} modules ({type(model).__name__})"
        )
        raise ValueError(msg)
    if example_input is not None:
        seen, x = _probe(model, convs, example_input)
    else:
        params = list(model.parameters())
        dtype = params[0].dtype if params else torch.float32
        device = params[0].device if params else torch.device("cpu")
        # Image channels are unknown: try 3 (RGB), 1, then the convs' own input widths.
        widths = dict.fromkeys([3, 1, *(m.in_channels for m in convs)])
        for ch in widths:
            x = torch.zeros((1, ch, input_size, input_size), dtype=dtype, device=device)
            try:
                seen, x = _probe(model, convs, x)
            except ValueError:
                if ch == list(widths)[-1]:
                    raise
                continue
            if seen and seen[0][1] is not None and seen[0][1].shape[1] == seen[0][0].in_channels:
                break
    if not seen:
        msg = (
            f"model: no convolution was applied during the forward pass of {type(model).__name__} "
            "(its Conv2d modules are never called on the input); pass name= to pick a layer"
        )
        raise ValueError(msg)
    module, inp = seen[0]
    path = convs[module]
    # The first conv must see the input itself (or a same-shaped, e.g. normalised, copy): a conv
    # after a Linear, a pooling or a reshape is not a first layer on pixels.
    if inp is None or (inp is not x and tuple(inp.shape) != tuple(x.shape)):
        got = None if inp is None else tuple(inp.shape)
        msg = (
            f"model: no convolution is applied to the input: the first one called, {path!r}, "
            f"receives shape {got} while the input has shape {tuple(x.shape)}; pass name= "
            "to pick a layer anyway"
        )
        raise ValueError(msg)
    if inp.shape[1] != module.in_channels:
        msg = (
            f"model: the first convolution {path!r} expects {module.in_channels} input channels, "
            f"the example input has {inp.shape[1]}; pass example_input= with the right shape"
        )
        raise ValueError(msg)
    return _layer_from_conv(module, path)


# --- state dicts and files ----------------------------------------------------------------------


def _unwrap_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Follow nested checkpoint keys and strip wrapper prefixes shared by every key."""
    tensors: dict[str, Any] = {}
    for _ in range(4):  # checkpoints nest at most a couple of levels
        tensors = {k: v for k, v in sd.items() if is_torch_tensor(v) or isinstance(v, np.ndarray)}
        if tensors:
            break
        nested = next((sd[k] for k in _NESTED_KEYS if isinstance(sd.get(k), Mapping)), None)
        if nested is None:
            if any(_is_module(sd.get(k)) for k in _NESTED_KEYS):
                msg = "obj: the checkpoint holds a pickled module; pass the module itself instead"
                raise ValueError(msg)
            msg = (
                "obj: expected a state dict of tensors (or one nested under "
                f"{list(_NESTED_KEYS)}), got keys {list(sd)[:8]}"
            )
            raise ValueError(msg)
        sd = nested
    if not tensors:
        msg = "obj: expected a state dict of tensors, found no tensor"
        raise ValueError(msg)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                changed = True
    return tensors


def _as_array(v: Any, key: str) -> np.ndarray:
    return _tensor_copy(v, key) if is_torch_tensor(v) else np.asarray(v)


def _from_state_dict(sd: Mapping[str, Any], *, name: str | None) -> FirstLayer:
    tensors = _unwrap_state_dict(sd)
    if name is not None:
        for key in (name, f"{name}.weight"):
            if key in tensors:
                w = _as_array(tensors[key], key)
                _check_bank(w, f"key {key!r}")
                return _with_bias(w, key, tensors)
        close = difflib.get_close_matches(name, list(tensors), n=3)
        msg = f"name: expected a key of the state dict, got {name!r} (close: {close})"
        raise ValueError(msg)
    for key in _STEM_KEYS:
        if key in tensors and np.ndim(tensors[key]) == 4:
            return _with_bias(_as_array(tensors[key], key), key, tensors)
    for key, v in tensors.items():
        if key.endswith("weight") and np.ndim(v) == 4 and "float" in str(v.dtype):
            return _with_bias(_as_array(v, key), key, tensors)
    msg = f"obj: expected a 4D convolution weight in the state dict, none among {len(tensors)} keys"
    raise ValueError(msg)


def _with_bias(w: np.ndarray, key: str, tensors: Mapping[str, Any]) -> FirstLayer:
    bias_key = key[: -len("weight")] + "bias" if key.endswith("weight") else None
    bias = tensors.get(bias_key) if bias_key else None
    ks = tuple(w.shape[2:])
    return FirstLayer(
        weight=w.astype(np.float64) if w.dtype == np.float16 else w,
        name=key,
        bias=None if bias is None else _as_array(bias, bias_key or key),
        kind="patch_embedding" if "patch" in key and ks != (1, 1) else "conv",
    )


def _load_checkpoint(path: Path) -> Mapping[str, Any]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = (
            f"obj: {str(path)!r} cannot be loaded with torch.load(weights_only=True) (it pickles "
            "code or objects); load it yourself if you trust it and pass the model or state dict"
        )
        raise ValueError(msg) from exc
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        # KeyError/ValueError: torch's restricted unpickler on bytes that are no pickle.
        msg = f"obj: {str(path)!r} is not a readable PyTorch checkpoint ({exc!r})"
        raise ValueError(msg) from exc
    if not isinstance(obj, Mapping):
        msg = f"obj: expected {str(path)!r} to hold a state dict, got {type(obj).__name__}"
        raise ValueError(msg)
    return obj


def _load_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file (torch tensors: bfloat16 and half included)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as exc:
        msg = f"obj: reading {path.name} needs the safetensors package (pip install safetensors)"
        raise ValueError(msg) from exc
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError) as exc:
        msg = f"obj: {str(path)!r} is not a readable .safetensors file ({exc})"
        raise ValueError(msg) from exc


def _from_file(
    path: Path, *, name: str | None, arch: str | None, example_input: Any, input_size: int
) -> FirstLayer:
    if path.suffix == ".safetensors":
        tensors = _load_safetensors(path)
        if arch is not None:
            return _from_arch(
                arch, tensors, name=name, example_input=example_input, input_size=input_size
            )
        return _from_state_dict(tensors, name=name)
    if path.suffix == ".npy":  # a plain array of weights (F, C, k, k), never a pickle
        w = read_npy(path, "obj").astype(np.float64)
        _check_bank(w, f"obj ({path})")
        return FirstLayer(weight=w, name=name or path.stem)
    if path.suffix == ".npz":
        arrays = read_npz(path, "weights .npz")
        if name is None and len(arrays) > 1:
            msg = f"name: {path.name} holds several arrays, pick one of {sorted(arrays)}"
            raise ValueError(msg)
        return _from_state_dict(arrays, name=name)
    sd = _load_checkpoint(path)
    if arch is not None:
        return _from_arch(arch, sd, name=name, example_input=example_input, input_size=input_size)
    return _from_state_dict(sd, name=name)


#: Prefixes of model names built by other libraries than torchvision.
_LIBRARY_PREFIXES = ("timm:", "open_clip:")


def build_model(arch: str) -> tuple[Any, Any]:
    """Build an architecture without weights: ``(model, the module whose first layer counts)``.

    ``arch`` is a torchvision name (``"vit_b_16"``), ``"timm:<name>"`` or ``"open_clip:<name>"``
    (its visual tower is traced). Nothing is downloaded.
    """
    if arch.startswith("timm:"):
        import timm

        name = arch[len("timm:") :]
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            msg = f"arch: expected a timm model name, got {name!r} (close: {close})"
            raise ValueError(msg)
        model = timm.create_model(name, pretrained=False)
        return model, model
    if arch.startswith("open_clip:"):
        import open_clip

        name = arch[len("open_clip:") :]
        available = open_clip.list_models()
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            msg = f"arch: expected an open_clip model name, got {name!r} (close: {close})"
            raise ValueError(msg)
        model = open_clip.create_model(name, pretrained=None)
        return model, model.visual
    import torchvision

    available = torchvision.models.list_models()
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=3)
        msg = (
            "arch: expected a torchvision model name, 'timm:<name>' or 'open_clip:<name>', "
            f"got {arch!r} (close: {close})"
        )
        raise ValueError(msg)
    model = torchvision.models.get_model(arch, weights=None)
    return model, model


def _from_arch(
    arch: str, weights: Any, *, name: str | None, example_input: Any, input_size: int
) -> FirstLayer:
    model, traced = build_model(arch)
    sd = weights
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            msg = f"weights: expected an existing weights file, got {str(weights)!r}"
            raise ValueError(msg)
        sd = _load_safetensors(path) if path.suffix == ".safetensors" else _load_checkpoint(path)
    if not isinstance(sd, Mapping):
        msg = f"weights: expected a path or a state dict, got {type(weights).__name__}"
        raise TypeError(msg)
    tensors = _unwrap_state_dict(sd)
    # A state dict of the visual tower alone loads into the tower (open_clip saves both forms).
    target = model
    if traced is not model and not any(k.startswith("visual.") for k in tensors):
        target = traced
    try:
        target.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        msg = f"weights: the state dict does not match {arch!r} ({exc})"
        raise ValueError(msg) from exc
    size = input_size
    if example_input is None and traced is not model:
        size = _tower_input_size(traced, input_size)
    return _from_module(traced, name=name, example_input=example_input, input_size=size)


def _tower_input_size(tower: Any, default: int) -> int:
    """The image size an open_clip visual tower was built for (ViTs need exactly that)."""
    size = getattr(tower, "image_size", None)
    if isinstance(size, (tuple, list)) and size:
        return int(size[0])
    return int(size) if isinstance(size, int) else default
