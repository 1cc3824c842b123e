"""Training runs: files, labels, exact resume after SIGKILL, DDP under torchrun, configs, CLI.

Every run is tiny (a few hundred images of the bundled sample, narrow networks, 1 thread) so the
whole file takes well under a minute or two on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import firstlayer  # noqa: E402
from firstlayer.cli.train import add_train_arguments, train_from_args  # noqa: E402
from firstlayer.train import (  # noqa: E402
    ARCHITECTURES,
    TrainConfig,
    build_model,
    first_conv,
    make_labels,
    train,
)
from firstlayer.train.runs import RunDir  # noqa: E402

# A tiny, fast configuration shared by most tests.
TINY = {
    "arch": "small_cnn",
    "dataset": "sample",
    "subset": 96,
    "test_subset": 64,
    "width": 0.25,
    "batch_size": 16,
    "epochs": 2,
    "threads": 1,
    "quiet": True,
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Subprocesses import the same firstlayer as this process (installed or editable), never
    # the bare source tree, which has no compiled core.
    here = str(Path(firstlayer.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _final_state(out: Path) -> dict[str, object]:
    return torch.load(out / "model_final.pt", weights_only=True)  # type: ignore[no-any-return]


def _strip_times(records: list[dict[str, object]]) -> list[dict[str, object]]:
    drop = {"epoch_seconds", "eval_seconds", "images_per_second"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


# ----------------------------------------------------------------------------------------------
# Run directory
# ----------------------------------------------------------------------------------------------


def test_run_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = train(out_dir=out, labels="random", snapshots=(0, 3, 7, 12), checkpoint_every=4, **TINY)
    for name in ("config.json", "first_layer_init.npy", "first_layer_final.npy", "metrics.jsonl",
                 "checkpoint.pt", "model_final.pt", "result.json", "labels_train.npy",
                 "labels_true.npy"):  # fmt: skip
        assert (out / name).is_file(), name
    init = np.load(out / "first_layer_init.npy", allow_pickle=False)
    final = np.load(out / "first_layer_final.npy", allow_pickle=False)
    assert init.dtype == final.dtype == np.float32
    assert init.shape == final.shape == (8, 3, 3, 3)  # 32 * 0.25 filters of 3 x 3 x 3
    assert not np.array_equal(init, final)
    np.testing.assert_array_equal(res.first_layer_final, final)

    steps, snaps = RunDir(out).snapshots()
    assert steps.tolist() == [0, 3, 7, 12]  # 2 epochs x 6 steps
    np.testing.assert_array_equal(snaps[0], init)
    np.testing.assert_array_equal(snaps[-1], final)

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[-1])
    assert rec["epoch"] == 2 and rec["step"] == 12
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert np.isfinite(rec[key]), key
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["options"]["labels"] == "random"
    assert cfg["derived"]["n_train"] == 96 and cfg["derived"]["n_test"] == 64
    assert cfg["derived"]["first_layer"]["module"] == "conv1"
    assert len(cfg["derived"]["mean"]) == 3
    # The final model loads with plain torch, and firstlayer finds its first layer.
    state = _final_state(out)
    np.testing.assert_array_equal(state["conv1.weight"].numpy(), final)  # type: ignore[index]
    from firstlayer.filters import first_layer

    np.testing.assert_array_equal(first_layer(out / "model_final.pt").weight, final)


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    kw = {**TINY, "epochs": 1, "subset": 32, "test_dataset": "none"}
    train(out_dir=out, **kw)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(out_dir=out, **kw)
    # Resuming a complete run returns it without training again.
    res = train(out_dir=out, resume=True, **kw)
    assert len(res.metrics) == 1
    with pytest.raises(ValueError, match="lr: stored 0.01, now 0.1"):
        train(out_dir=out, resume=True, lr=0.1, **{**TINY, "epochs": 1, "subset": 32})
    train(out_dir=out, overwrite=True, **kw)


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------


def test_random_labels_are_reproducible_from_the_seed(tmp_path: Path) -> None:
    y = np.repeat(np.arange(10), 30)
    a = make_labels(y, "random", fraction=1.0, seed=3, n_classes=10)
    b = make_labels(y, "random", fraction=1.0, seed=3, n_classes=10)
    c = make_labels(y, "random", fraction=1.0, seed=4, n_classes=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.bincount(a), np.bincount(y))  # a permutation: balance kept
    half = make_labels(y, "random", fraction=0.5, seed=3, n_classes=10)
    assert 0.3 < np.mean(half != y) <= 0.5
    np.testing.assert_array_equal(np.bincount(half), np.bincount(y))
    uni = make_labels(y, "uniform", fraction=0.2, seed=1, n_classes=10)
    assert 0 < np.sum(uni != y) <= 60
    np.testing.assert_array_equal(make_labels(y, "true", fraction=1.0, seed=1, n_classes=10), y)

    # The run stores the labels it used, and they follow from label_seed alone.
    kw = {**TINY, "epochs": 1, "subset": 64, "test_dataset": "none", "label_seed": 11}
    train(out_dir=tmp_path / "a", labels="random", seed=1, **kw)
    train(out_dir=tmp_path / "b", labels="random", seed=2, **kw)
    la = np.load(tmp_path / "a" / "labels_train.npy")
    lb = np.load(tmp_path / "b" / "labels_train.npy")
    true = np.load(tmp_path / "a" / "labels_true.npy")
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(
        la, make_labels(true, "random", fraction=1, seed=11, n_classes=10)
    )
    assert not np.array_equal(la, true)


# ----------------------------------------------------------------------------------------------
# Resume after a real SIGKILL
# ----------------------------------------------------------------------------------------------

_KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    import firstlayer.train.runs as runs
    from firstlayer.train import train

    kwargs = json.loads(sys.argv[1])
    kill_at, mode = int(sys.argv[2]), sys.argv[3]
    calls = {"n": 0}
    original = runs.RunDir.write_torch
    real_replace = os.replace

    def write_torch(self, name, obj):
        if name != "checkpoint.pt":
            return original(self, name, obj)
        calls["n"] += 1
        if calls["n"] == kill_at and mode == "inside":
            # die between writing the temporary file and renaming it
            def replace(src, dst):
                os.kill(os.getpid(), signal.SIGKILL)
            os.replace = replace
        out = original(self, name, obj)
        if calls["n"] == kill_at and mode == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    runs.RunDir.write_torch = write_torch
    train(**kwargs)
    """
)


