"""Patch-embedding layers as first-class citizens: the models people study today.

* :func:`input_normalization`: the normalisation a model expects of its input, from the model
  where it says (timm's ``pretrained_cfg``, open_clip's ``preprocess_cfg``, torchvision's weights
  meta) or from the user, ready for :meth:`firstlayer.PatchStats.normalized`;
* :func:`strided_profiles`: the energy profile of a strided first layer (a ViT's patchify, a
  ConvNeXt stem, AlexNet's stride 4) both in the PCA basis of all stride-1 patches (the paper's)
  and in that of the patches the layer actually sees (stride = the layer's stride), labelled;
* :func:`zoo_table`: many first layers grouped by patch geometry ``(k, stride, C)``, with the
  paper's cross-architecture table per group (correlations between every pair of profiles, each
  model's theory fit) as data.

Models are built by their own libraries (``torchvision.models.vit_b_16(weights=None)``,
``timm.create_model(name, pretrained=False)``, ``open_clip.create_model(name, pretrained=None)``);
:func:`firstlayer.first_layer` reads their first layer. torch, timm and open_clip are imported
only inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firstlayer.filters import FirstLayer, first_layer
from firstlayer.profile import correlation_matrix, energy_profile
from firstlayer.stats import PatchStats

__all__ = [
    "InputNormalization",
    "StridedProfiles",
    "ZooGroup",
    "input_normalization",
    "strided_profiles",
    "zoo_table",
]


@dataclass(frozen=True)
class InputNormalization:
    """The per-channel normalisation ``(x * scale - mean) / std`` a model expects.

    Attributes
    ----------
    mean, std : tuple of float
        One value per input channel (on pixels scaled to [0, 1]).
    source : str
        Where it came from (``"timm pretrained_cfg"``, ``"open_clip preprocess_cfg"``,
        ``"torchvision weights meta (...)"``, ``"user"``).
    scale : float
        Applied to ``uint8`` pixels first.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    scale: float = 1 / 255

    def apply(self, stats: PatchStats) -> PatchStats:
        """``stats`` of the images as the model saw them (:meth:`PatchStats.normalized`)."""
        return stats.normalized(self.mean, self.std, scale=self.scale)


def _floats(name: str, value: Any) -> tuple[float, ...]:
    a = np.asarray(value, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)):
        msg = f"{name}: expected one or more finite numbers (one per channel), got {value!r}"
        raise ValueError(msg)
    return tuple(float(v) for v in a)


def _from_cfg(cfg: Any) -> tuple[Any, Any] | None:
    if isinstance(cfg, Mapping) and cfg.get("mean") is not None and cfg.get("std") is not None:
        return cfg["mean"], cfg["std"]
    return None


def _torchvision_meta(arch: str | None, model: Any) -> tuple[Any, Any, str] | None:
    """Mean and std of torchvision's classification weights for ``arch`` (a name), or for every
    architecture of the torchvision module that defines ``model``'s class when they all agree."""
    import torchvision

    if arch is not None:
        names = [arch]
    elif model is not None and type(model).__module__.startswith("torchvision.models"):
        # Builders live in the module that defines their classes (vision_transformer, ...).
        where = type(model).__module__
        names = [
            n
            for n in torchvision.models.list_models()
            if getattr(torchvision.models.get_model_builder(n), "__module__", None) == where
        ]
    else:
        return None
    found = set()
    for name in names:
        try:
            enum = torchvision.models.get_model_weights(name)
        except (ValueError, KeyError):
            continue
        for w in enum:
            t = w.transforms()
            if hasattr(t, "mean") and hasattr(t, "std"):
                found.add((tuple(t.mean), tuple(t.std)))
    if len(found) != 1:
        return None
    mean, std = found.pop()
    where = arch or type(model).__name__
    return mean, std, f"torchvision weights meta ({where})"


