"""Networks to train: CIFAR-style VGG and ResNet, a small fast CNN, the theory's linear CNN, and
any torchvision classifier by name.

Every network built here has its first layer (the convolution applied to the input) registered
first, under ``conv1`` (VGG: ``features.0``), so :func:`firstlayer.filters.first_layer` finds it in
the saved state dicts. Channel counts scale with ``width`` (rounded, at least 1);
``first_width`` sets the number of first-layer filters alone, as in the paper's width experiment.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import Module

__all__ = ["ARCHITECTURES", "TORCHVISION_PREFIX", "build_model", "first_conv", "known_arch"]

#: Prefix selecting a torchvision classifier by name, e.g. ``"torchvision:resnet18"``.
TORCHVISION_PREFIX = "torchvision:"

_VGG_CFG: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
    ],
}  # fmt: skip

#: Architectures built by firstlayer (torchvision ones are named ``"torchvision:<name>"``).
ARCHITECTURES = (
    "small_cnn",
    "linear_cnn",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet18",
)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _small_cnn(c_in: int, n_out: int, width: float, first: int | None, k: int) -> Module:
    f1 = first if first is not None else _scaled(32, width)
    c2, c3 = _scaled(64, width), _scaled(128, width)

    class SmallCNN(nn.Module):
        """conv(k)-BN-ReLU-pool, conv3-BN-ReLU-pool, conv3-BN-ReLU, global pool, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, f1, k, padding=k // 2, bias=False)
            self.body = nn.Sequential(
                nn.BatchNorm2d(f1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Conv2d(f1, c2, 3, padding=1, bias=False),
                nn.BatchNorm2d(c2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Conv2d(c2, c3, 3, padding=1, bias=False),
                nn.BatchNorm2d(c3),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.fc = nn.Linear(c3, n_out)

        def forward(self, x: Any) -> Any:
            return self.fc(self.body(self.conv1(x)))

    return SmallCNN()


def _linear_cnn(c_in: int, n_out: int, width: float, first: int | None, k: int) -> Module:
    f1 = first if first is not None else _scaled(64, width)

    class LinearCNN(nn.Module):
        """The theory's linear CNN: conv (valid, no bias), global average pool, linear readout."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, f1, k, bias=False)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(f1, n_out, bias=False)

        def forward(self, x: Any) -> Any:
            return self.fc(self.pool(self.conv1(x)))

    return LinearCNN()


def _vgg(name: str, c_in: int, n_out: int, width: float, first: int | None, k: int) -> Module:
    layers: list[Any] = []
    prev = c_in
    for i, v in enumerate(_VGG_CFG[name]):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = first if (i == 0 and first is not None) else _scaled(int(v), width)
        ks = k if i == 0 else 3
        layers += [
            nn.Conv2d(prev, out, ks, padding=ks // 2, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        prev = out

    class VGG(nn.Module):
        """CIFAR-style VGG with batch norm: conv stack, global pool, one linear classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(prev, n_out)

        def forward(self, x: Any) -> Any:
            return self.classifier(self.pool(self.features(x)))

    return VGG()


def _resnet(
    stages: list[tuple[int, int, int]],
    stem: int,
    c_in: int,
    n_out: int,
    width: float,
    first: int | None,
    k: int,
) -> Module:
    """ResNet with basic blocks; ``stages`` lists ``(channels, blocks, stride)``."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv_a = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn_a = nn.BatchNorm2d(cout)
            self.conv_b = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn_b = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:  # projection shortcut ("option B")
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: Any) -> Any:
            y = self.relu(self.bn_a(self.conv_a(x)))
            return self.relu(self.bn_b(self.conv_b(y)) + self.shortcut(x))

    f1 = first if first is not None else _scaled(stem, width)
    blocks: list[Any] = []
    prev = f1
    for channels, n, stride in stages:
        cout = _scaled(channels, width)
        for b in range(n):
            blocks.append(Block(prev, cout, stride if b == 0 else 1))
            prev = cout

    class ResNet(nn.Module):
        """CIFAR-style ResNet: 3x3 stem (no max pool), basic blocks, global pool, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, f1, k, padding=k // 2, bias=False)
            self.bn1 = nn.BatchNorm2d(f1)
            self.relu = nn.ReLU(inplace=True)
            self.layers = nn.Sequential(*blocks)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(prev, n_out)

        def forward(self, x: Any) -> Any:
            return self.fc(self.pool(self.layers(self.relu(self.bn1(self.conv1(x))))))

    return ResNet()


def _cifar_resnet(n: int) -> Callable[..., Module]:
    def build(c_in: int, n_out: int, width: float, first: int | None, k: int) -> Module:
        stages = [(16, n, 1), (32, n, 2), (64, n, 2)]
        return _resnet(stages, 16, c_in, n_out, width, first, k)

    return build


def _resnet18(c_in: int, n_out: int, width: float, first: int | None, k: int) -> Module:
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return _resnet(stages, 64, c_in, n_out, width, first, k)


_BUILDERS: dict[str, Callable[..., Module]] = {
    "small_cnn": _small_cnn,
    "linear_cnn": _linear_cnn,
    "resnet20": _cifar_resnet(3),
    "resnet32": _cifar_resnet(5),
    "resnet56": _cifar_resnet(9),
    "resnet18": _resnet18,
}
for _name in _VGG_CFG:
    _BUILDERS[_name] = lambda *a, _n=_name: _vgg(_n, *a)


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm  # type: ignore[import-untyped]

    return sorted(tvm.list_models(module=tvm))


def known_arch(arch: Any) -> str:
    """Validate an architecture name and return it in canonical form.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`, or ``"torchvision:<name>"`` for a torchvision classifier.

    Returns
    -------
    str

    Raises
    ------
    TypeError
        ``arch`` is not a string.
    ValueError
        Unknown name (close matches are suggested).
    """
    if not isinstance(arch, str):
        msg = f"arch: expected a string such as 'small_cnn', got {type(arch).__name__}"
        raise TypeError(msg)
    key = arch.strip().lower()
    if key in _BUILDERS:
        return key
    if key.startswith(TORCHVISION_PREFIX):
        name = key[len(TORCHVISION_PREFIX) :]
        names = _torchvision_names()
        if name in names:
            return TORCHVISION_PREFIX + name
        close = difflib.get_close_matches(name, names, n=3)
        hint = ""
        if close:
            hint = f"; did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?"
        msg = f"arch: {arch!r} is not a torchvision classification model{hint}"
        raise ValueError(msg)
    close = difflib.get_close_matches(key, list(_BUILDERS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    msg = (
        f"arch: expected one of {', '.join(ARCHITECTURES)} or 'torchvision:<name>', "
        f"got {arch!r}{hint}"
    )
    raise ValueError(msg)


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    first_width: int | None = None,
    kernel_size: int | None = None,
) -> Module:
    """Build an untrained network (parameters drawn from torch's current RNG state).

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES` or ``"torchvision:<name>"``.
    num_classes : int
        Outputs of the classifier.
    in_channels : int
        Image channels (torchvision models accept only 3).
    width : float
        Multiplier of every channel count (firstlayer's architectures only).
    first_width : int, optional
        Number of first-layer filters (firstlayer's architectures only).
    kernel_size : int, optional
        First-layer kernel size (default 3; firstlayer's architectures only).

    Returns
    -------
    torch.nn.Module
    """
    key = known_arch(arch)
    if key.startswith(TORCHVISION_PREFIX):
        custom = {"width": width != 1.0, "first_width": first_width, "kernel_size": kernel_size}
        bad = [k for k, v in custom.items() if v]
        if bad:
            msg = (
                f"{bad[0]}: not supported for torchvision models ({arch!r}); expected the "
                f"default, got {width if bad[0] == 'width' else custom[bad[0]]!r}"
            )
            raise ValueError(msg)
        if in_channels != 3:
            msg = (
                f"in_channels: torchvision models ({arch!r}) expect 3-channel images, got "
                f"{in_channels}"
            )
            raise ValueError(msg)
        import torchvision.models as tvm  # type: ignore[import-untyped]

        return tvm.get_model(key[len(TORCHVISION_PREFIX) :], weights=None, num_classes=num_classes)
    return _BUILDERS[key](
        in_channels, num_classes, width, first_width, 3 if kernel_size is None else kernel_size
    )


def first_conv(model: Module, input_shape: tuple[int, int, int]) -> Any:
    """The ``Conv2d`` applied to the input: the first one called in a forward pass.

    Parameters
    ----------
    model : torch.nn.Module
    input_shape : tuple of int
        ``(C, H, W)`` of one image, for the tracing forward pass.

    Returns
    -------
    torch.nn.Conv2d
    """
    found: list[Any] = []

    class _Stop(Exception):
        pass

    def hook(module: Any, args: Any) -> None:
        found.append(module)
        raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if type(m) is nn.Conv2d]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not found:
        msg = f"model: expected a network with a Conv2d applied to the input, got {type(model)}"
        raise ValueError(msg)
    return found[0]