_RESUME_KW = {**TINY, "epochs": 2, "labels": "random", "augment": True, "momentum": 0.9,
              "checkpoint_every": 4}  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    train(out_dir=out, **_RESUME_KW)
    return out


@pytest.mark.parametrize("mode", ["after", "inside"])
def test_resume_after_sigkill_gives_identical_weights(
    tmp_path: Path, mode: str, uninterrupted: Path
) -> None:
    kw = _RESUME_KW
    # 12 steps; checkpoints at steps 4, 6 (epoch end), 8, 12: die at the third one (step 8).
    ref = uninterrupted
    killed = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps({**kw, "out_dir": str(killed)}), "3", mode],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    assert not (killed / "result.json").exists()
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == (8 if mode == "after" else 6)  # "inside": the previous one survives
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1
    # Resume in a fresh process, as a user would.
    code = "import json,sys; from firstlayer.train import train; train(**json.loads(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps({**kw, "out_dir": str(killed), "resume": True})],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a, b = _final_state(ref), _final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        np.load(ref / "first_layer_final.npy"), np.load(killed / "first_layer_final.npy")
    )
    assert _strip_times(RunDir(ref).read_metrics()) == _strip_times(RunDir(killed).read_metrics())
    assert sorted(p.name for p in (ref / "snapshots").iterdir()) == sorted(
        p.name for p in (killed / "snapshots").iterdir()
    )


# ----------------------------------------------------------------------------------------------
# DDP under torchrun, 2 gloo processes
# ----------------------------------------------------------------------------------------------


def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    kw = {**TINY, "arch": "linear_cnn", "width": 0.25, "subset": 128, "batch_size": 32,
          "epochs": 1, "lr": 0.05, "augment": True}  # fmt: skip
    single = train(out_dir=tmp_path / "single", **kw)
    code = "import json,sys; from firstlayer.train import train; train(**json.loads(sys.argv[1]))"
    script = tmp_path / "ddp.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), json.dumps({**kw, "out_dir": str(tmp_path / "ddp")})],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_final = np.load(tmp_path / "ddp" / "first_layer_final.npy")
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["derived"]["world_size"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "ddp" / "first_layer_init.npy"),
                                  single.first_layer_init)  # fmt: skip
    assert not np.allclose(ddp_final, single.first_layer_init)
    np.testing.assert_allclose(ddp_final, single.first_layer_final, rtol=1e-4, atol=1e-6)
    ddp_metrics = RunDir(tmp_path / "ddp").read_metrics()
    assert ddp_metrics[0]["train_loss"] == pytest.approx(single.metrics[0]["train_loss"], 1e-5)
    assert ddp_metrics[0]["test_acc"] == pytest.approx(single.metrics[0]["test_acc"])


