"""The options several commands share, and how a sub-command's parser is made.

Options mean the same everywhere: ``--dataset``/``--data`` and ``--data-root`` (the input),
``--kernel-size``/``--stride``/``--padding``/``--labels`` (the patches), ``--out`` (the output
file or folder), ``--quiet``, ``--json`` and ``--debug``.
"""

from __future__ import annotations

import argparse
from typing import Any

from firstlayer.exceptions import UsageError

__all__ = [
    "EPILOG",
    "MODEL_HELP",
    "add_command",
    "add_out",
    "check_data_args",
    "common",
    "data_options",
    "dataset_of",
    "patch_options",
    "stream_options",
]

EPILOG = "exit codes: 0 ok, 1 failure (one-line message; --debug for the traceback), 2 usage error"

#: What a MODEL / INPUT argument may be.
MODEL_HELP = (
    "run directory, checkpoint/state dict file, FILE:KEY, ARCH=WEIGHTS or a torchvision "
    "name (pretrained weights from the local torch hub cache)"
)


def add_command(
    subparsers: Any,
    name: str,
    help: str,
    parents: list[argparse.ArgumentParser],
    description: str = "",
) -> argparse.ArgumentParser:
    """Add the sub-command ``name``; its description starts with ``help`` as a sentence."""
    return subparsers.add_parser(  # type: ignore[no-any-return]
        name,
        parents=parents,
        help=help,
        description=(help[0].upper() + help[1:] + ". " + description).strip(),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def common(json_flag: bool = True, quiet: bool = True) -> argparse.ArgumentParser:
    """The parent parser of ``--quiet``, ``--json`` and ``--debug``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    if quiet:
        g.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    if json_flag:
        g.add_argument(
            "--json", action="store_true", help="print the result as one JSON document on stdout"
        )
    g.add_argument("--debug", action="store_true", help="show the full traceback on failure")
    return p


def add_out(
    group: argparse._ActionsContainer,
    what: str,
    *,
    folder: bool = False,
    default: str | None = None,
    required: bool = False,
) -> None:
    """Add ``-o``/``--out``, the output file or folder (``dest="out"``)."""
    kind = "folder" if folder else "file"
    group.add_argument(
        "-o",
        "--out",
        metavar="DIR" if folder else "FILE",
        default=default,
        required=required,
        help=f"output {kind}: {what}" + (f" (default {default})" if default else ""),
    )


def data_options(p: argparse.ArgumentParser, *, stats: bool, positional: bool) -> None:
    """Add the input options: a dataset (or, with ``stats``, saved statistics) and batches."""
    g = p.add_argument_group("data")
    if positional:
        g.add_argument(
            "source",
            nargs="?",
            metavar="SOURCE",
            help="dataset name or path (same as --dataset; default: sample)",
        )
    default = "the dataset the input runs were trained on, else sample" if stats else "sample"
    g.add_argument(
        "--dataset",
        "--data",
        dest="dataset",
        metavar="D",
        help="dataset name (sample, cifar10, cifar10-test, mnist, ...) or path (image folder, "
        f"CIFAR batches, .npy/.npz); default: {default}",
    )
    g.add_argument(
        "--data-root", metavar="DIR", help="folder of named datasets (default $FIRSTLAYER_DATA)"
    )
    g.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    if stats:
        g.add_argument(
            "--stats",
            metavar="FILE",
            help="saved patch statistics (.npz from 'firstlayer stats --out') instead of a dataset",
        )
        g.add_argument(
            "--normalize",
            default="auto",
            metavar="N",
            help="input normalisation the networks saw: auto (run config; ImageNet for "
            "torchvision models; else pixels in [0, 1]), none, imagenet, cifar10, or "
            "M1,M2,M3/S1,S2,S3 (default auto)",
        )


def patch_options(p: argparse.ArgumentParser) -> None:
    """Add the patch geometry and ``--labels``."""
    g = p.add_argument_group("patches")
    g.add_argument("-k", "--kernel-size", type=int, default=3, help="patch side k (default 3)")
    g.add_argument("--stride", type=int, default=1, help="patch stride (default 1)")
    g.add_argument("--padding", type=int, default=0, help="zero padding (default 0)")
    g.add_argument(
        "--labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-class statistics (default: when the dataset has labels)",
    )


def dataset_of(args: argparse.Namespace, default: str | None = "sample") -> str | None:
    """The dataset named by ``SOURCE`` or ``--dataset`` (a usage error when they differ)."""
    src = getattr(args, "source", None)
    if src is not None and args.dataset is not None and src != args.dataset:
        msg = f"give the dataset once: SOURCE {src!r} and --dataset {args.dataset!r} differ"
        raise UsageError(msg)
    return src or args.dataset or default


def check_data_args(args: argparse.Namespace) -> None:
    """Raise the usage errors of the data options before any work is done."""
    if args.stats and dataset_of(args, default=None):
        msg = "give either --stats or --dataset, not both"
        raise UsageError(msg)


def stream_options(args: argparse.Namespace) -> dict[str, Any]:
    """The source options of :func:`firstlayer.streaming.patch_stats` the data options give."""
    return {
        "root": args.data_root,
        "batch_size": args.batch_size,
        "quiet": bool(args.quiet),
    }


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a usage error names the option otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value
