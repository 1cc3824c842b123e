"""``firstlayer._core.decode_images`` (Rust) against Pillow (``firstlayer.sources.decode``).

Lossless formats (PNG, BMP) must match Pillow bit for bit, through every option: RGB/grayscale
conversion, ``Resize`` (Pillow's antialiased bilinear), ``CenterCrop`` (with padding). So must
baseline JPEG (libjpeg's IDCT, upsampling and colour conversion are reproduced); progressive JPEG
falls back to zune-jpeg and is compared within a measured bound. Corrupt and truncated files
must come back as reason strings, in place.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _data import JPEG, exact_images, shared_file
from firstlayer import _core
from firstlayer.sources import DecodeOptions, decode_image

Image = pytest.importorskip("PIL.Image")

decode_images: Callable[..., list[Any]] | None = getattr(_core, "decode_images", None)
pytestmark = pytest.mark.skipif(decode_images is None, reason="_core.decode_images not built")

# Baseline JPEGs (sequential Huffman, 8-bit, 4:4:4 / 4:2:2 / 4:2:0 / grayscale) go through the
# crate's own libjpeg-compatible decoder and must equal Pillow (libjpeg-turbo) bit for bit.
# Progressive JPEGs fall back to zune-jpeg (the `image` crate's decoder), whose IDCT and chroma
# upsampling round differently: measured max |diff| 4, mean |diff| 0.17 on these images.
#: kind: (max |diff|, mean |diff|). All exact: JPEGs the baseline decoder does not cover
#: (progressive, CMYK, ...) go to Pillow (issue 17; zune-jpeg was up to 6 levels off).
JPEG_BOUNDS: dict[str, tuple[int, float]] = {}

OPTIONS = [
    DecodeOptions(),
    DecodeOptions(grayscale=True),
    DecodeOptions(resize=256, center_crop=(224, 224)),
    DecodeOptions(resize=256, center_crop=(224, 224), grayscale=True),
    DecodeOptions(resize=20),
    DecodeOptions(resize=(17, 45)),
    DecodeOptions(resize=9, center_crop=(8, 7)),
    DecodeOptions(center_crop=(40, 21)),
    DecodeOptions(center_crop=(7, 30), grayscale=True),
]


def rust(paths: list[Path], opts: DecodeOptions, threads: int = 2) -> list[Any]:
    """The Rust decoder as users get it: what it leaves to Pillow ("Unsupported: ...", e.g.
    progressive JPEGs) is decoded by Pillow."""
    assert decode_images is not None
    from firstlayer.sources.decode import make_decoder

    dec = make_decoder(opts, threads, "rust")
    try:
        return dec.submit([str(p) for p in paths])()
    finally:
        dec.close()


def pillow(paths: list[Path], opts: DecodeOptions) -> list[np.ndarray]:
    return [decode_image(p, opts) for p in paths]


def cifar_hwc(n: int) -> np.ndarray:
    """``n`` exact CIFAR images, NHWC uint8."""
    x, _ = exact_images(n)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def mosaics() -> list[np.ndarray]:
    """Larger natural images of odd sizes: tiles of CIFAR images, cropped."""
    x = cifar_hwc(80)
    grid = x[:77].reshape(7, 11, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(224, 352, 3)
    return [
        np.ascontiguousarray(grid),
        np.ascontiguousarray(grid[3:200, 5:336]),  # 197 x 331
        np.ascontiguousarray(grid[:61, :223]),
        np.ascontiguousarray(grid[10:11, :300]),  # one row
        np.ascontiguousarray(grid[:150, 7:8]),  # one column
    ]


def photos() -> list[np.ndarray]:
    """scikit-image's bundled photos, when scikit-image is installed."""
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        try:
            out.append(np.asarray(getattr(data, name)()))
        except Exception:  # noqa: BLE001 - a photo that needs a download is skipped
            continue
    return out


