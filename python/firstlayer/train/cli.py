"""``firstlayer train``: the command-line face of :func:`firstlayer.train.train`.

The options are generated from the fields of :class:`~firstlayer.train.config.TrainConfig`, so the
command line and the keyword arguments are the same set, with the same defaults: ``--first-width``
(or ``--first_width``) is ``first_width=``, boolean options come as ``--augment/--no-augment``, and
lists are comma separated (``--milestones 30,60``, ``--snapshots 0,10,100``).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any

from .config import AMP_MODES, DEVICES, FREEZE_MODES, LOSSES, SCHEDULES, TrainConfig
from .data import LABEL_MODES

__all__ = ["add_train_arguments", "train_from_args"]

_CHOICES = {
    "labels": LABEL_MODES,
    "freeze_first": FREEZE_MODES,
    "schedule": SCHEDULES,
    "loss": LOSSES,
    "amp": AMP_MODES,
    "device": DEVICES,
}
_INTS = {"subset", "test_subset", "label_seed", "seed", "first_width", "kernel_size", "epochs",
         "batch_size", "checkpoint_every", "eval_batch_size", "threads"}  # fmt: skip
_FLOATS = {"corrupt", "width", "whitening_eps", "lr", "momentum", "weight_decay", "gamma"}


def _list_of(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        items = [t for t in text.replace(" ", ",").split(",") if t]
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            msg = f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _snapshots(text: str) -> int | tuple[int, ...]:
    if "," in text:
        return _list_of(int)(text)  # type: ignore[no-any-return]
    try:
        return int(text)
    except ValueError:
        msg = f"expected a count or a comma-separated list of steps, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every option of :func:`firstlayer.train.train` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Typically the ``train`` sub-parser of the ``firstlayer`` CLI.

    Returns
    -------
    argparse.ArgumentParser
        The same parser.
    """
    for f in fields(TrainConfig):
        name = f.name
        flags = [f"--{name.replace('_', '-')}"]
        if "_" in name:
            flags.append(f"--{name}")
        helptext = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": name, "help": helptext}
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            if f.default is not None and f.default != ():
                kw["help"] = f"{helptext} (default: %(default)s)"
        if name == "out":
            kw["metavar"] = "DIR"
        elif isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif name in _CHOICES:
            kw["choices"] = _CHOICES[name]
        elif name in _INTS:
            kw["type"] = _none_or(int)
        elif name in _FLOATS:
            kw["type"] = float
        elif name == "milestones":
            kw["type"] = _list_of(int)
        elif name in ("mean", "std"):
            kw["type"] = _list_of(float)
        elif name == "snapshots":
            kw["type"] = _snapshots
        parser.add_argument(*flags, **kw)
    return parser


def train_from_args(args: argparse.Namespace) -> Any:
    """Run :func:`firstlayer.train.train` with the options parsed by :func:`add_train_arguments`.

    Parameters
    ----------
    args : argparse.Namespace
        Extra attributes (e.g. the CLI's sub-command) are ignored.

    Returns
    -------
    TrainResult
    """
    from .loop import train

    kwargs = {name: getattr(args, name) for name in TrainConfig.names() if hasattr(args, name)}
    return train(**kwargs)
