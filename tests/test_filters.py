"""First layers of networks (modules, state dicts, files, torchvision names), whitening layers."""

from __future__ import annotations

import numpy as np
import pytest

import firstlayer
from _analysis_data import cifar_images, data_file, pretrained
from firstlayer.constants import IMAGENET_MEAN, IMAGENET_STD
from firstlayer.filters import first_layer
from firstlayer.whitening import init_first_layer, whitening_filters

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
nn = torch.nn

EXPECTED = {
    "resnet18": ("conv1", (64, 3, 7, 7), "conv"),
    "vgg11": ("features.0", (64, 3, 3, 3), "conv"),
    "alexnet": ("features.0", (64, 3, 11, 11), "conv"),
    "mobilenet_v2": ("features.0.0", (32, 3, 3, 3), "conv"),
    "vit_b_16": ("conv_proj", (768, 3, 16, 16), "patch_embedding"),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def arch(request):
    torch.manual_seed(0)
    return request.param, torchvision.models.get_model(request.param, weights=None)


def test_torchvision_models_built_without_weights(arch):
    name, model = arch
    path, shape, kind = EXPECTED[name]
    layer = first_layer(model)
    assert (layer.name, layer.weight.shape, layer.kind) == (path, shape, kind)
    np.testing.assert_array_equal(layer.weight, model.get_submodule(path).weight.detach().numpy())
    assert model.training  # the probe restores the mode it found
    # The same layer from the state dict, from a checkpoint dict, and with DataParallel prefixes.
    sd = model.state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    for source in (sd, wrapped, {"model": sd}):
        got = first_layer(source)
        assert got.name == f"{path}.weight"
        np.testing.assert_array_equal(got.weight, layer.weight)


class _RegisteredOutOfOrder(nn.Module):
    """A head conv registered before the stem; the forward applies the stem first."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(8, 4, 1)
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


def test_tracing_finds_the_conv_applied_to_the_input():
    model = _RegisteredOutOfOrder()
    layer = first_layer(model, input_size=32)
    assert layer.name == "stem"
    assert layer.stride == (2, 2)
    assert layer.padding == (2, 2)
    np.testing.assert_array_equal(layer.bias, model.stem.bias.detach().numpy())
    assert first_layer(model, name="head").weight.shape == (4, 8, 1, 1)


def test_models_without_a_conv_on_the_input_are_rejected():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(ValueError, match="model: expected a network with a Conv2d"):
        first_layer(mlp)

    class LinearThenConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 3 * 4 * 4)
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(self.fc(x.flatten(1)).view(-1, 3, 4, 4))

    with pytest.raises(ValueError, match="no convolution is applied to the input"):
        first_layer(LinearThenConv(), example_input=torch.zeros(1, 3, 8, 8))

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return x.mean()

    with pytest.raises(ValueError, match="no convolution was applied"):
        first_layer(Unused(), input_size=8)
    with pytest.raises(
        ValueError, match="'stem' expects 3 input channels, the example input has 5"
    ):
        first_layer(_RegisteredOutOfOrder(), example_input=torch.zeros(1, 5, 8, 8))
    with pytest.raises(ValueError, match="probing forward pass on an input of shape"):
        first_layer(nn.Sequential(nn.Unflatten(1, (3, 8, 8)), nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="name: expected a module path"):
        first_layer(_RegisteredOutOfOrder(), name="stme")


def test_real_pretrained_weights_from_files(tmp_path):
    path = data_file("squeezenet1_1-fp16-from-ncnn.pth")
    reference = pretrained("squeezenet1_1")
    from_file = first_layer(path)
    assert from_file.name == "features.0.weight"
    np.testing.assert_array_equal(from_file.weight, reference)
    assert from_file.bias.shape == (64,)
    # A torchvision name with the local weights: built, loaded strictly and traced.
    traced = first_layer("squeezenet1_1", weights=path)
    assert traced.name == "features.0"
    np.testing.assert_array_equal(traced.weight, reference)
    # The same file reached through arch= and a nested checkpoint saved by a training script.
    sd = torch.load(path, weights_only=True)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "step": 10}, ckpt)
    np.testing.assert_array_equal(first_layer(ckpt, arch="squeezenet1_1").weight, reference)
    npz = data_file("pretrained_first_layers.npz")
    assert first_layer(npz, name="resnet18").weight.shape == (64, 3, 7, 7)
    with pytest.raises(ValueError, match="name: pretrained_first_layers.npz holds several"):
        first_layer(npz)


def test_pretrained_profiles_agree_across_architectures():
    images, _ = cifar_images(300)
    stats = firstlayer.patch_stats(images, 3).normalized(IMAGENET_MEAN, IMAGENET_STD)
    from firstlayer.profile import energy_profile, profile_correlation

    squeeze = energy_profile(
        first_layer(data_file("squeezenet1_1-fp16-from-ncnn.pth")).weight, stats
    )
    effnet = energy_profile(pretrained("efficientnet_lite0"), stats)
    rng = np.random.default_rng(0)
    init = energy_profile(rng.normal(size=(64, 3, 3, 3)), stats)
    assert profile_correlation(squeeze, effnet) > profile_correlation(squeeze, init)


def test_file_and_name_errors(tmp_path):
    with pytest.raises(ValueError, match="weights: a model name"):
        first_layer("resnet18")
    with pytest.raises(ValueError, match="arch: expected a torchvision model name.*resnet18"):
        first_layer("resnet81", weights={"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="obj: expected an existing checkpoint file"):
        first_layer(str(tmp_path / "missing.pth"))
    pickled = tmp_path / "module.pt"
    torch.save(nn.Conv2d(3, 4, 3), pickled)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        first_layer(pickled)
    with pytest.raises(ValueError, match="weights: the state dict does not match"):
        first_layer("resnet18", weights=torchvision.models.alexnet().state_dict())
    with pytest.raises(ValueError, match="name: expected a key of the state dict"):
        first_layer({"conv1.weight": torch.zeros(4, 3, 3, 3)}, name="conv2")
    with pytest.raises(ValueError, match="obj: expected a 4D convolution weight"):
        first_layer({"fc.weight": torch.zeros(4, 3)})
    with pytest.raises(TypeError, match="obj: expected an nn.Module"):
        first_layer(3.5)
    with pytest.raises(ValueError, match=r"obj: expected first-layer weights of shape"):
        first_layer(np.zeros((4, 3, 3)))


# --- whitening --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stats():
    return firstlayer.patch_stats(cifar_images(300)[0], 3).normalized(IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("kind", ["pca", "zca"])
def test_whitened_patch_covariance_is_identity(stats, kind):
    w = whitening_filters(stats, 0.0, kind=kind).reshape(27, -1)
    np.testing.assert_allclose(w @ stats.covariance @ w.T, np.eye(27), atol=1e-8)
    if kind == "zca":
        np.testing.assert_allclose(w, stats.zca(0.0), atol=1e-8)  # agrees with PatchStats.zca
        np.testing.assert_allclose(w, w.T, atol=1e-10)  # ZCA is symmetric


def test_whitening_options_and_errors(stats):
    w = whitening_filters(stats, 1e-4, n_components=12, pairs=True)
    assert w.shape == (24, 3, 3, 3)
    np.testing.assert_array_equal(w[12:], -w[:12])
    flat = w[:12].reshape(12, -1)
    np.testing.assert_allclose(
        np.diag(flat @ stats.covariance @ flat.T),
        stats.pca().eigenvalues[:12] / (stats.pca().eigenvalues[:12] + 1e-4),
    )
    with pytest.raises(ValueError, match="n_components: expected 1..27"):
        whitening_filters(stats, n_components=40)
    with pytest.raises(ValueError, match="kind: expected 'pca' or 'zca'"):
        whitening_filters(stats, kind="pcaa")
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0"):
        whitening_filters(stats, -1.0)


def test_init_first_layer_writes_whitening_into_a_model(stats):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 10, 1))
    before = model[0].weight.detach().clone()
    path = init_first_layer(model, stats, 1e-4, pairs=True, freeze=True)
    conv = model.get_submodule(path)
    assert path == "0"
    w = whitening_filters(stats, 1e-4, pairs=True)
    np.testing.assert_allclose(conv.weight.detach().numpy()[:54], w, rtol=1e-6)
    np.testing.assert_array_equal(conv.weight.detach()[54:], before[54:])  # the rest untouched
    # The bias centres the responses: W mean + b = 0.
    np.testing.assert_allclose(
        w.reshape(54, -1) @ stats.mean + conv.bias.detach().numpy()[:54], 0, atol=1e-4
    )
    assert not conv.weight.requires_grad
    with pytest.raises(ValueError, match=r"model: expected a first layer of shape \(>=54, 3, 3, 3"):
        init_first_layer(nn.Sequential(nn.Conv2d(3, 16, 3)), stats, pairs=True)
