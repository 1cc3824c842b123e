"""A real linear CNN, trained in PyTorch on real patches, scored against the formula.

:func:`simulate_linear_cnn` trains the network of Theorem 4.2 itself and scores the formula along
the whole trajectory, next to the exact gradient-descent solution and a measure of the theorem's
assumption (labels uncorrelated with the PCA coefficients): random labels meet it and follow the
formula; true CIFAR-10 labels correlate with the colour components and do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from firstlayer._numeric import pearson
from firstlayer.profile import energy_profile, pca_basis
from firstlayer.streaming import patch_stats
from firstlayer.theory._inputs import images_nchw, labels_for, unit_float64
from firstlayer.theory.fitting import fit
from firstlayer.theory.formula import _growth, linear_profile

__all__ = ["LinearCNNResult", "simulate_linear_cnn"]


@dataclass(frozen=True)
class LinearCNNResult:
    """Energy profiles of a trained linear CNN against the formula, along the trajectory.

    Three comparisons, from the strictest assumption to none: ``correlations`` (the formula at the
    theory's own ``eta * step``), ``fitted_correlations`` (the formula at a step count fitted per
    record, as the paper fits networks) and ``gd_correlations`` (the exact gradient-descent solution
    for the training set's own label term: a check of the simulation, whatever the labels). The
    formula assumes the label term proportional to ``lambda_i``, i.e. labels uncorrelated with the
    PCA coefficients (Definition A.4); ``label_correlation`` measures how far that holds.

    Attributes
    ----------
    steps : numpy.ndarray
        (R,) gradient steps at which the filters were recorded (log-spaced from step 1; every
        record is scored).
    profiles : numpy.ndarray
        (R, p) max-normalised energy profiles of ``W - W_init`` in the patch PCA basis, over all
        filters of all outputs.
    predicted : numpy.ndarray
        (R, p) the formula at the theoretical ``eta * step`` (no free parameter).
    correlations : numpy.ndarray
        (R,) Pearson correlation of ``profiles`` with ``predicted``.
    fitted_t : numpy.ndarray
        (R,) step count of the best fit of the formula to each profile (:func:`fit`).
    fitted_correlations : numpy.ndarray
        (R,) correlation at the fitted step count (the paper's way of comparing).
    gd_correlations : numpy.ndarray
        (R,) correlation of ``profiles`` with the closed-form gradient-descent solution
        ``(I - (I - c A)^t) A^-1 (b - A s_0)`` for the measured second moment ``A`` of the
        samples' mean patches and the measured label term ``b`` (their cross moment with the
        targets). About 1 whenever the training is right; well above ``correlations`` when the
        label term, not the training, departs from the theorem.
    label_correlation : numpy.ndarray
        (n_outputs, p) Pearson correlation, over the training samples, between each output's
        target and the PCA coefficient ``u_i . mean patch`` of the sample (Definition A.4). With
        labels uncorrelated with the coefficients each entry is sampling noise of standard
        deviation ``1 / sqrt(n_samples - 1)``.
    eigenvalues : numpy.ndarray
        (p,) patch PCA eigenvalues (per-patch variances) of the normalised images.
    eta : float
        The theory's step size in eigenvalue units: ``2 * lr * filters_per_output /
        (n_classes * patches_per_sample)``.
    losses : numpy.ndarray
        (R,) training loss (MSE, mean over the label draws) at each recorded step.
    random_labels : bool
        Whether the labels were random.
    label_draws : int
        Number of independent labellings trained side by side (1 for true labels).
    n_samples : int
        Number of training samples (mosaics or images).
    """

    steps: np.ndarray
    profiles: np.ndarray
    predicted: np.ndarray
    correlations: np.ndarray
    fitted_t: np.ndarray
    fitted_correlations: np.ndarray
    gd_correlations: np.ndarray
    label_correlation: np.ndarray
    eigenvalues: np.ndarray
    eta: float
    losses: np.ndarray
    random_labels: bool
    label_draws: int
    n_samples: int

    @property
    def mean_correlation(self) -> float:
        """Mean correlation of the formula at the theoretical step counts."""
        return float(np.mean(self.correlations))

    @property
    def min_correlation(self) -> float:
        """Worst correlation over the trajectory of the formula at the theoretical step counts."""
        return float(np.min(self.correlations))

    @property
    def min_fitted_correlation(self) -> float:
        """Worst correlation over the trajectory, with the step count fitted per record."""
        return float(np.min(self.fitted_correlations))

    @property
    def label_z(self) -> np.ndarray:
        """(p,) root mean square over outputs of ``label_correlation * sqrt(n_samples - 1)``.

        About 1 for every component when labels are uncorrelated with the PCA coefficients; the
        formula needs it flat across components (label term proportional to ``lambda_i``).
        """
        z2 = self.label_correlation**2 * (self.n_samples - 1)
        return np.sqrt(z2.mean(axis=0))

    @property
    def label_noise_ratio(self) -> float:
        """Label-PCA correlation in units of its sampling noise (root mean square; ~1 if none)."""
        z2 = self.label_correlation**2 * (self.n_samples - 1)
        return float(np.sqrt(z2.mean()))

    @property
    def assumption_holds(self) -> bool:
        """Whether the labels look uncorrelated with the PCA coefficients (within 1.5x noise)."""
        return self.label_noise_ratio < 1.5

    def summary(self) -> str:
        """A few lines: the fit along the trajectory and whether the theorem's assumption holds."""
        kind = "random" if self.random_labels else "true"
        n_out = self.label_correlation.shape[0]
        z = self.label_z
        worst = ", ".join(str(i) for i in np.argsort(z)[::-1][:3])
        verdict = (
            "labels uncorrelated with the PCA coefficients within sampling noise: Theorem 4.2's "
            "assumption holds"
            if self.assumption_holds
            else "labels correlated with PCA coefficients (largest on components "
            f"{worst}): Theorem 4.2's assumption is violated and the formula is not expected to "
            "fit; the training itself is checked by the gradient-descent solution"
        )
        return (
            f"linear CNN, {kind} labels, {n_out} outputs ({self.label_draws} labelling(s)), "
            f"{self.n_samples} samples, {self.steps.size} records, steps "
            f"{int(self.steps[0])}..{int(self.steps[-1])}\n"
            f"  formula at eta*t:       min r {self.min_correlation:.3f}, mean "
            f"{self.mean_correlation:.3f}\n"
            f"  formula, t fitted:      min r {self.min_fitted_correlation:.3f}\n"
            f"  exact GD (measured b):  min r {float(np.min(self.gd_correlations)):.4f}\n"
            f"  label-PCA correlation:  {self.label_noise_ratio:.2f}x sampling noise; {verdict}"
        )


def _mosaics(
    xf: np.ndarray,
    y: np.ndarray,
    k: int,
    grid: int,
    n_samples: int,
    rng: np.random.Generator,
    *,
    by_class: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Images tiled from ``grid x grid`` real k x k patches at random positions of random images.

    ``by_class``: the tiles of a sample all come from images of the sample's class (so that the
    true label means something). Otherwise they come from any image, independently of the label:
    the patches of a sample are then uncorrelated, exactly as Theorem 4.2 assumes.
    """
    n, c, h, w = xf.shape
    sample_y = y[rng.integers(0, n, n_samples)]
    jj = grid * grid
    if by_class:
        src = np.empty((n_samples, jj), dtype=np.int64)
        for cl in np.unique(y):
            members = np.flatnonzero(y == cl)
            rows = np.flatnonzero(sample_y == cl)
            src[rows] = members[rng.integers(0, members.size, (rows.size, jj))]
    else:
        src = rng.integers(0, n, (n_samples, jj))
    oi = rng.integers(0, h - k + 1, (n_samples, jj))
    oj = rng.integers(0, w - k + 1, (n_samples, jj))
    di = np.arange(k)
    # tiles[s, t, ch, a, b] = xf[src, ch, oi + a, oj + b]
    tiles = xf[
        src[:, :, None, None, None],
        np.arange(c)[None, None, :, None, None],
        (oi[:, :, None, None, None] + di[None, None, None, :, None]),
        (oj[:, :, None, None, None] + di[None, None, None, None, :]),
    ]
    img = tiles.reshape(n_samples, grid, grid, c, k, k).transpose(0, 3, 1, 4, 2, 5)
    return img.reshape(n_samples, c, grid * k, grid * k), sample_y


def _gd_profiles(
    a_mat: np.ndarray,
    b_mat: np.ndarray,
    s0: np.ndarray,
    c: float,
    steps: np.ndarray,
    comps: np.ndarray,
) -> np.ndarray:
    """Max-normalised profiles of the exact GD displacement of each output's summed filter.

    ``s <- s - c (A s - b)`` from ``s_0`` moves by ``(I - (I - c A)^t) A^-1 (b - A s_0)``; in the
    eigenbasis ``A = V diag(w) V^T`` that is ``V diag(c * growth(c w, t)) V^T (b - A s_0)``.
    """
    w, v = np.linalg.eigh(a_mat)
    w = np.clip(w, 0.0, None)
    drive = v.T @ (b_mat - a_mat @ s0)  # (p, outputs)
    gain = c * _growth(c * w, steps.reshape(-1, 1).astype(np.float64))  # (R, p)
    out = []
    for g in gain:
        proj = comps.T @ (v @ (g[:, None] * drive))  # (p, outputs) in the patch PCA basis
        e = np.sqrt(np.mean(proj * proj, axis=1))
        out.append(e / e.max() if e.max() > 0 else e)
    return np.stack(out)


def simulate_linear_cnn(
    images: Any,
    labels: Any,
    kernel_size: int = 3,
    *,
    random_labels: bool = False,
    label_draws: int | None = None,
    sample: str = "mosaic",
    patches_per_sample: int = 16,
    n_samples: int | None = None,
    filters_per_output: int = 1,
    steps: int = 300,
    lr: float | None = None,
    init_std: float = 1e-4,
    n_records: int = 12,
    mean: Any = None,
    std: Any = None,
    stats: Any = None,
    seed: int = 0,
) -> LinearCNNResult:
    """Train a linear CNN with gradient descent and compare its filters with the formula.

    The network is the one of Theorem 4.2: ``Conv2d(C, outputs * filters_per_output, k,
    bias=False)``, a global average pool, and a fixed sum of each output's filters. Targets are
    one-vs-all (centred) class indicators, one output per class, the loss is the mean squared
    error, and training is full-batch gradient descent (``torch.optim.SGD``, no momentum) from a
    small isotropic init. Each output's filters move identically, so one filter per output is
    enough. Every record is scored against the formula; the profile of ``W - W_init`` is taken
    over all outputs.

    The theorem's two assumptions, and how the simulation meets them:

    * *Patches of one input uncorrelated.* Real images break that (the average patch of a 32x32
      image is nearly its mean colour), so by default (``sample="mosaic"``) each training input
      is a grid of real patches from random positions of random images, convolved with stride
      ``k`` (the paper's construction for its Fig. 8b). With true labels the tiles of a mosaic
      come from images of its class, so that the label is true; with random labels they come
      from any image. ``sample="images"`` trains on the images themselves (stride 1), where the
      formula fits less.
    * *Labels uncorrelated with the PCA coefficients* (Definition A.4). The label term ``u_i . b``
      is then sampling noise whose *expected* magnitude is proportional to ``lambda_i``; one
      labelling of ``n`` classes gives each component only ``n - 1`` degrees of freedom (about
      25% scatter for CIFAR-10), so with random labels ``label_draws`` independent labellings
      (fixed random permutations of the labels, class balance kept) are trained side by side as
      further outputs, each with its own MSE loss, exactly as separate networks. True CIFAR labels
      correlate with the colour components far above sampling noise, so the formula does not fit
      them; ``LinearCNNResult.label_correlation`` and ``summary()`` report that, and
      ``gd_correlations`` shows the training still follows exact gradient descent.

    Parameters
    ----------
    images : numpy.ndarray or torch.Tensor
        (N, C, H, W), (N, H, W, C) or (N, H, W) images (a tensor on the CPU); uint8 is scaled
        by 1/255.
    labels : array_like
        (N,) integer class labels.
    kernel_size : int
        Filter size ``k``.
    random_labels : bool
        Train on fixed random permutations of the labels (the paper's random-label setting).
    label_draws : int, optional
        Independent random labellings trained side by side (random labels only); default 16,
        which keeps the label noise in the profile to a few per cent. True labels have one.
    sample : {"mosaic", "images"}
        Training inputs: mosaics of real patches, or the images.
    patches_per_sample : int
        Patches per mosaic (a square number).
    n_samples : int, optional
        Number of mosaics (default: the number of images).
    filters_per_output : int
        Filters summed into each output.
    steps : int
        Number of gradient steps.
    lr : float, optional
        Learning rate; default so that the largest eigenvalue of the GD iteration is 0.5.
    init_std : float
        Standard deviation of the Gaussian init (small, as the theory assumes).
    n_records : int
        Number of log-spaced steps at which the filters are recorded (fewer when they round to
        the same step).
    mean, std : array_like, optional
        Per-channel normalisation of the scaled images; default their own mean and std, so that
        patches are centred as the theory assumes.
    stats : PatchStats, optional
        Patch statistics of the *normalised* images (computed with
        :func:`firstlayer.patch_stats` when omitted).
    seed : int
        Seed of the init, the mosaics and the label permutations.

    Returns
    -------
    LinearCNNResult

    Raises
    ------
    ValueError
        If shapes or arguments do not fit.

    Examples
    --------
    >>> r = simulate_linear_cnn(images, labels, random_labels=True)  # doctest: +SKIP
    >>> r.min_correlation  # doctest: +SKIP
    0.99...
    >>> print(r.summary())  # doctest: +SKIP
    """
    import torch

    x = images_nchw(images)
    n, c, h, w = x.shape
    y = labels_for(labels, n)
    k = int(kernel_size)
    if not 1 <= k <= min(h, w):
        msg = f"kernel_size: expected 1..{min(h, w)} for {h}x{w} images, got {kernel_size}"
        raise ValueError(msg)
    if steps < 1 or n_records < 1 or filters_per_output < 1:
        msg = "steps, n_records, filters_per_output: expected positive integers"
        raise ValueError(msg)
    draws = (16 if random_labels else 1) if label_draws is None else int(label_draws)
    if draws < 1 or (draws > 1 and not random_labels):
        msg = (
            "label_draws: expected a positive number of random labellings (true labels have "
            f"exactly one), got {label_draws}"
        )
        raise ValueError(msg)
    if sample not in ("mosaic", "images"):
        msg = f"sample: expected 'mosaic' or 'images', got {sample!r}"
        raise ValueError(msg)
    grid = int(round(np.sqrt(patches_per_sample)))
    if sample == "mosaic" and (grid < 1 or grid * grid != patches_per_sample):
        msg = f"patches_per_sample: expected a square number, got {patches_per_sample}"
        raise ValueError(msg)
    classes = np.unique(y)
    if classes.size < 2:
        msg = f"labels: expected at least 2 classes, got {classes.size}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)

    xf = unit_float64(x)
    mu = xf.mean(axis=(0, 2, 3)) if mean is None else np.asarray(mean, dtype=np.float64)
    sd = xf.std(axis=(0, 2, 3)) if std is None else np.asarray(std, dtype=np.float64)
    xf = (xf - mu[:, None, None]) / sd[:, None, None]
    if stats is None:
        stats = patch_stats(np.ascontiguousarray(xf), kernel_size=k)
    ev, comps = pca_basis(stats)
    if ev.size != c * k * k:
        msg = f"stats: expected statistics of {c}x{k}x{k} patches, got {ev.size} components"
        raise ValueError(msg)

    if sample == "mosaic":
        # Random labels carry no class, so the tiles need not share one: independent patches.
        train_x, train_y = _mosaics(
            xf, y, k, grid, int(n_samples or n), rng, by_class=not random_labels
        )
        stride, j = k, grid * grid
    else:
        train_x, train_y = xf, y
        stride, j = 1, (h - k + 1) * (w - k + 1)
    ns = train_x.shape[0]
    if random_labels:
        label_sets = [rng.permutation(train_y) for _ in range(draws)]
    else:
        label_sets = [train_y]
    n_cls, m = classes.size, int(filters_per_output)
    n_out = draws * n_cls
    onehot = np.concatenate(
        [(ys[:, None] == classes[None, :]).astype(np.float64) for ys in label_sets], axis=1
    )
    target64 = onehot - onehot.mean(axis=0)  # (ns, n_out), centred like the patches
    targets = torch.from_numpy(target64.astype(np.float32))
    # float32: torch's float64 CPU convolution is ~30x slower, and W - W_init stays far above
    # float32 rounding of W because the init is small.
    xt = torch.from_numpy(train_x.astype(np.float32)).contiguous(memory_format=torch.channels_last)
    # Mean patch of every sample: A = E[pbar pbar^T] drives GD, b = E[pbar y] is the label term.
    with torch.no_grad():
        pbar = torch.cat(
            [
                torch.nn.functional.unfold(xt[i : i + 256], k, stride=stride).double().mean(dim=2)
                for i in range(0, ns, 256)
            ]
        ).numpy()
    a_mat = pbar.T @ pbar / ns
    b_mat = pbar.T @ target64 / ns
    if lr is None:
        # The largest eigenvalue of A sets the GD step limit: c * a_top = 0.5 below.
        lr = 0.5 * n_cls / (2.0 * m * float(np.linalg.eigvalsh(a_mat)[-1]))
    # Theory: the summed filter of each output follows s <- s - c (A s - b), c = 2 lr m / n_cls,
    # and A = covariance / J when the J patches of a sample are uncorrelated.
    c_gd = 2.0 * lr * m / n_cls
    eta = c_gd / j

    gen = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(c, n_out * m, k, stride=stride, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.normal_(0.0, init_std, generator=gen)
    w0 = conv.weight.detach().clone()
    opt = torch.optim.SGD(conv.parameters(), lr=lr)

    record_at = set(np.unique(np.geomspace(1, steps, n_records).round().astype(int)).tolist())
    rec_steps, rec_w, losses = [], [], []
    for step in range(1, steps + 1):
        opt.zero_grad()
        pooled = conv(xt).mean(dim=(2, 3))  # (samples, n_out * m): global average pool
        out = pooled.view(ns, n_out, m).sum(dim=2)  # fixed second layer: sum each output's filters
        # Mean over one labelling's outputs, summed over labellings: each trains as if alone.
        loss = torch.nn.functional.mse_loss(out, targets) * draws
        loss.backward()
        opt.step()
        if step in record_at:
            rec_steps.append(step)
            rec_w.append((conv.weight.detach().double() - w0.double()).numpy())
            losses.append(loss.item() / draws)

    t = np.asarray(rec_steps, dtype=np.float64)
    profiles = np.stack([energy_profile(dw, basis=comps) for dw in rec_w])
    predicted = linear_profile(ev, eta, t)
    corr = np.array([pearson(p, q) for p, q in zip(profiles, predicted, strict=True)])
    fits = [fit(p, ev, eta=eta) for p in profiles]
    s0 = w0.double().numpy().reshape(n_out, m, -1).sum(axis=1).T  # (p, n_out) summed init
    gd = _gd_profiles(a_mat, b_mat, s0, c_gd, t, comps)
    gd_corr = np.array([pearson(p, q) for p, q in zip(profiles, gd, strict=True)])
    coef = pbar @ comps
    coef_z = (coef - coef.mean(axis=0)) / np.maximum(coef.std(axis=0), 1e-300)
    tz = target64 / np.maximum(target64.std(axis=0), 1e-300)
    label_corr = tz.T @ coef_z / ns  # (n_out, p) Pearson correlations
    return LinearCNNResult(
        steps=t.astype(np.int64),
        profiles=profiles,
        predicted=predicted,
        correlations=corr,
        fitted_t=np.array([f.t for f in fits]),
        fitted_correlations=np.array([f.correlation for f in fits]),
        gd_correlations=gd_corr,
        label_correlation=label_corr,
        eigenvalues=ev,
        eta=eta,
        losses=np.asarray(losses),
        random_labels=bool(random_labels),
        label_draws=draws,
        n_samples=int(ns),
    )