def input_normalization(
    model: Any = None,
    *,
    arch: str | None = None,
    mean: Any = None,
    std: Any = None,
) -> InputNormalization:
    """The input normalisation a model expects, for :meth:`PatchStats.normalized`.

    Parameters
    ----------
    model : nn.Module, optional
        A timm model (its ``pretrained_cfg``), an open_clip model or visual tower (its
        ``preprocess_cfg``), or a torchvision model (the weights meta of its architecture family,
        when all its weights agree, as they do for ImageNet classification).
    arch : str, optional
        A torchvision model name (``"vit_b_16"``): the meta of its weights.
    mean, std : sequence of float, optional
        Given by the user: they win over anything the model says.

    Returns
    -------
    InputNormalization

    Raises
    ------
    ValueError
        If only one of ``mean`` and ``std`` is given, or neither the user nor the model says.
    """
    if (mean is None) != (std is None):
        msg = f"mean, std: expected both or neither, got mean={mean!r}, std={std!r}"
        raise ValueError(msg)
    if mean is not None:
        return InputNormalization(_floats("mean", mean), _floats("std", std), "user")
    if model is not None:
        got = _from_cfg(getattr(model, "pretrained_cfg", None))
        if got is not None:
            return InputNormalization(
                _floats("mean", got[0]), _floats("std", got[1]), "timm pretrained_cfg"
            )
        for holder in (model, getattr(model, "visual", None)):
            got = _from_cfg(getattr(holder, "preprocess_cfg", None))
            if got is not None:
                m, s = _floats("mean", got[0]), _floats("std", got[1])
                return InputNormalization(m, s, "open_clip preprocess_cfg")
    meta = _torchvision_meta(arch, model) if (arch is not None or model is not None) else None
    if meta is not None:
        return InputNormalization(_floats("mean", meta[0]), _floats("std", meta[1]), meta[2])
    what = type(model).__name__ if model is not None else repr(arch)
    msg = (
        f"model: the input normalisation of {what} is unknown (no timm pretrained_cfg, open_clip "
        "preprocess_cfg or torchvision weights meta); pass mean= and std="
    )
    raise ValueError(msg)


# --- strided layers ----------------------------------------------------------------------------


def _stride_of(layer: Any, stride: int | None) -> int:
    if stride is not None:
        return int(stride)
    s = getattr(layer, "stride", None)
    if s is None:
        msg = (
            "stride: the layer does not say its stride (a state-dict key or an array); pass "
            "stride= (16 for a ViT-B/16 patch embedding)"
        )
        raise ValueError(msg)
    if len(set(s)) != 1:
        msg = f"stride: expected the same stride along both axes, got {tuple(s)}"
        raise ValueError(msg)
    return int(s[0])


@dataclass(frozen=True)
class StridedProfiles:
    """Energy profiles of one first layer in two PCA bases.

    Attributes
    ----------
    stride : int
        The layer's stride (the one its patches are taken at).
    dense : numpy.ndarray
        (p,) profile in the PCA basis of all stride-1 patches (the paper's measure).
    seen : numpy.ndarray
        (p,) profile in the PCA basis of the stride-``stride`` patches the layer sees.
    dense_stats, seen_stats : PatchStats
        The statistics each basis came from (as the network saw them: normalised).
    labels : dict
        ``{"dense": ..., "seen": ...}``: what each profile is, for tables and plots.
    """

    stride: int
    dense: np.ndarray
    seen: np.ndarray
    dense_stats: PatchStats
    seen_stats: PatchStats
    labels: dict[str, str] = field(default_factory=dict)


def strided_profiles(
    layer: Any,
    images: Any = None,
    *,
    stride: int | None = None,
    normalization: InputNormalization | None = None,
    dense_stats: PatchStats | None = None,
    seen_stats: PatchStats | None = None,
    normalize: Any = "max",
    **options: Any,
) -> StridedProfiles:
    """Profile of a strided first layer in the PCA bases of stride-1 and of stride-``s`` patches.

    Parameters
    ----------
    layer : FirstLayer, (F, C, k, k) array, or anything :func:`firstlayer.first_layer` reads
        The filter bank; a module's :class:`FirstLayer` knows its stride.
    images : any source :func:`firstlayer.patch_stats` reads, optional
        Where both statistics come from (unless given as ``dense_stats``/``seen_stats``).
    stride : int, optional
        The stride of the patches the layer sees (default: the layer's own).
    normalization : InputNormalization, optional
        Applied to statistics computed here (``images``); statistics passed in are used as they
        are (normalise them first).
    dense_stats, seen_stats : PatchStats, optional
        Precomputed statistics at stride 1 and at ``stride``.
    normalize : {"max", "sum", "l2", None}
        Profile normalisation (:func:`firstlayer.energy_profile`).
    **options
        Passed to :func:`firstlayer.patch_stats` (``layout``, ``batch_size``...).

    Returns
    -------
    StridedProfiles
    """
    fl = layer if isinstance(layer, FirstLayer) else first_layer(layer)
    s = _stride_of(fl, stride)
    k, c = fl.kernel_size, fl.in_channels
    if (dense_stats is None or seen_stats is None) and images is None:
        msg = "images: expected a source of images, or both dense_stats and seen_stats"
        raise ValueError(msg)

    def compute(at: int) -> PatchStats:
        from firstlayer.streaming import patch_stats

        st = patch_stats(images, kernel_size=k, stride=at, **options)
        return normalization.apply(st) if normalization is not None else st

    dense = dense_stats if dense_stats is not None else compute(1)
    seen = seen_stats if seen_stats is not None else (dense if s == 1 else compute(s))
    for name, st, want in (("dense_stats", dense, 1), ("seen_stats", seen, s)):
        if (st.kernel_size, st.channels) != (k, c) or st.stride != want:
            msg = (
                f"{name}: expected statistics of {c}x{k}x{k} patches at stride {want}, got "
                f"{st.channels}x{st.kernel_size}x{st.kernel_size} at stride {st.stride}"
            )
            raise ValueError(msg)
    labels = {
        "dense": f"PCA basis of all stride-1 {c}x{k}x{k} patches (the paper's)",
        "seen": f"PCA basis of the stride-{s} patches the layer sees",
    }
    dense_profile = energy_profile(fl.weight, dense, normalize=normalize)
    # The same patches (one window per image, e.g. k = 32 on 32 x 32 images): the same basis,
    # without a second eigendecomposition (3,072 dimensions take seconds).
    same = seen is dense or (
        seen.count == dense.count
        and np.array_equal(seen.mean, dense.mean)
        and np.array_equal(seen.covariance, dense.covariance)
    )
    return StridedProfiles(
        stride=s,
        dense=dense_profile,
        seen=dense_profile.copy() if same else energy_profile(fl.weight, seen, normalize=normalize),
        dense_stats=dense,
        seen_stats=seen,
        labels=labels,
    )


