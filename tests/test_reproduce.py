"""``firstlayer reproduce``: the tiny scale end to end, its claims' structure and consistency.

One tiny reproduction (the bundled CIFAR-10 sample, narrow networks, 1-2 epochs; about a
minute on two cores) is shared by the tests of this file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import firstlayer  # noqa: E402
from firstlayer.cli import main  # noqa: E402
from firstlayer.reproduce import (  # noqa: E402
    EXPERIMENTS,
    SCALES,
    add_reproduce_arguments,
    format_claims,
    plan,
    reproduce,
)
from firstlayer.reproduce.claims import VERDICTS, holds, verdict  # noqa: E402
from firstlayer.reproduce.scales import runs  # noqa: E402

REQUIRED = ("id", "claim", "paper", "measured", "spread", "holds")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny reproduction, made through the command line."""
    out = tmp_path_factory.mktemp("reproduce") / "tiny"
    code = main(["reproduce", "--scale", "tiny", "--out", str(out), "--threads", "2", "--quiet"])
    assert code == 0
    return out


def _claims(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "claims.json").read_text())  # type: ignore[no-any-return]


def _exp(out: Path, n: int) -> dict[str, Any]:
    return json.loads((out / "experiments" / f"e{n}.json").read_text())  # type: ignore[no-any-return]


def test_folder_layout(tiny: Path) -> None:
    for name in ("plan.json", "claims.json", "index.html", "report.json", "profiles.csv"):
        assert (tiny / name).is_file(), name
    for n in EXPERIMENTS:
        assert (tiny / "experiments" / f"e{n}.json").is_file()
    runs = sorted(p.name for p in (tiny / "runs").iterdir())
    sc = SCALES["tiny"]
    n_runs = 2 * len(sc.seeds) + len(sc.first_widths) + 2 * len(sc.arch_seeds)
    assert len(runs) == n_runs
    assert all((tiny / "runs" / r / "result.json").is_file() for r in runs)
    plan = json.loads((tiny / "plan.json").read_text())
    assert plan["scale"]["name"] == "tiny"
    assert plan["key"] == sc.key()


def test_claims_structure(tiny: Path) -> None:
    claims = _claims(tiny)
    ids = [c["id"] for c in claims]
    assert len(ids) == len(set(ids))
    assert {c["experiment"] for c in claims} == set(EXPERIMENTS)
    for c in claims:
        for key in REQUIRED:
            assert key in c, (c["id"], key)
        assert isinstance(c["claim"], str) and c["claim"]
        assert isinstance(c["paper"], float | int)
        assert c["holds"] in (True, False, None)
        assert c["rule"] in ("at_least", "near", "abs_below")
        assert c["source"]
    # Every claim of the tiny scale is measured (the pretrained weights may be absent elsewhere).
    measured = [c for c in claims if c["holds"] is not None]
    assert len(measured) >= len(claims) - 1


def test_claims_internally_consistent(tiny: Path) -> None:
    for c in _claims(tiny):
        if c["holds"] is None:
            assert c["n"] == 0
            continue
        vals = np.asarray(c["values"], dtype=float)
        assert c["n"] == vals.size
        assert math.isclose(c["measured"], float(vals.mean()), rel_tol=1e-9, abs_tol=1e-12)
        sd = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        assert math.isclose(c["spread"], sd, rel_tol=1e-9, abs_tol=1e-12)
        ok, _ = holds(
            c["rule"], c["measured"], c["paper"], c["paper_spread"] or 0.0, c["tolerance"]
        )
        assert ok == c["holds"], c["id"]
        if c["id"] not in ("6a", "6b"):  # correlations
            assert np.all(np.abs(vals) <= 1 + 1e-9), c["id"]


