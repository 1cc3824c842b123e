"""Every source kind streamed through PatchStats, on real CIFAR-10 pixels in original formats."""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import _data  # tests/_data.py (pytest puts tests/ on sys.path)
import firstlayer
from firstlayer import _progress, sources
from firstlayer.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from firstlayer.exceptions import DatasetNotFoundError, ImageDecodeError, UnsafePickleError
from firstlayer.sources import DecodeOptions, datasets, decode_image, load_sample
from firstlayer.sources.cifar_pickle import load_restricted_pickle, read_cifar_batch, read_meta
from firstlayer.streaming import stream_stats

K = 3
N = 240  # images used by most tests


@pytest.fixture(scope="module")
def cifar() -> tuple[np.ndarray, np.ndarray]:
    """240 exact CIFAR-10 training images (NCHW uint8) and their labels."""
    return _data.exact_images(N)


@pytest.fixture(scope="module")
def names() -> list[str]:
    return [str(v) for v in _data.exact_cifar()["label_names"]]


@pytest.fixture(scope="module")
def reference(cifar: tuple[np.ndarray, np.ndarray]) -> firstlayer.PatchStats:
    x, y = cifar
    return firstlayer.patch_stats(x, kernel_size=K, labels=y)


@pytest.fixture(scope="module")
def png_folder(
    tmp_path_factory: pytest.TempPathFactory, cifar: tuple[np.ndarray, np.ndarray], names: list[str]
) -> Path:
    folder = tmp_path_factory.mktemp("png") / "images"
    _data.write_png_folder(folder, cifar[0], cifar[1], names)
    return folder


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, _data.write_cifar10_folder(root, per_batch=60)


# ---------------------------------------------------------------------------------------------
# The restricted CIFAR reader
# ---------------------------------------------------------------------------------------------


def test_reads_the_original_batches_meta_byte_for_byte() -> None:
    meta = _data.exact_cifar()["batches_meta"].tobytes()
    assert read_meta(data=meta) == [str(v) for v in _data.exact_cifar()["label_names"]]
    assert load_restricted_pickle(meta)[b"num_vis"] == 3072


def test_python2_batch_reads_like_pickle(cifar: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = cifar
    blob = _data.cifar_batch_bytes(x, y, batch_label=b"training batch 1 of 5")
    expected = pickle.loads(blob, encoding="bytes")  # our own fixture: safe to unpickle
    batch = read_cifar_batch("data_batch_1", data=blob)
    np.testing.assert_array_equal(batch.images.reshape(len(x), -1), expected[b"data"])
    np.testing.assert_array_equal(batch.images, x)
    assert batch.labels.tolist() == expected[b"labels"] == y.tolist()
    assert batch.filenames[0] == "image_00000.png"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_arrays_read(protocol: int) -> None:
    d = {
        "data": np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072),
        "fine_labels": [3, 99],
        "coarse_labels": [0, 19],
        "big_endian": np.arange(4, dtype=">i4"),
        "fortran": np.asfortranarray(np.ones((2, 3))),
    }
    got = load_restricted_pickle(pickle.dumps(d, protocol=protocol))
    for k, v in d.items():
        np.testing.assert_array_equal(got[k], v)
    batch = read_cifar_batch("train", data=pickle.dumps(d, protocol=protocol))
    assert batch.labels.tolist() == [3, 99]
    assert batch.coarse_labels is not None
    assert batch.coarse_labels.tolist() == [0, 19]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


class _EvalEvil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("__import__('os').getcwd()",))


def test_malicious_pickle_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    blob = pickle.dumps(payload, protocol=2)
    evil_file = tmp_path / "data_batch_1"
    evil_file.write_bytes(blob)

    pickle.loads(blob)  # the real unpickler runs the payload: the test is meaningful
    assert marker.is_dir()
    marker.rmdir()

    with pytest.raises(UnsafePickleError, match=r"posix\.mkdir|os\.mkdir") as err:
        read_cifar_batch(evil_file)
    assert str(evil_file) in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="eval"):
        load_restricted_pickle(pickle.dumps([_EvalEvil()], protocol=4))
    with pytest.raises(UnsafePickleError):  # through the public entry point too
        stream_stats(evil_file, quiet=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "blob",
    [
        # an allowed numpy global called with foreign arguments
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncos\nsystem\nU\x02lsU\x01b\x87R.",
        # an object dtype
        b"\x80\x02cnumpy\ndtype\nU\x02O8K\x00K\x01\x87R.",
        # INST / OBJ / protocol-0 text opcodes are not data
        b"(cos\nsystem\nS'ls'\ntR.",
        b"\x80\x02(cbuiltins\nlist\no.",
        # truncated in the middle of a string
        b"\x80\x02U\x10abc",
        # no STOP
        b"\x80\x02]q\x01",
    ],
)
def test_crafted_pickles_raise(blob: bytes) -> None:
    with pytest.raises(UnsafePickleError):
        load_restricted_pickle(blob)


