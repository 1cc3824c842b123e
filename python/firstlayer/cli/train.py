"""``firstlayer train``: the command-line face of :func:`firstlayer.train.train`.

The options are generated from the fields of :class:`~firstlayer.train.config.TrainConfig`, so the
command line and the keyword arguments are the same set, with the same defaults: ``--first-width``
(or ``--first_width``) is ``first_width=``, boolean options come as ``--augment/--no-augment``, and
lists are comma separated (``--milestones 30,60``, ``--snapshots 0,10,100``). The run folder
``out_dir=`` is ``--out``, as everywhere in the CLI.

``firstlayer.train`` imports torch, so this module imports it only when the ``train`` command is
parsed or run. Under ``torchrun --nproc-per-node N -m firstlayer train ...`` each process runs
this command (see ``docs/scaling-out.md``).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from firstlayer.cli._options import add_command, common
from firstlayer.cli._output import emit

if TYPE_CHECKING:
    from firstlayer.train.loop import TrainResult

__all__ = ["HELP", "NAME", "add_parser", "add_train_arguments", "run", "train_from_args"]

NAME = "train"
HELP = "train a network with true or random labels and record its first layer"

#: Fields whose flag is not their name.
_FLAGS = {"out_dir": "out"}
_INTS = {"subset", "test_subset", "label_seed", "seed", "first_width", "kernel_size", "epochs",
         "batch_size", "checkpoint_every", "eval_batch_size", "threads"}  # fmt: skip
_FLOATS = {"corrupt", "width", "whitening_eps", "lr", "momentum", "weight_decay", "gamma"}


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer train``; its options (and torch) only when ``command`` is ``train``."""
    p = add_command(
        subparsers,
        NAME,
        HELP,
        [common(quiet=False)],
        "Example: firstlayer train --dataset sample --labels random --epochs 5 --out runs/rand",
    )
    if command == NAME:
        add_train_arguments(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer train``."""
    result = train_from_args(args)
    out = result.out_dir
    payload: dict[str, Any] = {"out": str(out)}
    for key in ("seconds", "final_metrics", "metrics"):
        if hasattr(result, key):
            payload[key] = getattr(result, key)
    fl = getattr(result, "first_layer_final", None)
    if fl is not None:
        payload["first_layer_shape"] = list(np.shape(fl))
    emit(args, f"run written to {out}", payload)
    return 0


def _train_config() -> Any:
    try:
        from firstlayer.train import config
    except ImportError as exc:
        msg = f"'firstlayer train' is not available: firstlayer.train cannot be imported ({exc})"
        raise RuntimeError(msg) from exc
    return config


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
    config = _train_config()
    from firstlayer.train.data import LABEL_MODES

    choices = {
        "labels": LABEL_MODES,
        "freeze_first": config.FREEZE_MODES,
        "schedule": config.SCHEDULES,
        "loss": config.LOSSES,
        "amp": config.AMP_MODES,
        "device": config.DEVICES,
    }
    for f in fields(config.TrainConfig):
        name = f.name
        flag = _FLAGS.get(name, name)
        flags = [f"--{flag.replace('_', '-')}"]
        if "_" in flag:
            flags.append(f"--{flag}")
        helptext = f.metadata.get("help", "")
        for field_name, flag_name in _FLAGS.items():  # "the run in out_dir" -> "in --out"
            helptext = helptext.replace(field_name, f"--{flag_name}")
        kw: dict[str, Any] = {"dest": name, "help": helptext}
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            if f.default is not None and f.default != ():
                kw["help"] = f"{helptext} (default: %(default)s)"
        if name == "out_dir":
            kw["metavar"] = "DIR"
            kw["help"] = f"output folder: {kw['help']}"
        elif isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif name in choices:
            kw["choices"] = choices[name]
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


def train_from_args(args: argparse.Namespace) -> TrainResult:
    """Run :func:`firstlayer.train.train` with the options parsed by :func:`add_train_arguments`.

    Parameters
    ----------
    args : argparse.Namespace
        Extra attributes (e.g. the CLI's sub-command) are ignored.

    Returns
    -------
    TrainResult
    """
    config = _train_config()
    from firstlayer.train.loop import train

    names = config.TrainConfig.names()
    return train(**{name: getattr(args, name) for name in names if hasattr(args, name)})
