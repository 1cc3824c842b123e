"""`firstlayer compare` over a zoo: a folder of checkpoints and multi-layer .npz files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _data import shared_file
from firstlayer.cli import main
from firstlayer.report.inputs import expand_zoo


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    src = shared_file("pretrained_first_layers.npz")
    folder = tmp_path / "zoo"
    folder.mkdir()
    banks = dict(np.load(src))
    np.savez(folder / "pretrained.npz", **banks)
    np.save(folder / "squeezenet_copy.npy", banks["squeezenet1_1"])
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


def test_a_folder_stands_for_every_checkpoint_in_it(zoo: Path) -> None:
    specs = expand_zoo(str(zoo))
    keys = ["efficientnet_lite0", "resnet18", "resnet50_caffe_keras", "squeezenet1_1"]
    assert specs == [f"{zoo / 'pretrained.npz'}:{k}" for k in keys] + [
        str(zoo / "squeezenet_copy.npy")
    ]
    assert expand_zoo(f"{zoo / 'pretrained.npz'}:resnet18") == [
        f"{zoo / 'pretrained.npz'}:resnet18"
    ]
    empty = zoo / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        expand_zoo(str(empty))


def test_compare_a_zoo_groups_by_geometry(zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["compare", str(zoo), "--dataset", "sample", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    groups = {g["kernel_size"]: g for g in report["groups"]}
    assert sorted(groups) == [3, 7]
    assert groups[3]["models"] == ["efficientnet_lite0", "squeezenet1_1", "squeezenet_copy"]
    assert groups[7]["models"] == ["resnet18", "resnet50_caffe_keras"]
    corr = np.array(groups[3]["correlation"])
    assert corr.shape == (3, 3)
    # The same weights under two names correlate exactly; a different network does not.
    assert corr[1, 2] == pytest.approx(1.0, abs=1e-12)
    assert abs(corr[0, 1]) < 0.99
    by_name = {m["name"]: m for m in report["models"]}
    assert set(by_name) == {*groups[3]["models"], *groups[7]["models"]}
    for m in by_name.values():
        assert m["fit"]["correlation"] is not None
        # Each profile is that of its group's PCA basis: one energy per component.
        assert len(m["profile"]) == 3 * m["shape"][2] * m["shape"][3]