# ---------------------------------------------------------------------------------------------
# The same images through every source give the same statistics
# ---------------------------------------------------------------------------------------------


def test_png_folder_equals_in_memory(png_folder: Path, reference: firstlayer.PatchStats) -> None:
    got = firstlayer.patch_stats(
        png_folder, kernel_size=K, batch_size=37, decode_threads=2, quiet=True
    )
    assert got == reference
    assert got.skipped == []
    one = stream_stats(png_folder, kernel_size=K, batch_size=256, decode_threads=1, quiet=True)
    assert one == reference


def test_png_folder_without_labels(png_folder: Path, cifar: tuple[np.ndarray, np.ndarray]) -> None:
    got = stream_stats(png_folder, kernel_size=K, labels=False, quiet=True)
    assert got == firstlayer.patch_stats(cifar[0], kernel_size=K)


def test_cifar_batches_folder_tarball_and_names(
    cifar_root: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, written = cifar_root
    train = firstlayer.patch_stats(
        written["train_images"], kernel_size=K, labels=written["train_labels"]
    )
    test = firstlayer.patch_stats(
        written["test_images"], kernel_size=K, labels=written["test_labels"]
    )
    folder = root / "cifar-10-batches-py"
    assert stream_stats(folder, kernel_size=K, batch_size=25, quiet=True) == train
    assert stream_stats(folder / "test_batch", kernel_size=K, quiet=True) == test
    assert stream_stats("cifar10", root=root, kernel_size=K, quiet=True) == train
    assert stream_stats("cifar10-test", root=root, kernel_size=K, quiet=True) == test

    tar_root = tmp_path / "tar"
    tar_root.mkdir()
    with tarfile.open(tar_root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert stream_stats("cifar10-test", root=tar_root, kernel_size=K, quiet=True) == test
    src = sources.open_source("cifar10", root=tar_root)
    cut = tmp_path / "cut"
    cut.mkdir()
    blob = (tar_root / "cifar-10-python.tar.gz").read_bytes()
    (cut / "cifar-10-python.tar.gz").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ValueError, match="interrupted download"):
        stream_stats("cifar10", root=cut, quiet=True)
    assert src.class_names is not None
    assert src.class_names[0] == "airplane"


def test_npy_memmap_and_npz(tmp_path: Path, cifar: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = cifar
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.save(tmp_path / "x.npy", nhwc)
    np.save(tmp_path / "y.npy", y)
    ref = firstlayer.patch_stats(x, kernel_size=K, labels=y)
    got = stream_stats(tmp_path / "x.npy", kernel_size=K, labels=tmp_path / "y.npy", quiet=True)
    assert got == ref
    got = stream_stats(str(tmp_path / "x.npy"), kernel_size=K, labels=y, layout="NHWC", quiet=True)
    assert got == ref
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    assert stream_stats(tmp_path / "d.npz", kernel_size=K, quiet=True) == ref
    gray = np.ascontiguousarray(x[:, 0])
    np.save(tmp_path / "g.npy", gray)
    assert stream_stats(tmp_path / "g.npy", kernel_size=K, quiet=True) == firstlayer.patch_stats(
        gray, kernel_size=K
    )


def test_npy_streams_in_bounded_memory(tmp_path: Path) -> None:
    d = _data.exact_cifar()
    big = np.ascontiguousarray(d["data"].reshape(-1, 3, 32, 32))  # 19 MB
    path = tmp_path / "big.npy"
    np.save(path, big)
    ref = firstlayer.patch_stats(big, kernel_size=K)
    del big
    tracemalloc.start()
    try:
        got = stream_stats(path, kernel_size=K, batch_size=128, quiet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == ref
    assert peak < 6 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB for a 19 MiB file"


def test_torch_sources(
    cifar: tuple[np.ndarray, np.ndarray], reference: firstlayer.PatchStats
) -> None:
    torch = pytest.importorskip("torch")
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    x, y = cifar
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    ds = TensorDataset(xt, yt)
    assert stream_stats(ds, kernel_size=K, quiet=True) == reference
    loader = DataLoader(ds, batch_size=50)
    assert stream_stats(loader, kernel_size=K, quiet=True) == reference
    unlabelled = firstlayer.patch_stats(x, kernel_size=K)
    assert stream_stats(DataLoader(TensorDataset(xt), batch_size=64), quiet=True) == unlabelled

    class PilDataset(Dataset):  # type: ignore[type-arg]
        classes = [str(i) for i in range(10)]

        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> tuple[Image.Image, int]:
            return Image.fromarray(np.ascontiguousarray(x[i].transpose(1, 2, 0))), int(y[i])

    assert stream_stats(PilDataset(), kernel_size=K, batch_size=100, quiet=True) == reference
    gen = ((x[i : i + 80], y[i : i + 80]) for i in range(0, len(x), 80))
    assert stream_stats(gen, kernel_size=K, quiet=True) == reference

    floats = xt.float() / 255
    got = stream_stats(DataLoader(TensorDataset(floats), batch_size=64), quiet=True)
    want = firstlayer.patch_stats(floats.numpy(), kernel_size=K)
    assert got.count == want.count
    assert not got.exact
    np.testing.assert_allclose(got.second_moment, want.second_moment, rtol=1e-12)


def test_torchvision_datasets(
    tmp_path: Path,
    cifar_root: tuple[Path, dict[str, np.ndarray]],
    png_folder: Path,
    reference: firstlayer.PatchStats,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tvd = pytest.importorskip("torchvision.datasets")
    import torchvision.transforms as T

    root, written = cifar_root
    # Our fixture is the real format but not the real file: skip torchvision's md5 check only.
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    want = firstlayer.patch_stats(
        written["train_images"], kernel_size=K, labels=written["train_labels"]
    )
    fast = tvd.CIFAR10(str(root), train=True, download=False)
    assert stream_stats(fast, kernel_size=K, quiet=True) == want
    slow = tvd.CIFAR10(str(root), train=True, download=False, transform=T.PILToTensor())
    assert stream_stats(slow, kernel_size=K, quiet=True) == want

    folder = tvd.ImageFolder(str(png_folder))
    assert stream_stats(folder, kernel_size=K, quiet=True) == reference
    folder_t = tvd.ImageFolder(str(png_folder), transform=T.PILToTensor())
    assert stream_stats(folder_t, kernel_size=K, quiet=True) == reference

    x, y = _data.exact_images(100)
    gray = np.ascontiguousarray(x[:, 1, 2:30, 2:30])  # 28x28 single channel
    _data.write_mnist_raw(tmp_path / "MNIST" / "raw", gray, y.astype(np.uint8), gz=False)
    mnist = tvd.MNIST(str(tmp_path), train=True, download=False)
    want = firstlayer.patch_stats(gray, kernel_size=K, labels=y)
    got = stream_stats(mnist, kernel_size=K, quiet=True)
    assert got == want
    assert got.channels == 1
    mnist_t = tvd.MNIST(str(tmp_path), train=True, download=False, transform=T.PILToTensor())
    assert stream_stats(mnist_t, kernel_size=K, quiet=True) == want


def test_svhn(
    tmp_path: Path, cifar: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    tvd = pytest.importorskip("torchvision.datasets")
    sio = pytest.importorskip("scipy.io")
    x, y = cifar
    sio.savemat(tmp_path / "train_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": (y + 1)[:, None]})
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    svhn = tvd.SVHN(str(tmp_path), split="train", download=False)
    # SVHN labels 1..10 with 10 meaning digit 0; torchvision maps 10 -> 0
    want = firstlayer.patch_stats(x, kernel_size=K, labels=np.where(y + 1 == 10, 0, y + 1))
    assert stream_stats(svhn, kernel_size=K, quiet=True) == want


# ---------------------------------------------------------------------------------------------
# Decoding: JPEG, resize / crop / grayscale, odd sizes, corrupt files
# ---------------------------------------------------------------------------------------------


def test_jpeg_folder_within_tolerance(tmp_path: Path) -> None:
    from PIL import Image

    d = _data.exact_cifar()
    rows = np.arange(0, len(d["index"]), 61)[:100]  # spread over the six batches
    exact = d["data"][rows].reshape(-1, 3, 32, 32)
    pil = []
    for i, g in enumerate(d["index"][rows]):
        blob = _data.jpeg_bytes(int(g))
        (tmp_path / f"{i:04d}.jpg").write_bytes(blob)
        pil.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    pil_x = np.stack(pil)
    for i in (0, 57):
        got = decode_image(tmp_path / f"{i:04d}.jpg")
        assert np.abs(got.astype(int) - pil_x[i]).max() <= 1  # libjpeg builds differ by 1
    mae = np.abs(pil_x.transpose(0, 3, 1, 2).astype(int) - exact).mean(axis=(1, 2, 3))
    assert mae.max() <= 13.5
    assert 3 <= np.median(mae) <= 9
    got = stream_stats(tmp_path, kernel_size=5, quiet=True)
    want = firstlayer.patch_stats(pil_x, kernel_size=5, layout="NHWC")
    np.testing.assert_allclose(got.covariance, want.covariance, atol=1.0)
    assert got.count == want.count


def test_resize_crop_grayscale_follow_torchvision(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    import torchvision.transforms as T
    from PIL import Image

    rng = np.random.default_rng(0)
    x, _ = _data.exact_images(6)
    sizes = [(32, 32), (45, 31), (31, 60), (17, 23), (64, 40), (20, 20)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = Image.fromarray(np.ascontiguousarray(x[i].transpose(1, 2, 0))).resize((w, h))
        mode = "L" if i == 3 else "RGB"
        p = tmp_path / f"{i}.{'bmp' if i == 4 else 'png'}"
        img.convert(mode).save(p)
        paths.append(p)
    cases = [
        (24, 22, False),
        (40, 36, True),
        ((30, 26), 33, False),
        (None, 28, False),
        (19, None, True),
    ]
    for resize, crop, gray in cases:
        tf = []
        if resize is not None:
            tf.append(T.Resize(resize))
        if crop is not None:
            tf.append(T.CenterCrop(crop))
        if gray:
            tf.append(T.Grayscale())
        compose = T.Compose(tf)
        crop_t = None if crop is None else (crop, crop)
        opts = DecodeOptions(grayscale=gray, resize=resize, center_crop=crop_t)
        for p in paths:
            want = np.asarray(compose(Image.open(p).convert("RGB")))
            got = decode_image(p, opts)
            assert got.shape == want.shape, (p, resize, crop, gray)
            np.testing.assert_array_equal(got, want)
    # the streamed statistics of transformed files equal those of torchvision's arrays
    tf = T.Compose([T.Resize(24), T.CenterCrop(22)])
    arrays = np.stack([np.asarray(tf(Image.open(p).convert("RGB"))) for p in paths])
    got = stream_stats(tmp_path, kernel_size=K, resize=24, center_crop=22, quiet=True)
    assert got == firstlayer.patch_stats(arrays, kernel_size=K, layout="NHWC")
    del rng


def test_images_of_different_sizes_without_resize(tmp_path: Path) -> None:
    x, _ = _data.exact_images(4)
    from PIL import Image

    parts = []
    for i, (h, w) in enumerate([(32, 32), (20, 28), (32, 32), (9, 12)]):
        arr = np.ascontiguousarray(x[i, :, :h, :w].transpose(1, 2, 0))
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        parts.append(firstlayer.patch_stats(arr[None], kernel_size=K, layout="NHWC"))
    got = stream_stats(tmp_path, kernel_size=K, quiet=True)
    assert got == parts[0] + parts[1] + parts[2] + parts[3]


def test_corrupt_and_truncated_files(tmp_path: Path, names: list[str]) -> None:
    x, y = _data.exact_images(30)
    paths = _data.write_png_folder(tmp_path, x, y, names)
    good = [i for i in range(30) if i not in (3, 11, 20)]
    paths[3].write_bytes(b"this is not a png")
    paths[11].write_bytes(paths[11].read_bytes()[:200])  # truncated PNG
    jpg = _data.jpeg_bytes(int(_data.exact_cifar()["index"][20]))
    paths[20].unlink()
    bad_jpeg = paths[20].with_suffix(".jpg")
    bad_jpeg.write_bytes(jpg[: len(jpg) // 2])  # truncated JPEG
    (tmp_path / "notes.txt").write_text("not an image, ignored by extension")

    with pytest.raises(ImageDecodeError) as err:
        stream_stats(tmp_path, kernel_size=K, quiet=True)
    assert str(paths[3]) in str(err.value)
    assert err.value.path == str(paths[3])

    got = stream_stats(tmp_path, kernel_size=K, on_error="skip", batch_size=8, quiet=True)
    want = firstlayer.patch_stats(x[good], kernel_size=K, labels=y[good])
    assert got == want
    assert len(got.skipped) == 3
    listed = " ".join(got.skipped)
    for p in (paths[3], paths[11], bad_jpeg):
        assert str(p) in listed


# ---------------------------------------------------------------------------------------------
# Dataset names
# ---------------------------------------------------------------------------------------------


def test_sample_is_bundled_and_exact() -> None:
    x, y, label_names = load_sample()
    assert x.dtype == np.uint8
    assert x.shape == (1017, 3, 32, 32)
    assert len(y) == 1017
    assert label_names[0] == "airplane"
    d = _data.exact_cifar()
    test_rows = d["index"] >= _data.N_TRAIN
    np.testing.assert_array_equal(x, d["data"][test_rows].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(y, d["labels"][d["index"][test_rows]])
    xt, yt, _ = load_sample("train")
    assert len(xt) == 350
    assert np.bincount(yt).tolist() == [35] * 10
    assert firstlayer.patch_stats("sample", quiet=True) == firstlayer.patch_stats(x, labels=y)
    size = sources.sample_path().stat().st_size
    assert size <= 4_000_000


def test_make_sample_is_reproducible(tmp_path: Path) -> None:
    script = _data.REPO / "scripts" / "make_sample.py"
    _data.shared_file(_data.SUBSET)
    env = {**os.environ, "FIRSTLAYER_DATA": str(_data.shared_data_dir())}
    for name in ("a.npz", "b.npz"):
        subprocess.run(
            [sys.executable, str(script), "--out", str(tmp_path / name)], check=True, env=env,
            capture_output=True,
        )  # fmt: skip
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as new:
        with np.load(sources.sample_path(), allow_pickle=False) as shipped:
            assert sorted(new.files) == sorted(shipped.files)
            for k in new.files:
                np.testing.assert_array_equal(new[k], shipped[k])


def test_mnist_name_from_raw_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data.exact_images(50)
    gray = np.ascontiguousarray(x[:, 0, :28, :28])
    _data.write_mnist_raw(tmp_path / "MNIST" / "raw", gray, y.astype(np.uint8), gz=True)
    want = firstlayer.patch_stats(gray, kernel_size=K, labels=y)
    assert stream_stats("mnist", root=tmp_path, kernel_size=K, quiet=True) == want
    monkeypatch.setenv("FIRSTLAYER_DATA", str(tmp_path))
    assert stream_stats("mnist-test", kernel_size=K, quiet=True) == want


def test_missing_dataset_names_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        stream_stats("cifar10", root=tmp_path, download=False, quiet=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert "download=False" in msg

    def offline(family: str, split: str, root: Path) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "_download", offline)
    monkeypatch.setenv("FIRSTLAYER_DATA", str(tmp_path / "a") + os.pathsep + str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError) as err:
        stream_stats("mnist", quiet=True)
    msg = str(err.value)
    assert str(tmp_path / "a" / "MNIST" / "raw") in msg
    assert str(tmp_path / "b") in msg
    assert "name resolution" in msg


# ---------------------------------------------------------------------------------------------
# Checkpoints: kill -9 and resume
# ---------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from firstlayer.sources import decode
    from firstlayer.streaming import stream_stats

    slow = decode._decode_or_reason

    def slowed(path, opts):
        time.sleep(0.004)  # make the run long enough to be killed in the middle
        return slow(path, opts)

    decode._decode_or_reason = slowed
    # decoder="pillow": the slowed-down path above (the Rust decoder would finish too soon).
    stream_stats(sys.argv[1], kernel_size=5, batch_size=50, decode_threads=2, decoder="pillow",
                 checkpoint=sys.argv[2], checkpoint_every=100, quiet=True)
    print("finished")
    """
)


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, names: list[str]) -> None:
    x, y = _data.exact_images(900)
    folder = tmp_path / "images"
    _data.write_png_folder(folder, x, y, names)
    ckpt = tmp_path / "run.partial.npz"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder), str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not ckpt.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, (out, err)
    assert b"finished" not in out

    state = read_checkpoint(ckpt)
    assert 0 < state.position < len(x)
    assert state.position % 50 == 0
    assert state.stats.n_images == state.position
    resumed = stream_stats(
        folder, kernel_size=5, batch_size=50, checkpoint=ckpt, checkpoint_every=100, quiet=True
    )
    assert not ckpt.exists()  # removed once complete
    straight = stream_stats(folder, kernel_size=5, batch_size=50, quiet=True)
    assert resumed == straight
    assert straight == firstlayer.patch_stats(x, kernel_size=5, labels=y)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_resume_float_source_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, _ = _data.exact_images(300)
    path = tmp_path / "f.npy"
    np.save(path, (x / np.float32(255)).astype(np.float32))
    ckpt = tmp_path / "f.partial.npz"
    real_steps = sources.ArraySource.steps

    def dying(self: sources.ArraySource, start: int = 0, batch_size: int = 256):  # type: ignore[no-untyped-def]
        for i, step in enumerate(real_steps(self, start, batch_size)):
            if i == 4:
                raise KeyboardInterrupt
            yield step

    monkeypatch.setattr(sources.ArraySource, "steps", dying)
    with pytest.raises(KeyboardInterrupt):
        stream_stats(path, batch_size=32, checkpoint=ckpt, checkpoint_every=64, quiet=True)
    monkeypatch.undo()
    assert read_checkpoint(ckpt).position == 128
    resumed = stream_stats(path, batch_size=32, checkpoint=ckpt, checkpoint_every=64, quiet=True)
    straight = stream_stats(path, batch_size=32, quiet=True)
    assert resumed == straight
    assert not resumed.exact


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    x, _ = _data.exact_images(64)
    np.save(tmp_path / "a.npy", x)
    ckpt = tmp_path / "c.partial.npz"
    src = sources.open_source(tmp_path / "a.npy")
    real = src.steps

    def two_steps(start: int = 0, batch_size: int = 256):  # type: ignore[no-untyped-def]
        for i, step in enumerate(real(start, batch_size)):
            if i == 2:
                raise RuntimeError("stop")
            yield step

    src.steps = two_steps  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        stream_stats(src, batch_size=16, checkpoint=ckpt, checkpoint_every=16, quiet=True)
    assert ckpt.exists()
    with pytest.raises(ValueError, match="different run"):
        stream_stats(tmp_path / "a.npy", kernel_size=5, batch_size=16, checkpoint=ckpt, quiet=True)


def test_checkpoint_holds_the_arrays_and_version_1_files_still_read(tmp_path: Path) -> None:
    x, y = _data.exact_images(20)
    stats = firstlayer.patch_stats(x, kernel_size=K, labels=y)
    write_checkpoint(tmp_path / "c.npz", Checkpoint(stats, 20, "f", [("a.png", "bad")]))
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert {"stats.sum", "stats.second_moment", "stats.shift"} <= set(z.files)
    state = read_checkpoint(tmp_path / "c.npz")
    assert (state.stats, state.position, state.skipped) == (stats, 20, [("a.png", "bad")])
    # Version 1 embedded the bytes of the statistics' own file.
    stats.save(tmp_path / "s.npz")
    blob = np.frombuffer((tmp_path / "s.npz").read_bytes(), dtype=np.uint8)
    np.savez(tmp_path / "v1.npz", checkpoint_version=np.array(1), position=np.array(20),
             fingerprint=np.array("f"), skipped_paths=np.array(["a.png"]),
             skipped_reasons=np.array(["bad"]), stats_npz=blob)  # fmt: skip
    old = read_checkpoint(tmp_path / "v1.npz")
    assert (old.stats, old.position, old.skipped) == (stats, 20, [("a.png", "bad")])
    np.savez(tmp_path / "v1bad.npz", checkpoint_version=np.array(1), position=np.array(0),
             fingerprint=np.array("f"), stats_npz=blob[:-200])  # fmt: skip
    with pytest.raises(ValueError, match="v1bad.npz"):
        read_checkpoint(tmp_path / "v1bad.npz")


# ---------------------------------------------------------------------------------------------
# Progress and argument errors
# ---------------------------------------------------------------------------------------------


def test_progress_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stream_stats("sample", quiet=True)
    assert capsys.readouterr().err == ""
    stream_stats("sample")  # quick: under the delay, silent
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(_progress, "PROGRESS_DELAY_S", 0.0)
    stream_stats("sample", batch_size=500)
    err = capsys.readouterr().err
    assert "firstlayer: sample:" in err
    assert "1,017/1,017 images (100%)" in err
    stream_stats("sample", batch_size=500, quiet=True)
    assert capsys.readouterr().err == ""
    buf = io.StringIO()
    bar = _progress.Progress(None, name="loader", delay=0.0, stream=buf)
    bar.update(10)
    bar.close()
    assert "10 images" in buf.getvalue()


def test_argument_errors(tmp_path: Path, png_folder: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        stream_stats("sample", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        stream_stats("sample", batch_size=0)
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        stream_stats(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="dataset name"):
        stream_stats("cifar11")
    with pytest.raises(TypeError, match="source must be"):
        stream_stats(42)
    with pytest.raises(ValueError, match="labels= as an array"):
        stream_stats(png_folder, labels=np.zeros(N, np.int64))
    with pytest.raises(ValueError, match="apply to image files"):
        stream_stats("sample", resize=16)
    with pytest.raises(ValueError, match="resize"):
        stream_stats(png_folder, resize=-3)
    with pytest.raises(ValueError, match="labels=True"):
        stream_stats(np.zeros((2, 3, 8, 8), np.uint8), labels=True)
    mixed = tmp_path / "mixed"
    (mixed / "cat").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(mixed / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(mixed / "loose.png")
    with pytest.raises(ValueError, match="labels=False"):
        stream_stats(mixed)
    assert stream_stats(mixed, labels=False, quiet=True).n_images == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        stream_stats(empty)


def test_cifar100_folder_and_name(tmp_path: Path) -> None:
    x, y = _data.exact_images(120)
    fine = (y * 10 + np.arange(len(y)) % 10).astype(np.int64)  # 100 classes
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(_data.cifar_batch_bytes(x, fine, batch_label=b"t", fine=True))
    (folder / "test").write_bytes(
        _data.cifar_batch_bytes(x[:50], fine[:50], batch_label=b"t", fine=True)
    )
    meta = pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2)
    (folder / "meta").write_bytes(meta)
    want = firstlayer.patch_stats(x, kernel_size=K, labels=fine)
    assert stream_stats(folder, kernel_size=K, quiet=True) == want
    assert stream_stats("cifar100", root=tmp_path, kernel_size=K, quiet=True) == want
    test = stream_stats("cifar100-test", root=tmp_path, kernel_size=K, quiet=True)
    assert test == firstlayer.patch_stats(x[:50], kernel_size=K, labels=fine[:50])
    src = sources.open_source("cifar100", root=tmp_path)
    assert src.n_classes == 100
    assert src.class_names is not None
    assert src.class_names[99] == "c99"


def test_shuffled_loader_refuses_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    x, _ = _data.exact_images(16)
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        stream_stats(loader, checkpoint=tmp_path / "c.npz", quiet=True)
    assert stream_stats(loader, quiet=True) == firstlayer.patch_stats(x)  # order-free when exact


def test_rust_decoder_hook_contract(
    png_folder: Path, reference: firstlayer.PatchStats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``firstlayer._core.decode_images``, when built, replaces Pillow with this contract."""
    from firstlayer import _core

    calls = []

    def decode_images(
        paths: list[str],
        *,
        grayscale: bool,
        resize: int | tuple[int, int] | None,
        center_crop: tuple[int, int] | None,
        threads: int,
    ) -> list[np.ndarray | str]:
        calls.append(len(paths))
        opts = DecodeOptions(grayscale=grayscale, resize=resize, center_crop=center_crop)
        out: list[np.ndarray | str] = []
        for p in paths:
            try:
                out.append(decode_image(p, opts))
            except OSError as exc:
                out.append(str(exc))
        return out

    if getattr(_core, "decode_images", None) is None:
        monkeypatch.setattr(_core, "decode_images", decode_images, raising=False)
        got = stream_stats(png_folder, kernel_size=K, batch_size=100, quiet=True)
        assert calls == [100, 100, 40]
    else:  # the real Rust decoder: lossless PNG must decode exactly
        got = stream_stats(png_folder, kernel_size=K, batch_size=100, decoder="rust", quiet=True)
    assert got == reference
    assert stream_stats(png_folder, kernel_size=K, decoder="pillow", quiet=True) == reference
