"""The options of a training run: one table drives ``train(**kwargs)``, the CLI and validation.

Every option is a field of :class:`TrainConfig` with its help text in the field's metadata; the
``firstlayer train`` command line is generated from the same fields, so the two cannot drift.
Fields marked ``result=False`` (output, device and logging choices) may change when a run is
resumed; all others must match the stored ``config.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from firstlayer._validate import check_choice, check_float, check_int, check_int_list, type_error
from firstlayer.train.data import LABEL_MODES

__all__ = ["AMP_MODES", "FREEZE_MODES", "LOSSES", "SCHEDULES", "TrainConfig"]

FREEZE_MODES = ("none", "random", "whitening")
SCHEDULES = ("constant", "cosine", "step")
LOSSES = ("cross_entropy", "mse")
AMP_MODES = ("none", "bf16")
DEVICES = ("auto", "cpu", "cuda")


def _opt(default: Any, help: str, *, result: bool = True, cli: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "result": result, "cli": cli})


@dataclass
class TrainConfig:
    """All options of :func:`firstlayer.train.train` (see its docstring for each one)."""

    out_dir: str = field(
        default=MISSING,  # type: ignore[assignment]
        metadata={"help": "run directory (created)", "result": False, "cli": None},
    )
    arch: str = _opt("small_cnn", "architecture, or torchvision:<name>")
    dataset: Any = _opt("sample", "dataset name, folder or .npy/.npz file")
    subset: int | None = _opt(None, "train on the first N images only")
    test_dataset: Any = _opt("auto", "held-out set ('auto': the dataset's test split; 'none')")
    test_subset: int | None = _opt(None, "evaluate on the first N held-out images only")
    root: str | None = _opt(None, "folder of named datasets", result=False)
    download: bool = _opt(True, "download named datasets when missing", result=False)
    labels: str = _opt("true", "label mode: true, random (permutation) or uniform")
    corrupt: float = _opt(1.0, "fraction of examples whose label is randomised")
    label_seed: int | None = _opt(None, "seed of the random labels (default: seed)")
    seed: int = _opt(0, "seed of the initialisation and the batch order")
    width: float = _opt(1.0, "channel width multiplier")
    first_width: int | None = _opt(None, "number of first-layer filters")
    kernel_size: int | None = _opt(None, "first-layer kernel size (default 3)")
    freeze_first: str = _opt("none", "freeze the first layer: none, random or whitening")
    whitening_eps: float = _opt(1e-2, "eps of the ZCA filters of freeze_first='whitening'")
    epochs: int = _opt(1, "number of epochs")
    batch_size: int = _opt(256, "global batch size")
    lr: float = _opt(0.01, "learning rate")
    momentum: float = _opt(0.0, "SGD momentum")
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(0.0, "weight decay")
    schedule: str = _opt("constant", "learning-rate schedule: constant, cosine or step")
    milestones: tuple[int, ...] = _opt((), "epochs at which schedule='step' multiplies by gamma")
    gamma: float = _opt(0.1, "factor of schedule='step'")
    augment: bool = _opt(False, "random crop (pad 4) and horizontal flip")
    loss: str = _opt("cross_entropy", "loss: cross_entropy or mse (on one-hot targets)")
    mean: tuple[float, ...] | None = _opt(None, "per-channel input mean (default: the data's)")
    std: tuple[float, ...] | None = _opt(None, "per-channel input std (default: the data's)")
    drop_last: bool = _opt(True, "drop the last incomplete batch of each epoch")
    snapshots: Any = _opt(
        16, "first-layer snapshots: a count (log-spaced steps) or a list of steps"
    )
    checkpoint_every: int = _opt(0, "steps between checkpoints (0: every epoch)", result=False)
    eval_batch_size: int = _opt(1024, "batch size of evaluation", result=False)
    device: str = _opt("auto", "auto, cpu or cuda", result=False)
    amp: str = _opt("none", "mixed precision: none or bf16 (autocast)")
    channels_last: bool = _opt(True, "channels-last memory format (faster on CPU and GPU)")
    data_on_device: Any = _opt(
        "auto", "keep the dataset on the device: auto, true, false", result=False
    )
    threads: int | None = _opt(None, "CPU threads (torch.set_num_threads)", result=False)
    deterministic: bool = _opt(True, "deterministic algorithms (bit-exact resume on the CPU)")
    resume: bool = _opt(False, "continue the run in out_dir", result=False)
    overwrite: bool = _opt(False, "delete an existing run in out_dir first", result=False)
    quiet: bool = _opt(False, "print nothing", result=False)
    log_json: bool = _opt(False, "print each epoch's metrics as a JSON line", result=False)

    # ------------------------------------------------------------------------------------------

    @classmethod
    def names(cls) -> list[str]:
        """Names of all options."""
        return [f.name for f in fields(cls)]

    @classmethod
    def result_names(cls) -> list[str]:
        """Options that determine the result (must match on resume)."""
        return [f.name for f in fields(cls) if f.metadata.get("result", True)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
            elif isinstance(v, os.PathLike):
                d[k] = os.fspath(v)
        return d

    def validate(self) -> None:
        """Check every option's type and range; raise before any data is read.

        Raises
        ------
        TypeError, ValueError
            Naming the option, what was expected and what came.
        """
        from firstlayer.train.models import known_arch

        if not isinstance(self.out_dir, str | os.PathLike) or not os.fspath(self.out_dir):
            raise type_error("out_dir", "a directory path", self.out_dir)
        self.out_dir = os.fspath(self.out_dir)
        self.arch = known_arch(self.arch)
        if isinstance(self.dataset, os.PathLike):
            self.dataset = os.fspath(self.dataset)
        if isinstance(self.test_dataset, os.PathLike):
            self.test_dataset = os.fspath(self.test_dataset)
        if self.test_dataset is None:
            self.test_dataset = "none"
        _check_dataset("dataset", self.dataset)
        _check_dataset("test_dataset", self.test_dataset)
        for name in ("subset", "test_subset", "first_width", "kernel_size", "label_seed"):
            v = getattr(self, name)
            if v is not None:
                lo = 0 if name == "label_seed" else 1
                check_int(name, v, lo)
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            msg = f"kernel_size: expected an odd size (padding k // 2), got {self.kernel_size}"
            raise ValueError(msg)
        check_int("seed", self.seed, 0)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        check_choice("labels", self.labels, LABEL_MODES)
        check_choice("freeze_first", self.freeze_first, FREEZE_MODES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("loss", self.loss, LOSSES)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("device", self.device, DEVICES)
        check_float("corrupt", self.corrupt, 0.0, 1.0)
        check_float("width", self.width, 0.0, open_low=True)
        check_float("lr", self.lr, 0.0, open_low=True)
        check_float("momentum", self.momentum, 0.0, 1.0)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("gamma", self.gamma, 0.0, open_low=True)
        check_float("whitening_eps", self.whitening_eps, 0.0)
        for name in ("nesterov", "augment", "drop_last", "channels_last", "deterministic",
                     "resume", "overwrite", "quiet", "log_json", "download"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                raise type_error(name, "True or False", getattr(self, name))
        if self.nesterov and self.momentum == 0:
            msg = "nesterov: expected momentum > 0 with nesterov=True, got momentum=0"
            raise ValueError(msg)
        if self.resume and self.overwrite:
            msg = "resume: expected at most one of resume=True and overwrite=True, got both"
            raise ValueError(msg)
        self.milestones = tuple(check_int_list("milestones", self.milestones, 1))
        if self.milestones and self.schedule != "step":
            msg = f"milestones: only used with schedule='step', got schedule={self.schedule!r}"
            raise ValueError(msg)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                vals = _float_list(name, v)
                if name == "std" and any(x <= 0 for x in vals):
                    msg = f"std: expected positive values, got {vals}"
                    raise ValueError(msg)
                setattr(self, name, tuple(vals))
        if isinstance(self.snapshots, bool):
            raise type_error("snapshots", "a count or a list of steps", self.snapshots)
        if isinstance(self.snapshots, int):
            check_int("snapshots", self.snapshots, 0)
        else:
            self.snapshots = tuple(check_int_list("snapshots", self.snapshots, 0))
        if isinstance(self.data_on_device, str):
            low = self.data_on_device.lower()
            table = {"auto": "auto", "true": True, "false": False}
            if low not in table:
                msg = f"data_on_device: expected 'auto', True or False, got {self.data_on_device!r}"
                raise ValueError(msg)
            self.data_on_device = table[low]
        elif not isinstance(self.data_on_device, bool):
            raise type_error("data_on_device", "'auto', True or False", self.data_on_device)


def _float_list(name: str, v: Any) -> list[float]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not v:
        raise type_error(name, "a non-empty list of numbers (one per channel)", v)
    return [check_float(f"{name} entries", x) for x in v]


def _check_dataset(name: str, v: Any) -> None:
    if isinstance(v, str) and not v:
        msg = f"{name}: expected a dataset name or path, got an empty string"
        raise ValueError(msg)
    if isinstance(v, str):
        from firstlayer.sources import DATASET_NAMES

        special = ("auto", "none") if name == "test_dataset" else ()
        if v.lower() in special or v.lower() in DATASET_NAMES or os.path.exists(v):
            return
        import difflib

        close = difflib.get_close_matches(v.lower(), list(DATASET_NAMES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        msg = (
            f"{name}: expected a dataset name ({', '.join(DATASET_NAMES)}) or an existing path, "
            f"got {v!r}{hint}"
        )
        raise ValueError(msg)
