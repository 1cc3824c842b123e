"""Patch statistics on dask.distributed: exact merge, killed workers, retries, shard checkpoints.

Every test runs on a real ``LocalCluster`` of 2 worker processes (one thread each). The helper
sources below are imported by the workers from this module (worker processes inherit the test
process's ``sys.path``).

Training under ``torchrun`` (DDP with 2 gloo processes, compared with one process) is tested in
``tests/test_train.py::test_ddp_two_gloo_processes_match_one_process``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firstlayer
from firstlayer import sources
from firstlayer._validate import MAX_STATS_KERNEL_SIZE
from firstlayer.distributed import Shard, as_shard, dask_patch_stats, run_shards, split

distributed = pytest.importorskip("distributed")


# ----------------------------------------------------------------------------------------------
# Helpers run inside the workers
# ----------------------------------------------------------------------------------------------


class MarkedSource(sources.ArraySource):
    """An array source that leaves a file per computation and can misbehave on request.

    ``mode="kill"``: the first attempt (no ``kill`` marker yet) SIGKILLs its own worker process.
    ``mode="fail"``: raises while a ``fail`` marker file exists.
    """

    def __init__(self, images: np.ndarray, marks: str, tag: str, mode: str = "") -> None:
        super().__init__(images, layout="NCHW", name=f"marked-{tag}", identity=tag)
        self.marks, self.tag, self.mode = marks, tag, mode

    def steps(self, start: int = 0, batch_size: int = 256) -> Iterator[sources.Step]:
        marks = Path(self.marks)
        (marks / f"run-{self.tag}-{uuid.uuid4().hex}").touch()
        if self.mode == "kill" and not (marks / "kill").exists():
            (marks / "kill").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "fail" and (marks / "fail").exists():
            msg = f"shard {self.tag} failed on purpose"
            raise OSError(msg)
        yield from super().steps(start, batch_size)


def _runs(marks: Path, tag: str) -> int:
    return len(list(marks.glob(f"run-{tag}-*")))


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from firstlayer.distributed import local_cluster

    cluster = local_cluster(2, threads_per_worker=1)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (240, 3, 16, 16), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------


def test_every_shard_kind_gives_the_single_process_statistics(
    client: Any, images: np.ndarray, tmp_path: Path
) -> None:
    from PIL import Image

    labels = np.random.default_rng(1).integers(0, 5, len(images))
    np.save(tmp_path / "x.npy", images)
    folder = tmp_path / "imgs"
    files = []
    for i in range(24):
        f = folder / "ab"[i // 12] / f"{i:03d}.png"  # two class folders
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].transpose(1, 2, 0)).save(f)
        files.append(str(f))

    npy = str(tmp_path / "x.npy")
    ref_npy = firstlayer.patch_stats(images, 3)
    got = dask_patch_stats([(npy, slice(0, 100)), (npy, 100, 170), Shard(npy, 170)], client=client)
    assert got == ref_npy and got.exact

    ref_lab = firstlayer.patch_stats(images, 3, labels=labels)
    chunks = [Shard(images, a, a + 60, labels=labels) for a in range(0, 240, 60)]
    assert dask_patch_stats(chunks, client=client, quiet=True) == ref_lab

    unlabelled = firstlayer.patch_stats(str(folder), 3, labels=False)
    got = dask_patch_stats([files[:7], files[7:20], files[20:]], client=client, batch_size=5)
    assert got == unlabelled
    labelled = firstlayer.patch_stats(str(folder), 3)
    assert list(labelled.class_counts) == [12 * 196, 12 * 196]
    got = dask_patch_stats(split(str(folder), 5), client=client, batch_size=4)
    assert got == labelled
    got = dask_patch_stats([(str(folder), 0, 13), (str(folder), 13, 24)], client=client)
    assert got == labelled

    ref_sample = firstlayer.patch_stats("sample", 5, stride=2)
    got = dask_patch_stats(split("sample", 6), 5, stride=2, client=client, batch_size=64)
    assert got == ref_sample and len(got.class_counts) == 10
    # shard order in the list is the merge order; any cut of the same images gives the same bits
    got = dask_patch_stats([("sample", 500, 1017), ("sample", 0, 500)], 5, stride=2, client=client)
    assert got == ref_sample


def test_labels_for_the_whole_job_mean_what_patch_stats_labels_mean(
    client: Any, images: np.ndarray, tmp_path: Path
) -> None:
    from PIL import Image

    # labels=y is one class per image of the job (the shards in list order), as
    # firstlayer.patch_stats(x, labels=y) takes one per image of x; each shard gets its slice
    y = np.random.default_rng(2).integers(0, 7, len(images))
    ref = firstlayer.patch_stats(images, 3, labels=y)
    assert dask_patch_stats(split(images, 4), client=client, labels=y) == ref
    npy = str(tmp_path / "x.npy")
    np.save(npy, images)
    shards = [(npy, slice(0, 100)), images[100:170], Shard(npy, 170)]
    assert dask_patch_stats(shards, client=client, labels=y, batch_size=32) == ref
    np.save(tmp_path / "y.npy", y)
    assert dask_patch_stats(split(npy, 3), client=client, labels=tmp_path / "y.npy") == ref
    files = []
    for i in range(24):
        files.append(str(tmp_path / f"{i:03d}.png"))
        Image.fromarray(images[i].transpose(1, 2, 0)).save(files[-1])
    got = dask_patch_stats([files[:7], (files, 7, 24)], client=client, labels=y[:24])
    assert got == firstlayer.patch_stats(images[:24], 3, labels=y[:24])

    with pytest.raises(ValueError, match=r"shards\[0\] \(sample\) carries its own labels"):
        dask_patch_stats(["sample"], labels=[0, 1])
    with pytest.raises(ValueError, match=r"labels: expected shape \(240,\)"):
        dask_patch_stats(split(images, 2), labels=y[:10])
    with pytest.raises(ValueError, match=r"shards\[0\] .* has labels of its own"):
        dask_patch_stats([Shard(images, labels=y)], labels=y)
    with pytest.raises(TypeError, match="labels: expected None, True, False, an array"):
        dask_patch_stats([images], labels=object())


def test_float_images_merge_in_a_fixed_order(client: Any, images: np.ndarray) -> None:
    x = images.astype(np.float32) / 255
    shards = split(x, 5)
    a = dask_patch_stats(shards, 3, client=client)
    b = dask_patch_stats(shards, 3, client=client)
    assert a == b and not a.exact
    np.testing.assert_allclose(a.second_moment, firstlayer.patch_stats(x, 3).second_moment,
                               rtol=1e-12)  # fmt: skip


def test_range_source_rereads_a_batch_that_crosses_the_end(images: np.ndarray) -> None:
    src = sources.ArraySource(images, layout="NCHW")
    from firstlayer.distributed import RangeSource

    rng = RangeSource(src, 13, 101)
    steps = list(rng.steps(0, 32))
    assert [s.consumed for s in steps] == [32, 32, 24]
    got = np.concatenate([s.parts[0].images for s in steps])
    np.testing.assert_array_equal(got, images[13:101])


# ----------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------


def test_a_worker_killed_mid_job_does_not_change_the_result(
    client: Any, images: np.ndarray, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    shards = [
        Shard(MarkedSource(images[a : a + 40], str(marks), f"s{a}", "kill" if a == 80 else ""))
        for a in range(0, 240, 40)
    ]
    pids_before = set(client.run(os.getpid).values())
    got = dask_patch_stats(shards, 3, client=client, quiet=True)
    assert got == firstlayer.patch_stats(images, 3)
    assert (marks / "kill").exists()
    assert _runs(marks, "s80") == 2  # killed once, then rerun on a fresh or the other worker
    assert set(client.run(os.getpid).values()) != pids_before  # the nanny replaced the worker


def test_a_failing_task_is_retried(client: Any, images: np.ndarray, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "fail").touch()
    shards = [Shard(MarkedSource(images, str(marks), "only", "fail"))]
    with pytest.raises(RuntimeError, match=r"shards\[0\] .* failed after 1 retries") as info:
        dask_patch_stats(shards, 3, client=client, retries=1, quiet=True)
    assert "failed on purpose" in str(info.value.__cause__)
    assert _runs(marks, "only") == 2


def test_restart_skips_finished_shards(client: Any, images: np.ndarray, tmp_path: Path) -> None:
    marks, ckpt = tmp_path / "marks", tmp_path / "ckpt"
    marks.mkdir()
    (marks / "fail").touch()
    shards = [
        Shard(MarkedSource(images[a : a + 40], str(marks), f"s{a}", "fail" if a == 120 else ""))
        for a in range(0, 240, 40)
    ]
    with pytest.raises(RuntimeError, match=r"shards\[3\].*5 finished shards are in the checkpoint"):
        dask_patch_stats(shards, 3, client=client, checkpoint_dir=ckpt, retries=0, quiet=True)
    assert len(list(ckpt.glob("shard-*.npz"))) == 5
    (marks / "fail").unlink()
    run = run_shards(shards, 3, client=client, checkpoint_dir=ckpt, quiet=True)
    assert run.computed == [3] and run.loaded == [0, 1, 2, 4, 5]
    assert run.stats == firstlayer.patch_stats(images, 3)
    assert [_runs(marks, f"s{a}") for a in range(0, 240, 40)] == [1, 1, 1, 2, 1, 1]
    # all done: a third run computes nothing; other options are refused
    again = run_shards(shards, 3, client=client, checkpoint_dir=ckpt, quiet=True)
    assert again.computed == [] and again.stats == run.stats
    with pytest.raises(ValueError, match="checkpoint_dir: .* different job"):
        dask_patch_stats(shards, 5, client=client, checkpoint_dir=ckpt)


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def test_errors_name_the_argument(images: np.ndarray) -> None:
    with pytest.raises(TypeError, match="shards: expected a list"):
        dask_patch_stats("sample")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shards: expected at least one"):
        dask_patch_stats([])
    limit = rf"kernel_size: expected an integer in \[1, {MAX_STATS_KERNEL_SIZE}\], got 0"
    with pytest.raises(ValueError, match=limit):
        dask_patch_stats(["sample"], 0)
    with pytest.raises(ValueError, match=r"shards\[1\]: expected start < stop"):
        as_shard(("sample", 5, 5), 1)
    with pytest.raises(ValueError, match="expected a slice with step 1"):
        as_shard(("sample", slice(0, 10, 2)))
    with pytest.raises(ValueError, match="method: expected one of auto, direct, shifted"):
        dask_patch_stats(["sample"], method="fast")
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        dask_patch_stats(["sample"], bogus=1)
    with pytest.raises(ValueError, match="n_shards: expected an integer >= 1"):
        split(images, 0)
    assert len(split(images, 1000)) == 240  # at most one shard per image
    with pytest.raises(TypeError, match="client: expected a distributed.Client"):
        dask_patch_stats([images], client=42)  # type: ignore[arg-type]


def test_import_firstlayer_does_not_import_dask() -> None:
    code = (
        "import sys, firstlayer, firstlayer.distributed; "
        "bad = [m for m in ('dask', 'distributed', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def test_cli_stats_on_a_local_cluster_matches_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from firstlayer.cli import main

    assert main(["stats", "sample", "-q", "--json", "--out", str(tmp_path / "one.npz")]) == 0
    one = json.loads(capsys.readouterr().out)
    argv = ["stats", "sample", "-q", "--json", "--workers", "2", "--out", str(tmp_path / "two.npz"),
            "--checkpoint", str(tmp_path / "ckpt")]  # fmt: skip
    assert main(argv) == 0
    two = json.loads(capsys.readouterr().out)
    assert one["sha256"] == two["sha256"]
    assert firstlayer.PatchStats.load(tmp_path / "one.npz") == firstlayer.PatchStats.load(
        tmp_path / "two.npz"
    )
    assert len(list((tmp_path / "ckpt").glob("shard-*.npz"))) == 8  # 4 per worker thread
    assert main(["stats", "sample", "--workers", "2", "--scheduler", "tcp://x:1"]) == 1
    assert "workers: a local cluster size" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Training under torchrun, from the command line (DDP against one process: tests/test_train.py)
# ----------------------------------------------------------------------------------------------


def test_torchrun_two_processes_cli_train(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    opts = ("--arch linear_cnn --dataset sample --subset 64 --test-subset 32 --width 0.25 "
            "--batch-size 16 --epochs 1 --threads 1").split()  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "firstlayer", "train", *opts, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["derived"]["world_size"] == 2
    init = np.load(tmp_path / "two" / "first_layer_init.npy")
    final = np.load(tmp_path / "two" / "first_layer_final.npy")
    assert np.all(np.isfinite(final)) and not np.allclose(final, init)