# --- zoo ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooGroup:
    """Models of one patch geometry and the paper's cross-architecture table for them.

    Attributes
    ----------
    kernel_size, stride, channels : int
        The geometry (stride 1 where a model does not say, e.g. a state-dict key).
    names : list of str
        The models, in the order given.
    profiles : numpy.ndarray
        (m, p) energy profiles in the PCA basis of the group's statistics.
    correlations : numpy.ndarray
        (m, m) Pearson correlations between every pair of profiles.
    fits : dict
        Per model: ``{"t", "eta", "eta_t", "correlation"}`` of the linear-CNN theory fit.
    """

    kernel_size: int
    stride: int
    channels: int
    names: list[str]
    profiles: np.ndarray
    correlations: np.ndarray
    fits: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists of floats)."""
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "channels": self.channels,
            "names": list(self.names),
            "profiles": self.profiles.tolist(),
            "correlations": self.correlations.tolist(),
            "fits": self.fits,
        }


def zoo_table(
    models: Mapping[str, Any],
    stats_for: Callable[[int, int, int], PatchStats] | Mapping[tuple[int, int, int], PatchStats],
    *,
    fit: bool = True,
    strides: Mapping[str, int] | None = None,
) -> list[ZooGroup]:
    """Group first layers by patch geometry and tabulate profiles, correlations and fits.

    Parameters
    ----------
    models : mapping of name to FirstLayer, array or anything :func:`first_layer` reads
        The zoo. A layer without a known stride (an array, a state-dict key) counts as stride 1
        unless ``strides`` says otherwise.
    stats_for : callable ``(kernel_size, stride, channels) -> PatchStats``, or a mapping
        The (normalised) statistics each group's profiles are taken in: stride 1 for the
        paper's basis, the layer's stride for the patches it sees.
    fit : bool
        Fit the linear-CNN theory to every profile (:func:`firstlayer.theory.fit`).
    strides : mapping of name to int, optional
        Strides of layers that do not say theirs.

    Returns
    -------
    list of ZooGroup
        Sorted by (kernel_size, stride, channels).
    """
    if not models:
        msg = "models: expected at least one first layer, got none"
        raise ValueError(msg)
    groups: dict[tuple[int, int, int], list[tuple[str, FirstLayer]]] = {}
    for name, obj in models.items():
        fl = obj if isinstance(obj, FirstLayer) else first_layer(obj)
        if fl.weight.shape[2] != fl.weight.shape[3]:
            msg = f"models[{name!r}]: expected square filters, got {tuple(fl.weight.shape)}"
            raise ValueError(msg)
        given = (strides or {}).get(name)
        s = int(given) if given is not None else (_stride_of(fl, None) if fl.stride else 1)
        groups.setdefault((fl.kernel_size, s, fl.in_channels), []).append((name, fl))
    out = []
    for key in sorted(groups):
        k, s, c = key
        st = stats_for[key] if isinstance(stats_for, Mapping) else stats_for(k, s, c)
        members = groups[key]
        names = [n for n, _ in members]
        profiles = np.stack([energy_profile(fl.weight, st) for _, fl in members])
        corr = correlation_matrix(list(profiles)) if len(members) > 1 else np.ones((1, 1))
        fits: dict[str, dict[str, float]] = {}
        if fit:
            from firstlayer.theory import fit as theory_fit

            for n, prof in zip(names, profiles, strict=True):
                r = theory_fit(prof, st)
                fits[n] = {
                    "t": float(r.t),
                    "eta": float(r.eta),
                    "eta_t": float(r.eta_t),
                    "correlation": float(r.correlation),
                }
        out.append(ZooGroup(k, s, c, names, profiles, np.asarray(corr, dtype=np.float64), fits))
    return out
