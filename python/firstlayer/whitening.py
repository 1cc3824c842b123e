"""Whitening first layers built from patch statistics (PCA and ZCA forms, +/- pairs).

A first layer ``W`` (F x p) whitens patches when ``W Sigma W^T = I``. The PCA form has one filter
per component, ``u_i / sqrt(lambda_i + eps)``; the ZCA form ``U diag((lambda + eps)^-1/2) U^T``
keeps the filters local (each looks like a centre-surround kernel). Fast CIFAR trainers use the
PCA filters and their negatives together so that a ReLU keeps both signs.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from firstlayer._validate import check_float
from firstlayer.profile import _stats_geometry, pca_basis

__all__ = ["init_first_layer", "whitening_filters"]


def _geometry(stats: Any, p: int) -> tuple[int, int]:
    geom = _stats_geometry(stats)
    if geom is None:
        msg = f"stats: expected a PatchStats with channels and kernel_size, got {type(stats)}"
        raise TypeError(msg)
    c, k = geom
    if c * k**2 != p:
        msg = f"stats: channels*kernel_size^2 = {c * k**2} but the PCA has dim {p}"
        raise ValueError(msg)
    return c, k


def whitening_filters(
    stats: Any,
    eps: float = 1e-5,
    *,
    kind: Literal["pca", "zca"] = "pca",
    n_components: int | None = None,
    pairs: bool = False,
) -> np.ndarray:
    """First-layer weights that whiten the patches described by ``stats``.

    Parameters
    ----------
    stats : PatchStats
        Statistics of the patches as the network will see them (after input normalisation).
    eps : float
        Added to every eigenvalue before the inverse square root (regularises the tail).
    kind : {"pca", "zca"}
        ``"pca"``: row ``i`` is ``u_i / sqrt(lambda_i + eps)`` (most variance first).
        ``"zca"``: ``U diag((lambda + eps)^-1/2) U^T``, one filter per patch entry.
    n_components : int, optional
        Keep the leading components only (PCA: that many filters; ZCA: a rank-limited map).
    pairs : bool
        Append the negated filters (``[W; -W]``), as fast CIFAR trainers do before a ReLU.

    Returns
    -------
    numpy.ndarray
        (F, C, k, k) float64 weights; ``F = n_components`` (PCA) or ``p`` (ZCA), doubled with
        ``pairs``. Without ``eps`` and pairs, ``W Sigma W^T`` is the identity.

    Raises
    ------
    ValueError
        For a negative ``eps``, an unknown ``kind``, ``n_components`` out of range, or a singular
        covariance with ``eps == 0``.

    Examples
    --------
    >>> import firstlayer, numpy as np  # doctest: +SKIP
    >>> w = whitening_filters(firstlayer.patch_stats(images, 3), eps=1e-4)  # doctest: +SKIP
    """
    ev, u = pca_basis(stats)
    c, k = _geometry(stats, ev.size)
    eps = check_float("eps", eps, 0)
    m = ev.size if n_components is None else int(n_components)
    if not 1 <= m <= ev.size:
        msg = f"n_components: expected 1..{ev.size}, got {n_components}"
        raise ValueError(msg)
    ev, u = ev[:m], u[:, :m]
    if np.any(ev + eps <= 0):
        msg = "eps: the covariance is singular along kept components; pass eps > 0"
        raise ValueError(msg)
    scaled = u / np.sqrt(ev + eps)  # (p, m) columns u_i / sqrt(lambda_i + eps)
    if kind == "pca":
        w = scaled.T
    elif kind == "zca":
        w = scaled @ u.T
    else:
        msg = f"kind: expected 'pca' or 'zca', got {kind!r}"
        raise ValueError(msg)
    if pairs:
        w = np.concatenate([w, -w])
    return w.reshape(-1, c, k, k)


def init_first_layer(
    model: Any,
    stats: Any,
    eps: float = 1e-5,
    *,
    kind: Literal["pca", "zca"] = "pca",
    n_components: int | None = None,
    pairs: bool = False,
    freeze: bool = False,
    name: str | None = None,
) -> str:
    """Write whitening filters into a model's first convolution.

    The first ``F`` output channels get :func:`whitening_filters`; further channels are left
    as they are. A bias, when the layer has one, is set to ``-W mean`` so responses are centred.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its first convolution is found with :func:`firstlayer.filters.first_layer`.
    stats : PatchStats
        Patch statistics as the model sees its input; channels and kernel size must match.
    eps, kind, n_components, pairs
        As in :func:`whitening_filters`.
    freeze : bool
        Stop gradients to the layer's weight (and bias).
    name : str, optional
        Module path of the layer, to skip the tracing.

    Returns
    -------
    str
        Module path of the layer written.

    Raises
    ------
    ValueError
        If the layer's shape does not match the statistics or has fewer than ``F`` filters.
    """
    import torch

    from firstlayer.filters import first_layer

    path = first_layer(model, name=name).name
    conv = model.get_submodule(path)
    w = whitening_filters(stats, eps, kind=kind, n_components=n_components, pairs=pairs)
    f_out, c_in, kh, kw = conv.weight.shape
    if (c_in, kh, kw) != w.shape[1:] or f_out < w.shape[0]:
        msg = (
            f"model: expected a first layer of shape (>={w.shape[0]}, {w.shape[1]}, {w.shape[2]}, "
            f"{w.shape[3]}) for these statistics, got {tuple(conv.weight.shape)} at {path!r}"
        )
        raise ValueError(msg)
    mean = np.asarray(stats.mean, dtype=np.float64)
    with torch.no_grad():
        conv.weight[: w.shape[0]] = torch.from_numpy(w).to(conv.weight)
        if getattr(conv, "bias", None) is not None:
            conv.bias[: w.shape[0]] = torch.from_numpy(-(w.reshape(w.shape[0], -1) @ mean)).to(
                conv.bias
            )
    if freeze:
        conv.weight.requires_grad_(False)
        if getattr(conv, "bias", None) is not None:
            conv.bias.requires_grad_(False)
    return path