def test_experiment_details_consistent(tiny: Path) -> None:
    sc = SCALES["tiny"]
    n_seeds = len(sc.seeds)
    e1 = _exp(tiny, 1)["details"]
    assert len(e1["seed_correlations"]) == n_seeds * (n_seeds - 1) // 2
    assert len(e1["width_correlations"]) == len(sc.first_widths) * n_seeds
    for p in e1["profiles"].values():
        assert len(p) == 27
        assert math.isclose(max(p), 1.0)  # max-normalised
    e4 = _exp(tiny, 4)["details"]
    assert len(e4["true_vs_random"]) == n_seeds
    # The paired correlations are among all true/random pairs.
    all_pairs = e4["true_vs_random_all_pairs"]
    assert all(any(math.isclose(v, w) for w in all_pairs) for v in e4["true_vs_random"])
    # Recompute one correlation from the stored profiles.
    names = sorted(e4["profiles"])
    t0 = [n for n in names if "-true-s0" in n][0]
    r0 = [n for n in names if "-random-s0" in n][0]
    r = np.corrcoef(e4["profiles"][t0], e4["profiles"][r0])[0, 1]
    assert math.isclose(r, e4["true_vs_random"][0], abs_tol=1e-9)
    e5 = _exp(tiny, 5)["details"]
    for name, f in e5["fits"].items():
        assert -1 <= f["correlation"] <= 1
        assert len(f["curve"]) == 27 and math.isclose(max(f["curve"]), 1.0), name
    # The fit maximises the correlation: it is at least that of the stored profile with its curve.
    prof = e4["profiles"][t0]
    fit_r = e5["fits"][t0]["correlation"]
    assert fit_r >= np.corrcoef(prof, e5["fits"][t0]["curve"])[0, 1] - 1e-6
    e8 = _exp(tiny, 8)["details"]
    for tr in e8["trajectory"].values():
        assert tr["steps"] == sorted(tr["steps"])
        assert len(tr["steps"]) == len(tr["eta_t"]) == len(tr["correlation"])
    e3 = _exp(tiny, 3)["details"]
    assert len(e3["correlations"]) == len(sc.arch_seeds) ** 2


#: Claims read from the runs' snapshots along training (one curve per run pair or run).
ALONG = ("1a", "1b", "2", "3", "4a", "4b", "8a", "8b", "8c")


def test_claims_have_verdicts_regimes_and_causes(tiny: Path) -> None:
    claims = {c["id"]: c for c in _claims(tiny)}
    for c in claims.values():
        assert c["verdict"] in VERDICTS, c["id"]
        assert isinstance(c["cause"], str) and isinstance(c["regime"], dict)
        # The verdict follows from the end value and the regime of the runs behind the claim.
        assert (c["verdict"], c["cause"]) == verdict(c["holds"], c["regime"]), c["id"]
        for g in c["regime"].values():
            assert set(g) >= {"train_acc", "eta_t", "fit_correlation", "relative_change",
                              "settled", "settle_change", "settling"}  # fmt: skip
        if c["verdict"] == "not comparable" and c["holds"] is False:
            assert "did not settle" in c["cause"]
    # Training claims carry their runs' regimes; the linear-CNN and label checks carry none.
    assert set(claims["4a"]["regime"]) == {r.name for k in ("true", "random")
                                           for r in runs(SCALES["tiny"])[k]}  # fmt: skip
    assert claims["6a"]["regime"] == {} and claims["5c"]["regime"] == {}
    assert claims["4m"]["beyond_paper"] is True and claims["4a"]["beyond_paper"] is False


def test_verdict_rule() -> None:
    settled = {"r-random-s0": {"settled": True, "settle_change": 0.01, "train_acc": 0.99}}
    moving = {"r-random-s0": {"settled": False, "settle_change": 0.04, "train_acc": 0.31},
              "r-true-s0": {"settled": True, "settle_change": 0.01, "train_acc": 0.99}}  # fmt: skip
    assert verdict(True, settled) == ("holds", "")
    assert verdict(False, settled) == ("does not hold", "every run behind it settled")
    word, cause = verdict(False, moving)
    assert word == "not comparable"
    assert cause == (
        "1 of 1 random-label runs did not settle: the profile still changes by 4% over the last "
        "20% of steps (train accuracy 31%)"
    )
    assert verdict(True, moving)[0] == "holds" and "did not settle" in verdict(True, moving)[1]
    assert verdict(None, moving) == ("not comparable", "not measured")
    assert verdict(False, {}) == ("does not hold", "no training run is behind it")


