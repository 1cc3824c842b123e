"""The scales of the reproduction, the experiments, and the training runs each scale needs.

:data:`SCALES` holds the three settings (``tiny``, ``small``, ``paper``); :func:`runs` names the
training runs of a scale by role; :func:`plan` lists the runs a choice of experiments needs and
estimates their CPU time. Nothing here trains, loads data or imports torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "CPU_SECONDS_PER_EPOCH",
    "EXPERIMENTS",
    "NEEDS",
    "SCALES",
    "Run",
    "Scale",
    "check_only",
    "check_scale",
    "plan",
    "runs",
]

#: Experiment number -> title.
EXPERIMENTS: dict[int, str] = {
    1: "Consistency across seeds and first-layer widths (Table 1)",
    2: "Trained versus initialisation (Table 1)",
    3: "Across architectures: VGG versus ResNet (Table 1)",
    4: "True versus random labels (Table 2)",
    5: "The linear-CNN formula fitted to trained networks; the exact linear CNN (Table 3)",
    6: "The assumption: labels versus patch PCA coefficients (Fig. 5)",
    7: "The formula fitted to pretrained ImageNet first layers (Table 3)",
    8: "Beyond the paper: DFT basis, and the fitted step count during training",
}


@dataclass(frozen=True)
class Scale:
    """Settings of one scale of the reproduction.

    Attributes
    ----------
    name : str
        ``tiny``, ``small`` or ``paper``.
    data : str
        ``sample`` (the bundled CIFAR-10 sample), ``exact`` (the exact CIFAR-10 subset of
        ``cifar10_exact_subset.npz``) or ``full`` (all 60,000 images of ``cifar10_jpeg_q75.npz``).
    n_train, n_test : int or None
        Training / held-out images (None: all; ``n_test=0``: no held-out set).
    main_arch, main_width : str, float
        Network of experiments 1, 2, 4, 5 and 8, and its width multiplier.
    seeds : tuple of int
        Seeds of the main network (true and random labels).
    first_widths : tuple of int
        First-layer widths compared with the default (experiment 1), trained with the first seed.
    arch_pair : tuple of (str, float)
        The VGG-style and the ResNet-style network of experiment 3 and their widths.
    arch_seeds : tuple of int
        Seeds of each network of experiment 3.
    epochs, random_epochs, arch_epochs : int
        Epochs of the main true-label runs, the random-label runs and the experiment 3 runs.
    batch_size, lr, momentum : int, float, float
        SGD settings of every run.
    snapshots : int
        First-layer snapshots per run (log-spaced steps), for experiment 8.
    linear_images, linear_steps : int
        Images and full-batch gradient steps of the exact linear-CNN simulation.
    label_images : int
        Images of the label/PCA-coefficient check (experiment 6).
    natural_size : int
        Side to which CIFAR images are upsampled when no natural photographs are at hand.
    minutes : float
        Rough expected wall time on the intended hardware (documentation only).
    channels_last : bool
        Channels-last memory format in training (faster on GPUs; on CPUs the narrow networks of
        the smaller scales run faster without it).
    """

    name: str
    data: str
    n_train: int | None
    n_test: int | None
    main_arch: str
    main_width: float
    seeds: tuple[int, ...]
    first_widths: tuple[int, ...]
    arch_pair: tuple[tuple[str, float], ...]
    arch_seeds: tuple[int, ...]
    epochs: int
    random_epochs: int
    arch_epochs: int
    batch_size: int
    lr: float
    momentum: float
    snapshots: int
    linear_images: int
    linear_steps: int
    label_images: int
    natural_size: int
    minutes: float
    channels_last: bool = False

    def key(self) -> str:
        """Hash of every setting: experiments computed under other settings are not reused."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: The three scales. ``small`` is built to reach the regime the paper reads its numbers in:
#: networks that fit their labels, random ones included, with profiles that have settled
#: (:data:`firstlayer.trajectory.SETTLE_RULE`). On the 5,085 exact CIFAR-10 images the random-label
#: small CNN reaches only 31% training accuracy after 60 epochs (2,340 steps) and its profile is
#: still moving, so ``small`` trains on the first 1,024 of them, a set a small CNN can memorise.
#: Measured on this project's machine (small CNN, batch 64, lr 0.01, momentum 0.9, one thread):
#: with random labels 44% training accuracy after 40 epochs, 99% after 130, 100% from 160; the
#: profile's change over the last 20% of steps is 3.2% at epoch 132, 2.1% at 162 and 0.6% at 200.
#: With true labels 76% after 40 epochs (profile still changing by 6-8%), 99.8% after 120 with
#: a change of 1.7%. So true labels train for 120 epochs (1,920 steps), random ones for 200
#: (3,200 steps), the VGG/ResNet pair for 40.
SCALES: dict[str, Scale] = {
    "tiny": Scale(
        name="tiny", data="sample", n_train=384, n_test=0,
        main_arch="small_cnn", main_width=0.5, seeds=(0, 1), first_widths=(8,),
        arch_pair=(("vgg11_bn", 0.125), ("resnet20", 0.5)), arch_seeds=(0,),
        epochs=2, random_epochs=2, arch_epochs=1, batch_size=64, lr=0.01, momentum=0.9,
        snapshots=5, linear_images=256, linear_steps=60, label_images=384, natural_size=64,
        minutes=1.5,
    ),
    "small": Scale(
        name="small", data="exact", n_train=1024, n_test=256,
        main_arch="small_cnn", main_width=1.0, seeds=(0, 1, 2), first_widths=(16, 64),
        arch_pair=(("vgg11_bn", 0.25), ("resnet20", 0.5)), arch_seeds=(0, 1),
        epochs=120, random_epochs=200, arch_epochs=40, batch_size=64, lr=0.01, momentum=0.9,
        snapshots=16, linear_images=1024, linear_steps=300, label_images=1024, natural_size=128,
        minutes=35.0,
    ),
    "paper": Scale(
        name="paper", data="full", n_train=None, n_test=None,
        main_arch="vgg11_bn", main_width=1.0, seeds=(0, 1, 2), first_widths=(32, 128),
        arch_pair=(("vgg11_bn", 1.0), ("resnet18", 1.0)), arch_seeds=(0, 1, 2),
        epochs=100, random_epochs=100, arch_epochs=100, batch_size=256, lr=0.01, momentum=0.0,
        snapshots=24, linear_images=10000, linear_steps=1000, label_images=10000,
        natural_size=224, minutes=24 * 60.0, channels_last=True,
    ),
}  # fmt: skip