def save(folder: Path, arrays: list[np.ndarray], fmt: str, **kw: Any) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(arrays):
        p = folder / f"{i:05d}.{fmt.lower()}"
        Image.fromarray(a).save(p, fmt, **kw)
        paths.append(p)
    return paths


def assert_exact(got: list[Any], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert not isinstance(g, str), f"{what} #{i}: {g}"
        assert g.dtype == np.uint8 and g.shape == w.shape, f"{what} #{i}: {g.shape} {w.shape}"
        if not np.array_equal(g, w):
            d = np.abs(g.astype(int) - w.astype(int))
            pytest.fail(f"{what} #{i}: {int((d > 0).sum())} pixels differ, max {int(d.max())}")


# ----------------------------------------------------------------------------------------------
# Lossless formats: bit-exact through every option
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lossless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("lossless")
    small = list(cifar_hwc(120))
    big = mosaics() + photos()
    return {
        "png": save(root / "png", small[:100] + big, "PNG"),
        "bmp": save(root / "bmp", small[100:] + big[:3], "BMP"),
    }


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: o.describe())
def test_lossless_bit_exact(lossless: dict[str, list[Path]], opts: DecodeOptions) -> None:
    for fmt, paths in lossless.items():
        assert_exact(rust(paths, opts), pillow(paths, opts), f"{fmt} {opts.describe()}")


def test_threads_do_not_change_results(lossless: dict[str, list[Path]]) -> None:
    paths = lossless["png"]
    opts = DecodeOptions(resize=40, center_crop=(32, 32))
    one = rust(paths, opts, threads=1)
    assert_exact(rust(paths, opts, threads=0), one, "threads=0")
    assert_exact(rust(paths[::-1], opts, threads=3)[::-1], one, "threads=3, reversed")


# ----------------------------------------------------------------------------------------------
# Pixel formats Pillow converts with convert("RGB") (palettes, alpha, 16-bit, low bit depths)
# ----------------------------------------------------------------------------------------------


