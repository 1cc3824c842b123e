"""firstlayer.track inside a user's own training: plain PyTorch, DDP, Lightning, TensorBoard.

Every test trains a real (small) network on the bundled CIFAR-10 sample; the run folders are
read back with plain numpy and by ``firstlayer compare`` itself.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import firstlayer  # noqa: E402
from firstlayer.cli import main  # noqa: E402
from firstlayer.sources import load_sample  # noqa: E402
from firstlayer.train._schedule import snapshot_steps  # noqa: E402
from firstlayer.train.runs import RunDir  # noqa: E402
from firstlayer.train.tracker import log_grid  # noqa: E402


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


@pytest.fixture(scope="module")
def sample() -> tuple[Any, Any]:
    x, y, _ = load_sample("test")
    return torch.from_numpy(x[:400]).float() / 255, torch.from_numpy(y[:400])


def batches(sample: tuple[Any, Any], epochs: int, bs: int = 50) -> Any:
    x, y = sample
    for e in range(epochs):
        for i in range(0, len(x), bs):
            yield e, x[i : i + bs], y[i : i + bs]


def compare_report(capsys: pytest.CaptureFixture[str], run: Path, out: Path) -> dict[str, Any]:
    code = main(["compare", str(run), "--dataset", "sample", "--out", str(out), "-q", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


# -- the plain PyTorch loop -------------------------------------------------------------------


def test_plain_loop_three_lines_make_a_run_that_compare_reports(
    tmp_path: Path, sample: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conv = model[0]
    init = conv.weight.detach().clone()
    seen = {0: init.numpy().copy()}
    tracker = firstlayer.track(model, out_dir=tmp_path / "run")  # line 1
    step = 0
    for epoch, xb, yb in batches(sample, 2):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.step()  # line 2
        step += 1
        seen[step] = conv.weight.detach().numpy().copy()
        if step % 8 == 0:
            acc = float((model(xb).argmax(1) == yb).float().mean())
            tracker.log(epoch=epoch + 1, train_loss=float(loss.detach()), train_acc=acc)
    tracker.close()  # line 3

    run = RunDir(tmp_path / "run")
    assert run.complete() and tracker.layer == "0"
    steps, snaps = run.snapshots()
    # log-spaced (8 per decade) plus the last step, each the exact weights of that step
    assert steps.tolist() == sorted({*log_grid(8, 16), 16})
    for s, w in zip(steps.tolist(), snaps, strict=True):
        np.testing.assert_array_equal(w, seen[s])
    np.testing.assert_array_equal(np.load(run / "first_layer_init.npy"), init.numpy())
    np.testing.assert_array_equal(np.load(run / "first_layer_final.npy"), seen[16])
    cfg = run.read_json("config.json")
    assert cfg["derived"]["first_layer"] == {"module": "0", "shape": [8, 3, 3, 3]}
    assert cfg["derived"]["snapshot_steps"] == steps.tolist()
    assert [r["step"] for r in run.read_metrics()] == [8, 16]
    assert run.read_json("result.json")["steps"] == 16

    data = compare_report(capsys, tmp_path / "run", tmp_path / "report")
    (m,) = data["models"]
    assert m["name"] == "run" and m["init_known"] is True
    assert "t" in m["fit"] and np.isfinite(m["fit"]["correlation"])
    # the trajectory part of the report: the run's regime at its last snapshot
    assert m["regime"]["steps"] == 16 and m["regime"]["train_acc"] == acc
    assert (tmp_path / "report" / "index.html").is_file()


def test_optimizer_hook_counts_steps_and_writes_in_the_background(
    tmp_path: Path, sample: tuple[Any, Any]
) -> None:
    model = small_net(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    threads: list[str] = []

    def listener(step: int, w: np.ndarray, init: np.ndarray) -> None:
        threads.append(threading.current_thread().name)

    with firstlayer.track(
        model, tmp_path / "r", optimizer=opt, snapshots=4, total_steps=8, steps=[5],
        on_snapshot=[listener], dataset="sample",
    ) as tracker:  # fmt: skip
        for _, xb, yb in batches(sample, 1):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        with pytest.raises(RuntimeError, match="optimizer"):
            tracker.step()
    assert tracker.steps_done == 8
    # exactly the steps `firstlayer train` picks for snapshots=4 over 8 steps, plus step 5
    assert tracker.snapshot_steps == sorted(snapshot_steps(4, 8) | {5})
    assert RunDir(tmp_path / "r").snapshots()[0].tolist() == tracker.snapshot_steps
    assert threads and all(t.startswith("firstlayer-track") for t in threads)
    assert RunDir(tmp_path / "r").read_json("config.json")["options"]["dataset"] == "sample"


def test_same_files_as_firstlayer_train(tmp_path: Path, sample: tuple[Any, Any]) -> None:
    res = firstlayer.train(
        arch="small_cnn", dataset="sample", epochs=1, batch_size=256, snapshots=4,
        out_dir=tmp_path / "trained", quiet=True,
    )  # fmt: skip
    total = res.config["derived"]["total_steps"]
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with firstlayer.track(model, tmp_path / "tracked", snapshots=4, total_steps=total) as tr:
        for _, xb, yb in list(batches(sample, 1, bs=100))[:total]:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            tr.step()

    def files(p: Path) -> set[str]:
        return {str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()}

    only_train = {"checkpoint.pt", "model_final.pt", "labels_train.npy", "labels_true.npy"}
    assert files(tmp_path / "trained") - only_train == files(tmp_path / "tracked")
    trained = RunDir(tmp_path / "trained").read_json("config.json")
    tracked = RunDir(tmp_path / "tracked").read_json("config.json")
    assert tracked["derived"]["snapshot_steps"] == trained["derived"]["snapshot_steps"]
    assert set(tracked) == {"options", "derived"}


def test_a_failed_training_leaves_an_incomplete_run(tmp_path: Path) -> None:
    model = small_net()
    tr = firstlayer.track(model, tmp_path / "r")

    def train() -> None:
        with tr:
            tr.step()
            raise KeyError("boom")

    with pytest.raises(KeyError):
        train()
    run = RunDir(tmp_path / "r")
    assert not run.complete() and not (run / "first_layer_final.npy").exists()
    assert run.snapshots()[0].tolist() == [0, 1]
    with pytest.raises(RuntimeError, match="closed"):
        tr.step()


def test_bad_arguments_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        firstlayer.track("resnet18", tmp_path / "a")
    with pytest.raises(ValueError, match="total_steps: expected an integer >= 1, got 0"):
        firstlayer.track(small_net(), tmp_path / "b", total_steps=0)
    with pytest.raises(ValueError, match="mean: expected mean and std together"):
        firstlayer.track(small_net(), tmp_path / "c", mean=[0.5, 0.5, 0.5])
    with pytest.raises(TypeError, match="optimizer: expected a torch.optim.Optimizer"):
        firstlayer.track(small_net(), tmp_path / "d", optimizer="sgd")
    assert not (tmp_path / "d").exists()  # checked before anything is written
    firstlayer.track(small_net(), tmp_path / "e").close()
    with pytest.raises(FileExistsError, match="already holds a run"):
        firstlayer.track(small_net(), tmp_path / "e")
    tr = firstlayer.track(small_net(), tmp_path / "f")
    tr.step(5)
    with pytest.raises(ValueError, match="step: expected an integer >= 5, got 3"):
        tr.step(3)
    tr.close()


# -- DDP: two real gloo processes -------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, out: str, sample: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model = nn.parallel.DistributedDataParallel(small_net())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = sample
        # every rank passes the same out_dir, as a script run under torchrun would
        with firstlayer.track(model, out, optimizer=opt, snapshots=4, total_steps=4):
            for i in range(4):
                lo = i * 40 + rank * 20
                opt.zero_grad()
                F.cross_entropy(model(x[lo : lo + 20]), y[lo : lo + 20]).backward()
                opt.step()
        # a folder named after the rank: only rank 0's may exist afterwards
        firstlayer.track(model, out + f"-rank{rank}").close()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_under_ddp_only_rank_zero_writes(tmp_path: Path, sample: tuple[Any, Any]) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "ddp")
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), out, (sample[0][:160], sample[1][:160])),
        nprocs=2,
        join=True,
    )
    run = RunDir(out)
    assert run.complete()
    assert run.read_json("config.json")["derived"]["world_size"] == 2
    assert run.snapshots()[0].tolist() == sorted(snapshot_steps(4, 4))
    assert RunDir(out + "-rank0").complete()
    assert not os.path.exists(out + "-rank1")


# -- Lightning and TensorBoard ----------------------------------------------------------------


# Lightning 2.6 itself still uses torch's deprecated LeafSpec (a warning from inside lightning).
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_lightning_trainer_with_the_callback_makes_a_reportable_run(
    tmp_path: Path, sample: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    L = pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from firstlayer.integrations.lightning import FirstLayerCallback

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_net()

        def forward(self, x: Any) -> Any:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            xb, yb = batch
            loss = F.cross_entropy(self(xb), yb)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = sample
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    images, _, _ = load_sample("test")
    stats = firstlayer.patch_stats(images, kernel_size=3).normalized([0, 0, 0], [1, 1, 1])
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
        logger=TensorBoardLogger(str(tmp_path / "tb"), name="", version=""),
        callbacks=[FirstLayerCallback(tmp_path / "run", stats=stats, dataset="sample")],
    )  # fmt: skip
    trainer.fit(Net(), loader)

    run = RunDir(tmp_path / "run")
    assert run.complete()
    cfg = run.read_json("config.json")
    assert cfg["derived"]["first_layer"]["module"] == "net.0"
    assert cfg["derived"]["total_steps"] == 16  # estimated_stepping_batches: 2 epochs x 8
    steps, _ = run.snapshots()
    assert steps.tolist() == sorted(snapshot_steps(16, 16))
    metrics = run.read_metrics()
    assert [r["epoch"] for r in metrics] == [1, 2] and "train_loss" in metrics[0]

    data = compare_report(capsys, tmp_path / "run", tmp_path / "report")
    assert [m["name"] for m in data["models"]] == ["run"]
    assert data["models"][0]["regime"]["steps"] == 16

    # TensorBoard got the fitted eta*t and r at every snapshot after step 0, and the image
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    eta_t = events.Scalars("firstlayer/eta_t")
    assert [e.step for e in eta_t] == steps.tolist()[1:]
    r = events.Scalars("firstlayer/fit_r")
    final_fit = firstlayer.theory.fit(
        firstlayer.energy_profile(
            np.load(run / "first_layer_final.npy"), stats,
            init=np.load(run / "first_layer_init.npy"),
        ),
        stats,
    )  # fmt: skip
    assert r[-1].value == pytest.approx(final_fit.correlation, abs=1e-6)
    assert eta_t[-1].value == pytest.approx(final_fit.eta_t, rel=1e-6)
    assert len(events.Images("firstlayer/profile")) == len(eta_t)


def test_tensorboard_writer_on_a_plain_loop(tmp_path: Path, sample: tuple[Any, Any]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from firstlayer.integrations.tensorboard import TensorBoardWriter

    images, _, _ = load_sample("test")
    stats = firstlayer.patch_stats(images[:100], kernel_size=3).normalized([0, 0, 0], [1, 1, 1])
    model = small_net(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = TensorBoardWriter(tmp_path / "tb", stats, images=False)
    with firstlayer.track(model, tmp_path / "r", optimizer=opt, snapshots=[0, 2, 4],
                          on_snapshot=[writer]):  # fmt: skip
        for _, xb, yb in list(batches(sample, 1))[:4]:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    writer.writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("firstlayer/eta_t")] == [2, 4]
    assert "firstlayer/profile" not in events.Tags()["images"]
    with pytest.raises(TypeError, match="stats: expected a PatchStats"):
        TensorBoardWriter(tmp_path / "tb2", "stats")


def test_two_tracked_runs_compare_along_training(
    tmp_path: Path, sample: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The report's pair trajectory and trajectory.compare_runs read tracked runs unchanged."""
    from firstlayer.trajectory import compare_runs

    for seed in (0, 1):
        model = small_net(seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with firstlayer.track(model, tmp_path / f"s{seed}", optimizer=opt, total_steps=8,
                              mean=[0, 0, 0], std=[1, 1, 1]):  # fmt: skip
            for _, xb, yb in batches(sample, 1):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
    out = tmp_path / "report"
    code = main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--dataset", "sample",
                 "--out", str(out), "-q", "--json"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())
    (pair,) = data["pairs"]
    steps = sorted(snapshot_steps(16, 8) - {0})
    assert pair["trajectory"]["step"] == steps
    # the normalisation the runs recorded (mean/std given to track) is the one the report used
    norm = data["groups"][0]["normalization"]
    assert norm["name"] == "run" and norm["mean"] == [0, 0, 0] and norm["std"] == [1, 1, 1]

    images, _, _ = load_sample("test")
    seen = firstlayer.patch_stats(images, kernel_size=3).normalized([0, 0, 0], [1, 1, 1])
    c = compare_runs(tmp_path / "s0", tmp_path / "s1", seen)
    assert c.steps.tolist() == steps
    np.testing.assert_allclose(c.correlation, pair["trajectory"]["correlation"], atol=1e-9)


def test_transformers_trainer_with_the_callback_makes_a_run(
    tmp_path: Path, sample: tuple[Any, Any]
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from firstlayer.integrations.transformers import FirstLayerTrainerCallback

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = small_net()

        def forward(self, pixel_values: Any, labels: Any = None) -> dict[str, Any]:
            logits = self.body(pixel_values)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    x, y = sample
    data = [{"pixel_values": x[i], "labels": y[i]} for i in range(200)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=8, per_device_train_batch_size=25,
        learning_rate=0.1, logging_steps=4, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    callback = FirstLayerTrainerCallback(tmp_path / "run", dataset="sample")
    trainer = Trainer(model=Net(), args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

    run = RunDir(tmp_path / "run")
    assert run.complete()
    cfg = run.read_json("config.json")
    assert cfg["derived"]["first_layer"]["module"] == "body.0"
    assert cfg["derived"]["total_steps"] == 8
    assert run.snapshots()[0].tolist() == sorted(snapshot_steps(16, 8))
    logged = [r for r in run.read_metrics() if "loss" in r]
    assert [r["step"] for r in logged] == [4, 8]
    np.testing.assert_array_equal(
        np.load(run / "first_layer_final.npy"), trainer.model.body[0].weight.detach().numpy()
    )
