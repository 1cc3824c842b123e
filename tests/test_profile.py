"""Energy profiles: PCA basis (the paper's Def. 2.2), DFT basis, correlations."""

from __future__ import annotations

import numpy as np
import pytest

import firstlayer
from _analysis_data import cifar_images, pretrained, ref_stats
from firstlayer.constants import IMAGENET_MEAN, IMAGENET_STD
from firstlayer.profile import (
    correlation_matrix,
    dft_profile,
    energy_profile,
    profile_correlation,
    radial_average,
)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return cifar_images(400)[0]


@pytest.fixture(scope="module")
def stats(images):
    """Patches as an ImageNet-normalised network sees them (exact affine map of raw moments)."""
    return firstlayer.patch_stats(images, 3).normalized(IMAGENET_MEAN, IMAGENET_STD)


def _reference_profile(w: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Def. 2.2 written as loops: e_i = sqrt(1/F sum_f (w_f . u_i)^2), then max-normalised."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    e = np.array(
        [
            np.sqrt(np.mean([(f @ components[:, i]) ** 2 for f in flat]))
            for i in range(flat.shape[1])
        ]
    )
    return e / e.max()


def test_stats_pca_matches_numpy_reference(images, stats):
    ref = ref_stats(images, 3, IMAGENET_MEAN, IMAGENET_STD).pca()
    np.testing.assert_allclose(stats.pca().eigenvalues, ref.eigenvalues, rtol=1e-8, atol=1e-12)


def test_pca_profile_matches_reference(stats):
    w = pretrained("squeezenet1_1")
    got = energy_profile(w, stats)
    want = _reference_profile(w, stats.pca().components)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # The pretrained bank is far from flat: low energy on component 0, peak in between (Fig. 1).
    assert got[0] < 0.5
    assert 1 <= int(np.argmax(got)) <= 12


def test_torch_tensor_and_float16_inputs(stats):
    torch = pytest.importorskip("torch")
    w = pretrained("squeezenet1_1")
    np.testing.assert_allclose(
        energy_profile(torch.from_numpy(w).half(), stats),
        energy_profile(w.astype(np.float16).astype(np.float32), stats),
        rtol=1e-12,
    )


def test_init_subtraction_and_invariances(stats):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(16, 3, 3, 3))
    w = w0 + rng.normal(size=w0.shape) * np.linspace(2, 0.1, 27).reshape(1, 3, 3, 3)
    base = energy_profile(w, stats, init=w0)
    np.testing.assert_allclose(base, energy_profile(w - w0, stats), rtol=1e-12)
    d = (w - w0).reshape(16, -1)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))  # orthogonal mix of the filters
    for other in (d[::-1], 7.5 * d, q @ d):
        np.testing.assert_allclose(energy_profile(other.reshape(w.shape), stats), base, rtol=1e-9)


def test_random_isotropic_filters_have_a_flat_profile(stats):
    # e_i^2 is a chi^2_F / F variable: relative std sqrt(2/F) = 2.2% for F = 4096, so e_i has
    # relative std ~1.1%; 6 sigma gives min(e) / max(e) > 1 - 2 * 6 * 1.1% ~ 0.87.
    rng = np.random.default_rng(1)
    e = energy_profile(rng.normal(size=(4096, 3, 3, 3)), stats)
    assert e.min() > 0.87
    assert abs(profile_correlation(e, energy_profile(pretrained("squeezenet1_1"), stats))) < 0.6


def test_squared_and_normalize_options(stats):
    w = pretrained("squeezenet1_1")
    raw = energy_profile(w, stats, normalize=None)
    np.testing.assert_allclose(energy_profile(w, stats, normalize=None, squared=True), raw**2)
    np.testing.assert_allclose(energy_profile(w, stats, normalize="sum").sum(), 1.0)
    np.testing.assert_allclose(np.linalg.norm(energy_profile(w, stats, normalize="l2")), 1.0)
    # Parseval: the total energy is the same in every orthonormal basis.
    pca_total = energy_profile(w, stats, normalize=None, squared=True).sum()
    dft_total = energy_profile(w, basis="dft", normalize=None, squared=True).sum()
    np.testing.assert_allclose(pca_total, dft_total, rtol=1e-10)
    np.testing.assert_allclose(pca_total, np.mean(np.sum(w.astype(np.float64) ** 2, (1, 2, 3))))