def png_bytes(a: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A minimal PNG writer, for the sample formats Pillow cannot write (16-bit RGB, ...)."""
    h, w = a.shape[:2]
    if bit_depth == 16:
        rows = a.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, -1)
    elif bit_depth < 8:
        rows = np.packbits(
            np.unpackbits(a.reshape(h, w, 1).astype(np.uint8), axis=2)[:, :, -bit_depth:].reshape(
                h, -1
            ),
            axis=1,
        )
    else:
        rows = a.reshape(h, -1).astype(np.uint8)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def pixel_formats(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(3)
    rgb = mosaics()[1][:45, :37]  # odd sizes
    h, w = rgb.shape[:2]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    wide = rng.integers(0, 65536, (h, w, 4), dtype=np.uint16)
    wide[:5] = rng.integers(0, 300, (5, w, 4))  # 16-bit grey around Pillow's clipping at 255
    files: dict[str, Any] = {
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "la.png": Image.fromarray(np.dstack([gray, alpha]), "LA"),
        "l.png": Image.fromarray(gray, "L"),
        "p.png": Image.fromarray(rgb).quantize(200),
        "p4.png": (Image.fromarray(rgb).quantize(16), {"bits": 4}),
        "1.png": Image.fromarray(gray > 128),
        "l.bmp": Image.fromarray(gray, "L"),
        "p.bmp": Image.fromarray(rgb).quantize(77),
        "1.bmp": Image.fromarray(gray > 100),
        "rgb16.png": png_bytes(wide[..., :3], 2, 16),
        "rgba16.png": png_bytes(wide, 6, 16),
        "l16.png": png_bytes(wide[..., 0], 0, 16),
        "la16.png": png_bytes(wide[..., :2], 4, 16),
        "l4.png": png_bytes(gray >> 4, 0, 4),
        "l2.png": png_bytes(gray >> 6, 0, 2),
    }
    ptrns = Image.fromarray(rgb).quantize(50)
    ptrns.info["transparency"] = 3
    files["ptrns.png"] = ptrns
    paths = []
    for name, obj in files.items():
        p = root / name
        if isinstance(obj, bytes):
            p.write_bytes(obj)
        else:
            img, kw = obj if isinstance(obj, tuple) else (obj, {})
            img.save(p, **kw)
        paths.append(p)
    return paths


@pytest.mark.parametrize("opts", OPTIONS[:4] + OPTIONS[6:8], ids=lambda o: o.describe())
def test_pixel_formats_bit_exact(pixel_formats: list[Path], opts: DecodeOptions) -> None:
    got = rust(pixel_formats, opts)
    for p, g, want in zip(pixel_formats, got, pillow(pixel_formats, opts), strict=True):
        assert_exact([g], [want], p.name)


def test_sixteen_bit_conventions(pixel_formats: list[Path]) -> None:
    """Pillow keeps the high byte of 16-bit RGB, and clips 16-bit grey ("I;16") at 255."""
    by_name = {p.name: p for p in pixel_formats}
    with Image.open(by_name["l16.png"]) as im:
        assert im.mode.startswith("I")
        raw = np.asarray(im).astype(np.int64)
    (g,) = rust([by_name["l16.png"]], DecodeOptions())
    np.testing.assert_array_equal(g[..., 0], np.minimum(raw, 255))


# ----------------------------------------------------------------------------------------------
# JPEG: bit-exact for baseline files; progressive ones within a measured bound
# ----------------------------------------------------------------------------------------------


def jpeg_diff(got: list[Any], want: list[np.ndarray]) -> tuple[int, float, float]:
    """(max |diff|, mean |diff|, fraction of differing values) over a list of images."""
    worst, total, differ, n = 0, 0, 0, 0
    for g, w in zip(got, want, strict=True):
        assert not isinstance(g, str), g
        assert g.shape == w.shape
        d = np.abs(g.astype(np.int64) - w.astype(np.int64))
        worst = max(worst, int(d.max()))
        total += int(d.sum())
        differ += int((d > 0).sum())
        n += d.size
    return worst, total / n, differ / n


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("jpeg")
    with np.load(shared_file(JPEG), allow_pickle=False) as f:
        blob, offsets = f["jpeg"], f["offsets"]
    cifar = root / "cifar"
    cifar.mkdir()
    real = []
    for i in range(300):  # the dataset's own JPEG files, as they were encoded
        p = cifar / f"{i:05d}.jpg"
        p.write_bytes(blob[offsets[i] : offsets[i + 1]].tobytes())
        real.append(p)
    big = mosaics()[:3] + photos()
    tiny = [m[:, :k] for m in mosaics()[3:] for k in (1, 2, 3, 5)] + [mosaics()[1][:9, :7]]
    gray = [np.asarray(Image.fromarray(a).convert("L")) if a.ndim == 3 else a for a in big]
    # As in benches/bench_folder_stats.py: Resize(256) is a no-op on these, so CenterCrop(224)
    # goes through the decoder's crop window (only the kept blocks and pixels are decoded).
    upscaled = [
        np.asarray(Image.fromarray(a).resize((256, 256), Image.Resampling.BICUBIC))
        for a in cifar_hwc(12)
    ] + [np.asarray(Image.fromarray(mosaics()[1]).resize((300, 257)))]
    return {
        "cifar q75": real,
        "4:2:0 q90": save(root / "420", big, "JPEG", quality=90),
        "4:4:4 q95": save(root / "444", big, "JPEG", quality=95, subsampling=0),
        "4:2:2 q80": save(root / "422", big, "JPEG", quality=80, subsampling=1),
        "progressive": save(root / "prog", big, "JPEG", quality=85, progressive=True),
        "grayscale": save(root / "gray", gray, "JPEG", quality=90),
        "restarts": save(root / "rst", big[:3], "JPEG", quality=85, restart_marker_blocks=5),
        "tiny 4:2:0": save(root / "tiny420", tiny, "JPEG", quality=90),
        "tiny 4:2:2": save(root / "tiny422", tiny, "JPEG", quality=90, subsampling=1),
        "256 4:2:0 q90": save(root / "up420", upscaled, "JPEG", quality=90),
        "256 4:2:2 q90": save(root / "up422", upscaled[-4:], "JPEG", quality=90, subsampling=1),
    }


@pytest.mark.parametrize(
    "opts", [OPTIONS[i] for i in (0, 1, 2, 3, 7, 8)], ids=lambda o: o.describe()
)
def test_jpeg_matches_pillow(
    jpegs: dict[str, list[Path]], opts: DecodeOptions, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind, paths in jpegs.items():
        worst, mean, frac = jpeg_diff(rust(paths, opts), pillow(paths, opts))
        with capsys.disabled():
            print(
                f"\n  jpeg {kind:12s} {opts.describe():28s} "
                f"max|d|={worst} mean|d|={mean:.3f} differ={frac:.3f}"
            )
        max_bound, mean_bound = JPEG_BOUNDS.get(kind, (0, 0.0))
        assert worst <= max_bound, f"{kind}: max |diff| {worst}"
        assert mean <= mean_bound, f"{kind}: mean |diff| {mean:.3f}"


# ----------------------------------------------------------------------------------------------
# Failures: a reason per file, in place; never a panic, never a silent drop
# ----------------------------------------------------------------------------------------------


def test_corrupt_and_truncated_files_give_reasons(tmp_path: Path) -> None:
    good_rgb = cifar_hwc(1)[0]
    encoded = {}
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(np.kron(good_rgb, np.ones((3, 3, 1), np.uint8))).save(buf, fmt)
        encoded[fmt] = buf.getvalue()
    bad: dict[str, bytes] = {
        "empty.png": b"",
        "text.jpg": b"this is not an image\n" * 10,
        "noise.bmp": np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes(),
        "header_only.png": encoded["PNG"][:40],
    }
    for fmt, data in encoded.items():
        for frac in (0.1, 0.5, 0.9):
            bad[f"cut{frac}.{fmt.lower()}"] = data[: int(len(data) * frac)]
        # a flipped byte in the middle of the PNG's compressed data breaks its CRC
    png = bytearray(encoded["PNG"])
    png[len(png) // 2] ^= 0xFF
    bad["crc.png"] = bytes(png)
    paths: list[Path] = []
    for name, data in bad.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(p)
        with pytest.raises(Exception):  # noqa: B017, PT011 - Pillow fails on each one too
            decode_image(p)
    ok = tmp_path / "ok.png"
    ok.write_bytes(encoded["PNG"])
    missing = tmp_path / "missing.png"
    batch = [ok, *paths, missing, ok]
    for opts in (DecodeOptions(), DecodeOptions(resize=16, center_crop=(8, 8), grayscale=True)):
        out = rust(batch, opts)
        assert len(out) == len(batch)
        assert_exact([out[0], out[-1]], pillow([ok, ok], opts), "good file around bad ones")
        for p, o in zip(batch[1:-1], out[1:-1], strict=True):
            assert isinstance(o, str) and o, f"{p.name}: expected a reason, got {type(o)}"


def test_bad_arguments() -> None:
    assert decode_images is not None
    assert decode_images([], grayscale=False, resize=None, center_crop=None, threads=1) == []
    with pytest.raises(TypeError, match="resize"):
        decode_images(["x.png"], grayscale=False, resize="big", center_crop=None, threads=1)
    with pytest.raises(ValueError, match="positive"):
        decode_images(["x.png"], grayscale=False, resize=0, center_crop=None, threads=1)
    with pytest.raises(ValueError, match="positive"):
        decode_images(["x.png"], grayscale=False, resize=None, center_crop=(0, 3), threads=1)