def test_claims_along_training_end_at_the_measured_values(tiny: Path) -> None:
    from firstlayer.profile import energy_profile

    claims = {c["id"]: c for c in _claims(tiny)}
    for cid in ALONG:
        c = claims[cid]
        tr = c["trajectory"]
        assert tr["x"] == [tr["step"]] * len(tr["values"]), cid
        assert len(tr["values"]) == c["n"], cid
        # The curve's last point is the end-of-training value of the table (the last snapshot
        # is the final first layer).
        np.testing.assert_allclose([v[-1] for v in tr["values"]], c["values"], atol=1e-9)
    e4 = _exp(tiny, 4)["details"]
    want = [a["aligned"]["correlation"][-1] for a in e4["aligned"] if a["aligned"]["correlation"]]
    assert claims["4m"]["values"] == want
    # One run's regime recomputed from its folder with numpy.
    name = runs(SCALES["tiny"])["random"][0].name
    g = claims["4b"]["regime"][name]
    run = tiny / "runs" / name
    w0 = np.load(run / "first_layer_init.npy").astype(np.float64)
    snaps = sorted((run / "snapshots").glob("step_*.npy"))
    steps = np.array([int(f.stem[5:]) for f in snaps])
    ws = [np.load(f).astype(np.float64) for f in snaps]
    assert g["steps"] == steps[-1]
    assert g["relative_change"] == pytest.approx(np.linalg.norm(ws[-1] - w0) / np.linalg.norm(w0))
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert g["train_acc"] == pytest.approx(last["train_acc"])
    from firstlayer.constants import CIFAR10_MEAN, CIFAR10_STD
    from firstlayer.streaming import patch_stats

    with np.load(tiny / "data" / "train.npz") as d:
        st = patch_stats(d["images"], 3).normalized(CIFAR10_MEAN, CIFAR10_STD)
    prof = np.stack([energy_profile(w, st, init=w0) for w in ws[1:]])
    prof /= prof.max(axis=1, keepdims=True)
    at = 0.8 * steps[-1]
    before = np.array([np.interp(at, steps[1:], prof[:, i]) for i in range(27)])
    change = np.linalg.norm(prof[-1] - before) / np.linalg.norm(prof[-1])
    assert g["settle_change"] == pytest.approx(change, rel=1e-9)
    assert g["settled"] == (change < 0.02)
    page = (tiny / "index.html").read_text()
    assert "Each run&#x27;s regime" in page or "Each run's regime" in page
    assert "beyond the paper" in page and "Settling rule" in page
    for f in ("claims_along_training.png", "true_random_trajectory.png"):
        assert (tiny / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_claims(_claims(tiny))
    assert "[beyond the paper]" in text and "4m" in text


def test_pretrained_experiment(tiny: Path) -> None:
    e7 = _exp(tiny, 7)
    if "skipped" in e7["details"]:
        pytest.skip("pretrained_first_layers.npz not available")
    models = e7["details"]["models"]
    assert set(models) >= {"resnet18", "squeezenet1_1"}
    for m in models.values():
        k = m["shape"][-1]
        assert len(m["profile"]) == 3 * k * k
        assert -1 <= m["correlation"] <= 1
    assert e7["details"]["natural_images"]


def test_html_has_claims_table(tiny: Path) -> None:
    page = (tiny / "index.html").read_text()
    assert "id='claims'" in page
    assert "href='#claims'" in page
    for c in _claims(tiny):
        assert f"<td>{c['id']}</td>" in page
    report = json.loads((tiny / "report.json").read_text())
    assert report["format"] == "firstlayer.report"
    assert report["reproduce"]["scale"] == "tiny"
    assert [c["id"] for c in report["reproduce"]["claims"]] == [c["id"] for c in _claims(tiny)]


def test_rerun_reuses_experiments(tiny: Path) -> None:
    before = {n: (tiny / "experiments" / f"e{n}.json").stat().st_mtime_ns for n in EXPERIMENTS}
    res = reproduce(tiny, scale="tiny", only=[2, 6], quiet=True)
    assert res.experiments[2]["reused"] is True
    assert res.experiments[6]["reused"] is True
    after = {n: (tiny / "experiments" / f"e{n}.json").stat().st_mtime_ns for n in EXPERIMENTS}
    assert before == after
    # Experiments not asked for are still in the report.
    assert {c["experiment"] for c in res.claims} == set(EXPERIMENTS)
    assert "1a" in format_claims(res.claims)


def test_other_scale_in_same_folder_is_refused(tiny: Path) -> None:
    with pytest.raises(FileExistsError, match="scale"):
        reproduce(tiny, scale="small", only=6, quiet=True)


def test_interrupted_run_needs_resume(tmp_path: Path) -> None:
    out = tmp_path / "r"
    sc = SCALES["tiny"]
    run = out / "runs" / f"{sc.main_arch}-w{sc.main_width:g}-true-s{sc.seeds[0]}"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")  # started, never finished
    with pytest.raises(FileExistsError, match="resume"):
        reproduce(out, scale="tiny", only=2, quiet=True)


def test_resume_continues_interrupted_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firstlayer.reproduce import context, run

    out = tmp_path / "r"
    sc = SCALES["tiny"]
    names = [f"{sc.main_arch}-w{sc.main_width:g}-true-s{s}" for s in sc.seeds]
    (out / "runs" / names[0]).mkdir(parents=True)
    (out / "runs" / names[0] / "config.json").write_text("{}")
    calls: list[tuple[str, bool]] = []

    def fake(self: Any, run: Any, path: Path, *, resume: bool) -> None:
        calls.append((run.name, resume))
        rng = np.random.default_rng(run.seed)
        w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
        path.mkdir(parents=True, exist_ok=True)
        (path / "snapshots").mkdir(exist_ok=True)
        np.save(path / "first_layer_init.npy", w0)
        np.save(path / "first_layer_final.npy", w0 + rng.standard_normal(w0.shape).astype("f4"))
        (path / "config.json").write_text("{}")
        (path / "result.json").write_text("{}")

    monkeypatch.setattr(context.Context, "_run_training", fake)
    monkeypatch.setattr(run, "write_report", lambda ctx, results, command: (out / "x", []))
    reproduce(out, scale="tiny", only=2, resume=True, quiet=True)
    assert sorted(calls) == sorted([(names[0], True), *[(n, False) for n in names[1:]]])
    assert (out / "experiments" / "e2.json").is_file()


def test_only_experiment_six_trains_nothing(tmp_path: Path) -> None:
    res = reproduce(tmp_path / "six", scale="tiny", only=6, quiet=True)
    assert not (tmp_path / "six" / "runs").exists()
    assert [c["experiment"] for c in res.claims] == [6, 6]
    page = res.index.read_text()
    assert "id='claims'" in page


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"scale": "huge"}, ValueError, "scale: expected one of tiny, small, paper, got 'huge'"),
        ({"only": 9}, ValueError, "only: expected experiment numbers among 1-8, got 9"),
        ({"only": "4"}, TypeError, "only: expected"),
        ({"device": "tpu"}, ValueError, "device: expected"),
        ({"threads": 0}, ValueError, "threads: expected a positive integer, got 0"),
    ],
)
def test_errors_name_the_argument(
    tmp_path: Path, kwargs: dict[str, Any], exc: type[Exception], text: str
) -> None:
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        reproduce(tmp_path / "x", **{"scale": "tiny", **kwargs})