# ----------------------------------------------------------------------------------------------
# Frozen first layers
# ----------------------------------------------------------------------------------------------


def test_frozen_whitening_first_layer(tmp_path: Path) -> None:
    import firstlayer

    kw = {**TINY, "epochs": 1, "first_width": 27, "freeze_first": "whitening",
          "whitening_eps": 1e-7, "test_dataset": "none", "subset": 200}  # fmt: skip
    res = train(out_dir=tmp_path / "w", **kw)
    np.testing.assert_array_equal(res.first_layer_init, res.first_layer_final)
    w = res.first_layer_init.reshape(27, 27).astype(np.float64)
    from firstlayer.sources import load_sample

    x, _, _ = load_sample("test")
    d = res.config["derived"]
    stats = firstlayer.patch_stats(np.ascontiguousarray(x[:200]), kernel_size=3)
    cov = stats.normalized(d["mean"], d["std"]).covariance
    np.testing.assert_allclose(w @ cov @ w.T, np.eye(27), atol=1e-2)  # responses are white
    # Random frozen filters stay at their initialisation, and the rest of the network learns.
    res = train(out_dir=tmp_path / "r", **{**kw, "freeze_first": "random"})
    np.testing.assert_array_equal(res.first_layer_init, res.first_layer_final)
    assert res.metrics[0]["train_loss"] > 0


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architectures_build_and_expose_their_first_layer(arch: str) -> None:
    torch.manual_seed(0)
    m = build_model(arch, num_classes=7, width=0.125, first_width=5)
    out = m(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 7)
    conv = first_conv(m, (3, 32, 32))
    assert conv.out_channels == 5 and conv.in_channels == 3
    name = next(n for n, mod in m.named_modules() if mod is conv)
    assert name in ("conv1", "features.0")
    gray = build_model(arch, num_classes=3, in_channels=1, width=0.125, kernel_size=5)
    assert first_conv(gray, (1, 28, 28)).kernel_size == (5, 5)


def test_torchvision_model_by_name() -> None:
    m = build_model("torchvision:resnet18", num_classes=4)
    assert first_conv(m, (3, 64, 64)).kernel_size == (7, 7)
    with pytest.raises(ValueError, match="width: not supported for torchvision"):
        build_model("torchvision:resnet18", num_classes=4, width=2.0)
    with pytest.raises(ValueError, match="did you mean torchvision:resnet18"):
        build_model("torchvision:resnet19", num_classes=4)


def test_bf16_autocast_and_options_run_on_cpu(tmp_path: Path) -> None:
    res = train(out_dir=tmp_path / "bf16", amp="bf16", schedule="cosine", weight_decay=5e-4,
                momentum=0.9, nesterov=True, augment=True, loss="mse",
                **{**TINY, "epochs": 1, "arch": "vgg11_bn", "width": 0.125})  # fmt: skip
    assert np.isfinite(res.metrics[0]["train_loss"])
    assert res.metrics[0]["lr"] < 0.01  # cosine decays
    res = train(out_dir=tmp_path / "step", schedule="step", milestones=(1,), gamma=0.5,
                channels_last=False, **{**TINY, "arch": "resnet20", "width": 0.25})  # fmt: skip
    assert [r["lr"] for r in res.metrics] == [0.01, 0.005]