def test_dft_view_equals_numpy_fft():
    w = pretrained("resnet18").astype(np.float64)
    power = np.mean(np.abs(np.fft.fft2(w, norm="ortho")) ** 2, axis=0)  # (C, 7, 7)
    got = energy_profile(w, basis="dft", normalize=None)
    np.testing.assert_allclose(got, np.sqrt(power).ravel(), rtol=1e-12)
    prof = dft_profile(w, normalize=None)
    np.testing.assert_allclose(prof.per_channel, np.sqrt(power), rtol=1e-12)
    np.testing.assert_allclose(prof.total, np.sqrt(power.sum(0)), rtol=1e-12)
    np.testing.assert_allclose(prof.frequencies[1], np.fft.fftfreq(7))
    normed = dft_profile(w)
    assert normed.total.max() == pytest.approx(1.0)
    np.testing.assert_allclose(
        normed.per_channel / normed.total.max(), prof.per_channel / prof.total.max(), rtol=1e-12
    )


def test_dft_of_a_delta_is_flat_and_radial_average():
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 1, 1] = 1.0
    prof = dft_profile(w)
    np.testing.assert_allclose(prof.total, 1.0)
    np.testing.assert_allclose(prof.radii, [0.0, 1 / 3, np.sqrt(2) / 3])
    np.testing.assert_allclose(prof.radial, 1.0)
    radii, vals = radial_average(np.arange(9.0).reshape(3, 3))
    # Rings of a 3x3 grid: {(0,0)}, {(0,1),(0,2),(1,0),(2,0)}, {(1,1),(1,2),(2,1),(2,2)}.
    np.testing.assert_allclose(vals, [0.0, (1 + 2 + 3 + 6) / 4, (4 + 5 + 7 + 8) / 4])
    assert radii.shape == (3,)


def test_correlations_match_numpy():
    rng = np.random.default_rng(2)
    profiles = rng.random((5, 27))
    np.testing.assert_allclose(correlation_matrix(profiles), np.corrcoef(profiles), atol=1e-12)
    named = correlation_matrix({"a": profiles[0], "b": profiles[1]})
    assert named.shape == (2, 2)
    assert profile_correlation(profiles[0], profiles[1]) == pytest.approx(
        np.corrcoef(profiles[0], profiles[1])[0, 1]
    )
    assert correlation_matrix([np.ones(4), np.arange(4.0)])[0, 1] == 0.0


def test_errors_name_the_argument(stats):
    w7 = pretrained("resnet18")
    with pytest.raises(
        ValueError, match=r"weights: expected shape \(F, 3, 3, 3\).*got \(64, 3, 7, 7\)"
    ):
        energy_profile(w7, stats)
    with pytest.raises(ValueError, match="stats: basis='pca' needs"):
        energy_profile(w7)
    with pytest.raises(ValueError, match=r"basis: expected shape \(147, m\)"):
        energy_profile(w7, basis=np.eye(27))
    with pytest.raises(ValueError, match="basis: expected 'pca', 'dft'"):
        energy_profile(w7, basis="fourier")
    with pytest.raises(ValueError, match="init: expected the shape of weights"):
        energy_profile(w7, basis="dft", init=np.zeros((64, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"weights: expected shape \(F, C, k, k\)"):
        energy_profile(np.zeros((3, 3)), basis="dft")
    with pytest.raises(TypeError, match="weights: expected a numpy array"):
        energy_profile("conv1", basis="dft")
    with pytest.raises(ValueError, match="normalize: expected"):
        energy_profile(w7, basis="dft", normalize="peak")
    with pytest.raises(ValueError, match="b: expected a profile of length 3"):
        profile_correlation([1, 2, 3], [1, 2])
    with pytest.raises(TypeError, match="stats: expected a PatchStats"):
        energy_profile(w7, stats=42)