def check_scale(scale: Any) -> Scale:
    """The :class:`Scale` named ``scale``, or a ValueError naming the argument."""
    if not isinstance(scale, str) or scale not in SCALES:
        msg = f"scale: expected one of {', '.join(SCALES)}, got {scale!r}"
        raise ValueError(msg)
    return SCALES[scale]


def check_only(only: Any) -> list[int]:
    """The experiment numbers ``only`` names (all when None), sorted and without repeats."""
    if only is None:
        return sorted(EXPERIMENTS)
    items = [only] if isinstance(only, int) and not isinstance(only, bool) else only
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        msg = f"only: expected an experiment number 1-8 or a list of them, got {only!r}"
        raise TypeError(msg)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v not in EXPERIMENTS:
            msg = f"only: expected experiment numbers among 1-8, got {v!r}"
            raise ValueError(msg)
        out.append(v)
    return sorted(set(out))


@dataclass(frozen=True)
class Run:
    """One training run of a scale: its folder name under ``runs/`` and its settings."""

    name: str
    arch: str
    width: float
    first_width: int | None
    labels: str
    seed: int
    epochs: int


def runs(scale: Scale) -> dict[str, list[Run]]:
    """The training runs of ``scale``, by role (``true``, ``random``, ``width``, ``arch_a/b``)."""
    a, w = scale.main_arch, scale.main_width

    def mk(arch: str, width: float, fw: int | None, labels: str, seed: int, ep: int) -> Run:
        fws = "" if fw is None else f"-f{fw}"
        return Run(f"{arch}-w{width:g}{fws}-{labels}-s{seed}", arch, width, fw, labels, seed, ep)

    return {
        "true": [mk(a, w, None, "true", s, scale.epochs) for s in scale.seeds],
        "random": [mk(a, w, None, "random", s, scale.random_epochs) for s in scale.seeds],
        "width": [mk(a, w, f, "true", scale.seeds[0], scale.epochs) for f in scale.first_widths],
        "arch_a": [
            mk(scale.arch_pair[0][0], scale.arch_pair[0][1], None, "true", s, scale.arch_epochs)
            for s in scale.arch_seeds
        ],
        "arch_b": [
            mk(scale.arch_pair[1][0], scale.arch_pair[1][1], None, "true", s, scale.arch_epochs)
            for s in scale.arch_seeds
        ],
    }


#: Roles of runs each experiment needs.
NEEDS: dict[int, tuple[str, ...]] = {
    1: ("true", "width"),
    2: ("true",),
    3: ("arch_a", "arch_b"),
    4: ("true", "random"),
    5: ("true", "random", "arch_a", "arch_b"),
    6: (),
    7: (),
    8: ("true", "random"),
}

#: Seconds per epoch of 5,085 CIFAR images on 2 CPU cores, measured on this project's machines;
#: used only for :func:`plan`. At the small scale (batch 64, 1,024 images plus 256 evaluated, one
#: thread, other jobs sharing the cores) an epoch took the small CNN 1.0-3.2 s (5-16 s per 5,085;
#: about 1.4 s typically), VGG11-bn at width 0.25 1.1 s and ResNet20 at width 0.5 3.4 s; the
#: earlier rates at batch 128 were 22, 25 and 45 s under heavier contention.
CPU_SECONDS_PER_EPOCH = {"small_cnn": 8.0, "vgg11_bn": 8.0, "resnet20": 25.0}


def plan(scale: str, only: int | Sequence[int] | None = None) -> dict[str, Any]:
    """The training runs a scale needs and, for CPU scales, an estimate of their time.

    Parameters
    ----------
    scale : {"tiny", "small", "paper"}
    only : int or sequence of int, optional
        Experiments to plan for (default all).

    Returns
    -------
    dict
        ``runs`` (name, epochs, estimated seconds or None) and ``estimated_seconds`` (None when
        a network has no CPU timing, e.g. at the paper scale).
    """
    sc = check_scale(scale)
    chosen = check_only(only)
    roles = {r for n in chosen for r in NEEDS[n]}
    images = {"sample": 1017, "exact": 5085, "full": 50000}[sc.data]
    n = images if sc.n_train is None else min(sc.n_train, images)
    planned: dict[str, dict[str, Any]] = {}
    for role, items in runs(sc).items():
        if role not in roles:
            continue
        for r in items:
            rate = CPU_SECONDS_PER_EPOCH.get(r.arch)
            est = None if rate is None or sc.name == "paper" else rate * r.epochs * n / 5085
            planned[r.name] = {"epochs": r.epochs, "estimated_seconds": est}
    ests = [v["estimated_seconds"] for v in planned.values()]
    total = None if any(e is None for e in ests) else float(sum(ests)) + 120.0
    return {"scale": sc.name, "experiments": chosen, "runs": planned, "estimated_seconds": total}
