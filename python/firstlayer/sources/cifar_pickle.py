"""Read the original CIFAR python batches without executing pickle.

The CIFAR-10 and CIFAR-100 "python version" files are pickles of a dictionary holding a numpy
``uint8`` array (``data``), lists of integer labels and lists of file names. ``pickle.load`` on
such a file would run whatever callables the file names, so a tampered download could execute
code. This module interprets the pickle opcodes itself, with a small stack machine that knows only
the opcodes of plain containers, strings, numbers and the three numpy reconstruction recipes an
array can be pickled with. It never imports or calls anything the file names: a global outside
the allow-list, an unknown opcode or an unexpected argument raises :class:`UnsafePickleError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firstlayer.exceptions import UnsafePickleError

__all__ = ["CifarBatch", "load_restricted_pickle", "read_cifar_batch", "read_meta"]

#: numpy's own ``ndarray.__reduce__`` recipes, under the module names of numpy 1.x and 2.x.
_RECONSTRUCT = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
_FROMBUFFER = {"numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"}
_NDARRAY = "numpy.ndarray"
_DTYPE = "numpy.dtype"
_CODECS_ENCODE = "_codecs.encode"
_ALLOWED = _RECONSTRUCT | _FROMBUFFER | {_NDARRAY, _DTYPE, _CODECS_ENCODE}
#: numeric dtypes an array in the file may have (no objects, no structured or string types).
_ALLOWED_DTYPE_KINDS = "biuf"


@dataclass(frozen=True)
class _Global:
    """A name the file refers to; stands in for the object, which is never imported."""

    name: str


class _Mark:
    """The MARK sentinel on the stack."""


_MARK = _Mark()


@dataclass
class _DtypeStub:
    code: str
    byteorder: str = "|"

    def resolve(self) -> np.dtype:
        try:
            dt = np.dtype(self.code)
        except TypeError as exc:
            raise ValueError(f"dtype {self.code!r} is not a numpy dtype") from exc
        if dt.kind not in _ALLOWED_DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise ValueError(f"dtype {self.code!r} is not a plain numeric dtype")
        if self.byteorder in "<>" and dt.itemsize > 1:
            dt = dt.newbyteorder(self.byteorder)  # type: ignore[arg-type]
        return dt


@dataclass
class _ArrayStub:
    """``_reconstruct(ndarray, (0,), b'b')`` waiting for its BUILD state."""

    array: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _as_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)
    if isinstance(raw, str):  # Python 2 ``str`` read as latin-1, or a protocol-2 py3 ``bytes``
        return raw.encode("latin-1")
    raise ValueError(f"array data must be bytes, got {type(raw).__name__}")


def _as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _make_array(raw: object, dtype: object, shape: object, order: str) -> np.ndarray:
    if not isinstance(dtype, _DtypeStub):
        raise ValueError("array dtype is not a numpy dtype")
    dt = dtype.resolve()
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"array shape must be a tuple of non-negative ints, got {shape!r}")
    buf = _as_bytes(raw)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n * dt.itemsize != len(buf):
        raise ValueError(
            f"array of shape {shape} and dtype {dt} needs {n * dt.itemsize} bytes, "
            f"the file holds {len(buf)}"
        )
    arr = np.frombuffer(buf, dtype=dt, count=n)
    return arr.reshape(shape, order="F" if order == "F" else "C")


class _Machine:
    """A pickle virtual machine restricted to data."""

    def __init__(self, data: bytes | memoryview, path: str | None) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.path = path
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}

    # -- reading helpers --------------------------------------------------------------------
    def fail(self, message: str, offset: int | None = None) -> UnsafePickleError:
        return UnsafePickleError(message, self.path, self.pos if offset is None else offset)

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends inside an opcode argument ({n} bytes wanted)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, self.take(size))
        return int(value)

    def line(self) -> str:
        end = bytes(self.data[self.pos : self.pos + 256]).find(b"\n")
        if end < 0:
            raise self.fail("GLOBAL name without end of line")
        text = bytes(self.take(end + 1))[:-1]
        return text.decode("ascii", errors="replace")

    def pop_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise self.fail("MARK expected on the stack")

    def pop(self) -> Any:
        if not self.stack:
            raise self.fail("stack underflow")
        value = self.stack.pop()
        if value is _MARK:
            raise self.fail("unexpected MARK")
        return value

    def push_global(self, name: str, offset: int) -> None:
        if name not in _ALLOWED:
            raise self.fail(f"the file names the callable {name!r}", offset)
        self.stack.append(_Global(name))

    # -- the machine --------------------------------------------------------------------------
    def run(self) -> Any:  # noqa: C901 - one branch per opcode is the clearest form
        while True:
            offset = self.pos
            op = bytes(self.take(1))
            if op == b"\x80":  # PROTO
                proto = self.uint("<B")
                if proto > 5:
                    raise self.fail(f"unknown pickle protocol {proto}", offset)
            elif op == b"\x95":  # FRAME
                self.uint("<Q")
            elif op == b".":  # STOP
                return self.pop()
            elif op == b"(":
                self.stack.append(_MARK)
            elif op == b"}":
                self.stack.append({})
            elif op == b"]":
                self.stack.append([])
            elif op == b")":
                self.stack.append(())
            elif op == b"d":  # DICT
                items = self.pop_mark()
                self.stack.append(self.pairs_to_dict({}, items))
            elif op == b"l":  # LIST
                self.stack.append(self.pop_mark())
            elif op == b"t":
                self.stack.append(tuple(self.pop_mark()))
            elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
                n = op[0] - 0x84
                if len(self.stack) < n:
                    raise self.fail("stack underflow", offset)
                items = [self.pop() for _ in range(n)][::-1]
                self.stack.append(tuple(items))
            elif op == b"a":  # APPEND
                value = self.pop()
                self.list_top(offset).append(value)
            elif op == b"e":  # APPENDS
                items = self.pop_mark()
                self.list_top(offset).extend(items)
            elif op == b"s":  # SETITEM
                value = self.pop()
                key = self.pop()
                self.pairs_to_dict(self.dict_top(offset), [key, value])
            elif op == b"u":  # SETITEMS
                items = self.pop_mark()
                self.pairs_to_dict(self.dict_top(offset), items)
            elif op == b"N":
                self.stack.append(None)
            elif op == b"\x88":
                self.stack.append(True)
            elif op == b"\x89":
                self.stack.append(False)
            elif op == b"J":
                self.stack.append(self.uint("<i"))
            elif op == b"K":
                self.stack.append(self.uint("<B"))
            elif op == b"M":
                self.stack.append(self.uint("<H"))
            elif op == b"\x8a":  # LONG1
                n = self.uint("<B")
                self.stack.append(int.from_bytes(self.take(n), "little", signed=True))
            elif op == b"I":  # INT (text form; Python 2 writes booleans as I00 / I01)
                text = self.line().strip()
                if text in ("00", "01"):
                    self.stack.append(text == "01")
                else:
                    try:
                        self.stack.append(int(text))
                    except ValueError as exc:
                        raise self.fail(f"bad INT argument {text!r}", offset) from exc
            elif op == b"G":  # BINFLOAT
                (value,) = struct.unpack(">d", self.take(8))
                self.stack.append(value)
            elif op == b"T":  # BINSTRING (Python 2 str): kept as bytes
                self.stack.append(bytes(self.take(self.uint("<i"))))
            elif op == b"U":  # SHORT_BINSTRING
                self.stack.append(bytes(self.take(self.uint("<B"))))
            elif op == b"B":  # BINBYTES
                self.stack.append(bytes(self.take(self.uint("<I"))))
            elif op == b"C":  # SHORT_BINBYTES
                self.stack.append(bytes(self.take(self.uint("<B"))))
            elif op == b"\x8e":  # BINBYTES8
                self.stack.append(bytes(self.take(self.uint("<Q"))))
            elif op == b"\x96":  # BYTEARRAY8
                self.stack.append(bytes(self.take(self.uint("<Q"))))
            elif op == b"X":  # BINUNICODE
                self.stack.append(self.text(self.uint("<I"), offset))
            elif op == b"\x8c":  # SHORT_BINUNICODE
                self.stack.append(self.text(self.uint("<B"), offset))
            elif op == b"\x8d":  # BINUNICODE8
                self.stack.append(self.text(self.uint("<Q"), offset))
            elif op == b"q":  # BINPUT
                self.memo[self.uint("<B")] = self.peek(offset)
            elif op == b"r":  # LONG_BINPUT
                self.memo[self.uint("<I")] = self.peek(offset)
            elif op == b"\x94":  # MEMOIZE
                self.memo[len(self.memo)] = self.peek(offset)
            elif op in (b"h", b"j"):  # BINGET, LONG_BINGET
                key = self.uint("<B" if op == b"h" else "<I")
                if key not in self.memo:
                    raise self.fail(f"memo key {key} read before it was written", offset)
                self.stack.append(self.memo[key])
            elif op == b"0":  # POP
                self.pop()
            elif op == b"1":  # POP_MARK
                self.pop_mark()
            elif op == b"c":  # GLOBAL
                module = self.line()
                name = self.line()
                self.push_global(f"{module}.{name}", offset)
            elif op == b"\x93":  # STACK_GLOBAL
                name = self.pop()
                module = self.pop()
                if not isinstance(module, str) or not isinstance(name, str):
                    raise self.fail("STACK_GLOBAL needs two strings", offset)
                self.push_global(f"{module}.{name}", offset)
            elif op == b"R":  # REDUCE
                args = self.pop()
                func = self.pop()
                self.stack.append(self.reduce(func, args, offset))
            elif op == b"b":  # BUILD
                state = self.pop()
                self.build(self.peek(offset), state, offset)
            else:
                raise self.fail(f"opcode {op!r} is not allowed in a data file", offset)

    # -- opcode helpers -----------------------------------------------------------------------
    def peek(self, offset: int) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("nothing to memoize", offset)
        return self.stack[-1]

    def text(self, n: int, offset: int) -> str:
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail("invalid UTF-8 in a string", offset) from exc

    def list_top(self, offset: int) -> list[Any]:
        if not self.stack or not isinstance(self.stack[-1], list):
            raise self.fail("APPEND target is not a list", offset)
        return self.stack[-1]

    def dict_top(self, offset: int) -> dict[Any, Any]:
        if not self.stack or not isinstance(self.stack[-1], dict):
            raise self.fail("SETITEM target is not a dict", offset)
        return self.stack[-1]

    def pairs_to_dict(self, target: dict[Any, Any], items: list[Any]) -> dict[Any, Any]:
        if len(items) % 2:
            raise self.fail("odd number of items for a dict")
        for key, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(key, str | bytes | int):
                raise self.fail(f"dict key of type {type(key).__name__}")
            target[key] = value
        return target

    def reduce(self, func: Any, args: Any, offset: int) -> Any:
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise self.fail("REDUCE on something other than an allowed global", offset)
        try:
            if func.name in _RECONSTRUCT:
                ok = (
                    len(args) == 3
                    and args[0] == _Global(_NDARRAY)
                    and args[1] == (0,)
                    and _as_bytes(args[2]) == b"b"
                )
                if not ok:
                    raise ValueError(f"unexpected arguments to _reconstruct: {args!r}")
                return _ArrayStub()
            if func.name in _FROMBUFFER:
                if len(args) != 4 or args[3] not in ("C", "F"):
                    raise ValueError("unexpected arguments to _frombuffer")
                return _make_array(args[0], args[1], args[2], args[3])
            if func.name == _DTYPE:
                if len(args) != 3 or not isinstance(args[0], str | bytes):
                    raise ValueError(f"unexpected arguments to numpy.dtype: {args!r}")
                return _DtypeStub(_as_text(args[0]))
            if func.name == _CODECS_ENCODE:
                if len(args) != 2 or not isinstance(args[0], str):
                    raise ValueError("unexpected arguments to _codecs.encode")
                if args[1] not in ("latin1", "latin-1"):
                    raise ValueError(f"unexpected encoding {args[1]!r}")
                return args[0].encode("latin-1")
        except ValueError as exc:
            raise self.fail(str(exc), offset) from exc
        raise self.fail(f"{func.name} cannot be called", offset)

    def build(self, target: Any, state: Any, offset: int) -> None:
        try:
            if isinstance(target, _DtypeStub):
                order = _as_text(state[1]) if isinstance(state, tuple) and len(state) > 1 else ""
                if order not in ("<", ">", "|", "="):
                    raise ValueError(f"unexpected dtype state {state!r}")
                if len(state) >= 5 and (state[3] is not None or state[4] is not None):
                    raise ValueError("structured dtypes are not allowed")
                target.byteorder = order
                target.resolve()
                return
            if isinstance(target, _ArrayStub):
                if target.array is not None:
                    raise ValueError("array built twice")
                if not isinstance(state, tuple) or len(state) != 5:
                    raise ValueError("unexpected ndarray state")
                _, shape, dtype, fortran, raw = state
                if isinstance(raw, list):
                    raise ValueError("object arrays are not allowed")
                target.array = _make_array(raw, dtype, shape, "F" if fortran else "C")
                return
        except ValueError as exc:
            raise self.fail(str(exc), offset) from exc
        raise self.fail(f"BUILD on a {type(target).__name__}", offset)


def _finish(value: Any, path: str | None, depth: int = 0) -> Any:
    """Replace stubs by arrays and check that only plain data remains."""
    if depth > 8:
        raise UnsafePickleError("containers nested too deeply", path)
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise UnsafePickleError("an array was never given its data", path)
        return value.array
    if isinstance(value, np.ndarray | str | bytes | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        out = [_finish(v, path, depth + 1) for v in value]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        return {k: _finish(v, path, depth + 1) for k, v in value.items()}
    raise UnsafePickleError(f"a {type(value).__name__} object is not plain data", path)


def load_restricted_pickle(data: bytes | memoryview, path: str | None = None) -> Any:
    """Decode a pickle holding only plain data and numpy arrays, without executing it.

    Parameters
    ----------
    data : bytes
        The whole pickle.
    path : str, optional
        Named in error messages.

    Returns
    -------
    object
        Dicts, lists, tuples, str, bytes, int, float, bool, None and read-only numpy arrays.

    Raises
    ------
    UnsafePickleError
        On any global outside numpy's array recipes, any opcode outside plain data, or a
        malformed file.
    """
    return _finish(_Machine(data, path).run(), path)


@dataclass(frozen=True)
class CifarBatch:
    """One CIFAR python batch: images as NCHW ``uint8`` and integer labels.

    Attributes
    ----------
    images : numpy.ndarray
        ``uint8``, shape ``(n, 3, 32, 32)``, read-only, no copy of the file's bytes.
    labels : numpy.ndarray
        ``int64``, shape ``(n,)``: ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
    coarse_labels : numpy.ndarray or None
        CIFAR-100's 20 super-classes, when present.
    filenames : list of str
        As stored (empty when the file has none).
    """

    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None
    filenames: list[str]


def _key(d: dict[Any, Any], name: str) -> Any:
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    return None


def _int_labels(value: Any, n: int, name: str, path: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (n,) or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(
            f"{path}: {name!r} must hold {n} integers, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr.astype(np.int64)


def read_cifar_batch(
    path: str | os.PathLike[str] | None = None, *, data: bytes | None = None
) -> CifarBatch:
    """Read one original CIFAR-10 / CIFAR-100 python batch safely.

    Parameters
    ----------
    path : str or path-like
        ``data_batch_1`` ... ``test_batch`` (CIFAR-10), ``train`` / ``test`` (CIFAR-100).
    data : bytes, optional
        The file's bytes, when they come from elsewhere (a tar member); ``path`` then only
        names it in messages.

    Returns
    -------
    CifarBatch

    Raises
    ------
    UnsafePickleError
        If the file asks for anything but data.
    ValueError
        If the dictionary is not a CIFAR batch.
    """
    name = os.fspath(path) if path is not None else "<bytes>"
    if data is None:
        data = Path(name).read_bytes()
    obj = load_restricted_pickle(data, name)
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: expected a CIFAR batch dictionary, got {type(obj).__name__}")
    images = _key(obj, "data")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        got = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else repr(type(images))
        )
        raise ValueError(f"{name}: 'data' must be a uint8 array (n, 3072), got {got}")
    if images.shape[1] != 3072:
        raise ValueError(f"{name}: 'data' must have 3072 columns (3x32x32), got {images.shape}")
    n = images.shape[0]
    labels = _key(obj, "labels")
    if labels is None:
        labels = _key(obj, "fine_labels")
    if labels is None:
        raise ValueError(f"{name}: no 'labels' or 'fine_labels' in {sorted(map(str, obj))}")
    coarse = _key(obj, "coarse_labels")
    files = _key(obj, "filenames") or []
    return CifarBatch(
        images=np.ascontiguousarray(images).reshape(n, 3, 32, 32),
        labels=_int_labels(labels, n, "labels", name),
        coarse_labels=None if coarse is None else _int_labels(coarse, n, "coarse_labels", name),
        filenames=[f.decode("latin-1") if isinstance(f, bytes) else str(f) for f in files],
    )


def read_meta(
    path: str | os.PathLike[str] | None = None, *, data: bytes | None = None
) -> list[str]:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100)."""
    name = os.fspath(path) if path is not None else "<bytes>"
    if data is None:
        data = Path(name).read_bytes()
    obj = load_restricted_pickle(data, name)
    names: Iterable[Any] | None = None
    if isinstance(obj, dict):
        names = _key(obj, "label_names") or _key(obj, "fine_label_names")
    if not isinstance(names, list):
        raise ValueError(f"{name}: expected a dict with 'label_names' or 'fine_label_names'")
    return [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in names]
