"""``firstlayer info``: versions, devices, and the datasets firstlayer can find."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from firstlayer.cli._options import add_command, common
from firstlayer.cli._output import emit

__all__ = ["HELP", "NAME", "add_parser", "run"]

NAME = "info"
HELP = "versions, threads, devices, and the datasets firstlayer can find"


def add_parser(subparsers: Any, command: str | None = None) -> argparse.ArgumentParser:
    """Add ``firstlayer info`` to ``subparsers``."""
    p = add_command(subparsers, NAME, HELP, [common()])
    p.add_argument("--data-root", metavar="DIR", help="folder of named datasets")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help=argparse.SUPPRESS
    )
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``firstlayer info``."""
    from firstlayer._paths import data_roots
    from firstlayer.report.build import versions
    from firstlayer.report.inputs import file_sha256
    from firstlayer.sources import DATASET_NAMES, open_source, sample_path

    info: dict[str, Any] = {"versions": versions()}
    sample = sample_path()
    info["sample"] = {
        "path": str(sample),
        "present": sample.is_file(),
        "sha256": file_sha256(sample) if sample.is_file() else None,
    }
    info["data_roots"] = [str(p) for p in data_roots(args.data_root)]
    found: dict[str, int | None] = {}
    for name in DATASET_NAMES:
        try:
            src = open_source(name, root=args.data_root, download=False)
        except (OSError, ValueError):
            found[name] = None
            continue
        found[name] = src.total
        src.close()
    info["datasets"] = found
    devices: dict[str, Any] = {"cpu": True}
    if importlib.util.find_spec("torch") is not None:
        import torch

        devices["cuda"] = torch.cuda.is_available()
        if devices["cuda"]:
            devices["cuda_devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    info["devices"] = devices
    info["train_available"] = importlib.util.find_spec("firstlayer.train") is not None
    lines = ["firstlayer " + info["versions"]["firstlayer"]]
    lines += [f"  {k}: {v}" for k, v in info["versions"].items() if k != "firstlayer"]
    lines.append(f"bundled sample: {sample} ({'present' if sample.is_file() else 'MISSING'})")
    lines.append("data roots: " + ", ".join(info["data_roots"]))
    lines.append("datasets found (images):")
    lines += [
        f"  {k}: {'not found' if v is None else f'{v:,}' if isinstance(v, int) else 'yes'}"
        for k, v in found.items()
    ]
    lines.append("devices: " + ", ".join(f"{k}={v}" for k, v in devices.items()))
    lines.append(f"train: {'available' if info['train_available'] else 'not available'}")
    emit(args, "\n".join(lines), info)
    return 0
