"""The exceptions firstlayer defines, in one place.

Each subclasses the built-in exception a caller would already catch (``ValueError`` for bad
content, ``FileNotFoundError`` for a missing dataset), so ``except ValueError`` keeps working.
Everything else firstlayer raises is a plain ``TypeError``/``ValueError`` whose message names
the argument, what was expected and what came.
"""

from __future__ import annotations

__all__ = ["DatasetNotFoundError", "ImageDecodeError", "UnsafePickleError", "UsageError"]


class ImageDecodeError(ValueError):
    """An image file that cannot be read, with ``on_error="raise"``.

    Attributes
    ----------
    path : str
        The file.
    reason : str
        What the decoder said.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cannot decode image {path!r}: {reason} "
            "(pass on_error='skip' to count and list such files instead)"
        )
        self.path = path
        self.reason = reason


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name whose files are nowhere, and could not be downloaded."""


class UnsafePickleError(ValueError):
    """A pickle that asks for anything beyond plain data and numpy arrays.

    Raised instead of executing the file. ``path`` names the file (when known), ``offset`` the
    byte offset of the offending opcode.
    """

    def __init__(self, message: str, path: str | None = None, offset: int | None = None) -> None:
        where = f"{path}: " if path else ""
        at = f" (at byte {offset})" if offset is not None else ""
        super().__init__(f"{where}{message}{at}; refusing to unpickle it")
        self.path = path
        self.offset = offset


class UsageError(Exception):
    """A command-line usage error found after parsing (the CLI exits with code 2)."""