def test_cli_usage_error_for_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--scale", "tiny", "--only", "12"]) == 2
    assert "--only" in capsys.readouterr().err


def test_cli_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--scale", "--only", "--resume", "--out", "--data-root"):
        assert opt in text


def test_cli_json(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reproduce", "--scale", "tiny", "--out", str(tiny), "--only", "6", "--json", "-q"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["claims"] == _claims(tiny)


def test_add_arguments_parses() -> None:
    import argparse

    p = argparse.ArgumentParser()
    add_reproduce_arguments(p)
    a = p.parse_args(["--scale", "paper", "--only", "4", "--only", "5", "--resume"])
    assert a.scale == "paper" and a.only == [4, 5] and a.resume


def test_small_plan_fits_the_budget() -> None:
    """The small scale's training epochs at the measured CPU speeds stay under 45 minutes."""
    p = plan("small")
    assert len(p["runs"]) == 12
    assert p["estimated_seconds"] is not None and p["estimated_seconds"] < 45 * 60
    only3 = plan("small", 3)
    assert all(n.startswith(("vgg11_bn", "resnet20")) for n in only3["runs"])
    assert plan("small", 6)["runs"] == {}
    assert plan("paper")["estimated_seconds"] is None


def test_cli_plan_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    assert main(["reproduce", "--scale", "small", "--plan", "--out", str(out)]) == 0
    assert "12 runs" in capsys.readouterr().out
    assert not out.exists()


def test_import_does_not_import_torch() -> None:
    code = "import sys, firstlayer, firstlayer.reproduce; print('torch' in sys.modules)"
    env = dict(os.environ)
    # The same firstlayer as this process (installed or editable), not the bare source tree.
    here = str(Path(firstlayer.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "False"


def test_runs_of_different_lengths_share_their_snapshot_steps(tmp_path: Path) -> None:
    from firstlayer._paths import data_roots
    from firstlayer.reproduce.context import Context
    from firstlayer.train._schedule import snapshot_steps

    sc = SCALES["small"]
    try:
        ctx = Context(sc, tmp_path, data_roots(None), device="cpu", threads=1, resume=False,
                      say=lambda _m: None)  # fmt: skip
        ctx.data()
    except FileNotFoundError:
        pytest.skip("the exact CIFAR-10 subset is absent")
    per_epoch = 1024 // sc.batch_size
    true, rand = runs(sc)["true"][0], runs(sc)["random"][0]
    st, sr = ctx._snapshot_steps(true), ctx._snapshot_steps(rand)
    assert st[-1] == per_epoch * sc.epochs and sr[-1] == per_epoch * sc.random_epochs
    # The shorter run's steps are exactly the longer run's up to its end ...
    assert st == [s for s in sr if s <= st[-1]]
    # ... and hold each length's own log-spaced schedule.
    assert snapshot_steps(sc.snapshots, per_epoch * sc.epochs) <= set(st)
    assert snapshot_steps(sc.snapshots, per_epoch * sc.random_epochs) <= set(sr)
    # The settling rule's window starts at a snapshot: 80% of each run's steps.
    assert round(0.8 * st[-1]) in st and round(0.8 * sr[-1]) in sr