# ----------------------------------------------------------------------------------------------
# Bad configurations fail before training, with the argument named
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"arch": "resnet_19"}, ValueError, "arch: expected one of small_cnn"),
        ({"arch": 3}, TypeError, "arch: expected a string"),
        ({"dataset": "cifar11"}, ValueError, "dataset: expected a dataset name.*cifar10"),
        ({"labels": "shuffled"}, ValueError, "labels: expected one of true, random, uniform"),
        ({"corrupt": 1.5}, ValueError, "corrupt: expected a finite number >= 0.0 and <= 1.0"),
        ({"epochs": 0}, ValueError, "epochs: expected an integer >= 1, got 0"),
        ({"batch_size": "64"}, TypeError, "batch_size: expected an integer"),
        ({"freeze_first": "yes"}, ValueError, "freeze_first: expected one of none"),
        ({"schedule": "linear"}, ValueError, "schedule: expected one of constant"),
        ({"milestones": (3,)}, ValueError, "milestones: only used with schedule='step'"),
        ({"lrr": 0.1}, TypeError, r"unexpected option\(s\) lrr \(did you mean lr\?\)"),
        ({"batch_size": 512}, ValueError, "batch_size: expected at most the number of training"),
        ({"mean": (0.5, 0.5)}, ValueError, "mean: expected mean and std together"),
        ({"kernel_size": 4}, ValueError, "kernel_size: expected an odd size"),
    ],
)
def test_bad_configs_fail_before_training(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    out = tmp_path / "bad"
    with pytest.raises(error, match=match):
        train(out_dir=out, **{**TINY, "subset": 100, **kwargs})
    assert not (out / "metrics.jsonl").exists()
    assert not (out / "config.json").exists()


def test_missing_dataset_names_the_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firstlayer.exceptions import DatasetNotFoundError

    monkeypatch.setenv("FIRSTLAYER_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        train(out_dir=tmp_path / "x", dataset="cifar10", download=False, quiet=True)
    assert not (tmp_path / "x" / "config.json").exists()


# ----------------------------------------------------------------------------------------------
# Data sources and the CLI
# ----------------------------------------------------------------------------------------------


def test_train_on_an_npz_file_and_image_folder(tmp_path: Path) -> None:
    from firstlayer.sources import load_sample

    x, y, _ = load_sample("train")
    np.savez(tmp_path / "d.npz", images=x[:64], labels=y[:64])
    kw = {**TINY, "subset": None, "epochs": 1, "test_dataset": "none"}
    res = train(out_dir=tmp_path / "npz", **{**kw, "dataset": str(tmp_path / "d.npz")})
    assert res.config["derived"]["n_train"] == 64
    from PIL import Image

    for i in range(40):
        sub = tmp_path / "folder" / f"class{y[i] % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].transpose(1, 2, 0)).save(sub / f"{i}.png")
    kw = {**TINY, "subset": None, "epochs": 1, "test_dataset": "none"}
    res = train(out_dir=tmp_path / "png", **{**kw, "dataset": str(tmp_path / "folder")})
    assert res.config["derived"]["n_classes"] == 2


def test_cli_options_match_the_keyword_arguments(tmp_path: Path) -> None:
    parser = add_train_arguments(argparse.ArgumentParser())
    defaults = parser.parse_args(["--out", "x"])
    cfg = TrainConfig(out_dir="x")
    assert set(vars(defaults)) == set(TrainConfig.names())
    for name in TrainConfig.names():
        assert getattr(defaults, name) == getattr(cfg, name), name
    args = parser.parse_args(
        ["--arch", "small_cnn", "--dataset", "sample", "--subset", "64", "--labels", "random",
         "--epochs", "1", "--seed", "1", "--out", str(tmp_path / "cli"), "--width", "0.25",
         "--batch-size", "16", "--test_subset", "32", "--milestones", "1", "--schedule", "step",
         "--snapshots", "0,2", "--no-channels-last", "--threads", "1", "--log-json"]
    )  # fmt: skip
    assert args.milestones == (1,) and args.snapshots == (0, 2) and args.channels_last is False
    res = train_from_args(args)
    assert res.config["options"]["labels"] == "random"
    assert sorted(p.name for p in (tmp_path / "cli" / "snapshots").iterdir()) == [
        "step_000000000.npy",
        "step_000000002.npy",
    ]


def test_package_is_callable_as_train(tmp_path: Path) -> None:
    import firstlayer.train as ft

    res = ft(out_dir=tmp_path / "c", **{**TINY, "epochs": 1, "subset": 32, "test_dataset": "none"})
    assert res.config["options"]["epochs"] == 1


def test_progress_lines_and_json_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kw = {**TINY, "epochs": 2, "subset": 32, "test_dataset": "none", "quiet": False}
    train(out_dir=tmp_path / "a", **kw)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].startswith("epoch 1/2") and lines[2].startswith("epoch 2/2")
    train(out_dir=tmp_path / "b", log_json=True, **kw)
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    train(out_dir=tmp_path / "c", **{**kw, "quiet": True})
    assert capsys.readouterr().out == ""
