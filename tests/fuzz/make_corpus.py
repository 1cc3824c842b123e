"""Write the fuzzing corpus ``tests/fuzz/corpus/`` (deterministic; a few KB in all).

Run from the repository root: ``python tests/fuzz/make_corpus.py``. The files are committed; this
script documents how each was made. Hostile files name a marker file, ``FIRSTLAYER_PWNED``,
relative to the working directory: a reader that executed one would create it.

Names start with the reader they target:

* ``pickle-*``: CIFAR python batches for
  :func:`firstlayer.sources.cifar_pickle.read_cifar_batch`
  (``pickle-ok-*`` are valid seeds, every other one must raise ``UnsafePickleError`` or
  ``ValueError``);
* ``torch-*``: checkpoints for :func:`firstlayer.first_layer` (must raise ``ValueError``);
* ``stats-*``: ``PatchStats`` files (``stats-ok-*`` valid, others ``ValueError``);
* ``ckpt-*``: streaming checkpoints for :func:`firstlayer.checkpoint.read_checkpoint`;
* ``png-*``: images for the Rust decoder (``png-ok-*`` valid, others give a reason string).
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
MARKER = "FIRSTLAYER_PWNED"
PAYLOAD = f"open({MARKER!r}, 'w').close()"


class _Exec:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (PAYLOAD,))


def _cifar(n: int = 1, labels: object = None, columns: int = 3072) -> dict[bytes, object]:
    rng = np.random.default_rng(n)
    return {
        b"batch_label": b"corpus",
        b"labels": list(range(n)) if labels is None else labels,
        b"data": rng.integers(0, 256, (n, columns), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def _png(h: int, w: int) -> bytes:
    """A valid 8-bit RGB PNG, written by hand (no Pillow needed)."""
    rng = np.random.default_rng(h * 100 + w)
    rows = rng.integers(0, 256, (h, w * 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def files() -> dict[str, bytes]:
    """Name -> bytes of every corpus file."""
    sys.path.insert(0, str(HERE.parent.parent / "python"))
    import firstlayer
    from firstlayer.checkpoint import Checkpoint, write_checkpoint

    out: dict[str, bytes] = {}
    ok = pickle.dumps(_cifar(1), protocol=4)
    out["pickle-ok-1image.p4"] = ok
    hostile = _cifar(1, labels=[_Exec()], columns=8)
    out["pickle-exec-in-labels.p2"] = pickle.dumps(hostile, protocol=2)
    out["pickle-exec-top.p4"] = pickle.dumps(_Exec(), protocol=4)
    # Protocol 0 text opcodes: GLOBAL os.system then REDUCE.
    out["pickle-os-system.p0"] = b"cos\nsystem\n(S'touch " + MARKER.encode() + b"'\ntR."
    # STACK_GLOBAL naming subprocess.Popen, protocol 4.
    out["pickle-popen.p4"] = (
        b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93\x8c\x05touch\x8c\x10"
        + MARKER.encode()
        + b"\x86\x85R."
    )
    # The numpy reconstructor with a foreign callable as its class.
    out["pickle-reconstruct-foreign.p2"] = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncbuiltins\nexec\nU\x01xU\x01b\x87R."
    )
    out["pickle-truncated.p4"] = ok[:200]
    out["pickle-huge-length.p2"] = b"\x80\x02B\xff\xff\xff\x7fabc."  # BINBYTES of 2 GiB, 3 given

    import torch

    buf = io.BytesIO()
    torch.save({"conv1.weight": _Exec()}, buf)
    out["torch-exec.pt"] = buf.getvalue()
    out["torch-truncated.pt"] = buf.getvalue()[:300]

    x = np.random.default_rng(0).integers(0, 256, (2, 1, 4, 5), dtype=np.uint8)
    stats = firstlayer.patch_stats(x, kernel_size=1)
    tmp = CORPUS / ".tmp-stats.npz"
    stats.save(tmp)
    s = tmp.read_bytes()
    out["stats-ok-k1.npz"] = s
    out["stats-truncated.npz"] = s[:1000]
    for at in range(len(s) // 2, len(s)):  # the first flip past the middle that is detected
        flipped = bytearray(s)
        flipped[at] ^= 0x01
        tmp.write_bytes(bytes(flipped))
        try:
            firstlayer.PatchStats.load(tmp)
        except ValueError:
            out["stats-bitflip.npz"] = bytes(flipped)
            break
    write_checkpoint(tmp, Checkpoint(stats=stats, position=2, fingerprint="corpus"))
    c = tmp.read_bytes()
    tmp.unlink()
    out["ckpt-truncated.npz"] = c[:1000]

    png = _png(6, 5)
    out["png-ok-6x5.png"] = png
    out["png-truncated.png"] = png[: len(png) - 30]
    out["png-header-only.png"] = png[:16]
    big = bytearray(png)
    big[16:24] = struct.pack(">II", 0x7FFFFFFF, 0x7FFFFFFF)  # huge IHDR size, stale CRC
    out["png-huge-dimensions.png"] = bytes(big)
    return out


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.iterdir():
        old.unlink()
    total = 0
    for name, data in sorted(files().items()):
        (CORPUS / name).write_bytes(data)
        total += len(data)
    print(f"{len(list(CORPUS.iterdir()))} files, {total} bytes in {CORPUS}")


if __name__ == "__main__":
    main()
