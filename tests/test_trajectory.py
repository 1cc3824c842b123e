"""firstlayer.trajectory: claims along training, the settling rule, matched-eta*t alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _analysis_data import cifar_images
from firstlayer import trajectory as T
from firstlayer.theory import linear_profile

EV = 1.0 / np.arange(1, 28) ** 2


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------------------------
# The settling rule
# ----------------------------------------------------------------------------------------------


def _relaxing(steps: np.ndarray, tau: float) -> np.ndarray:
    """Profiles that move from one shape to another with time constant ``tau`` steps."""
    start, end = np.sqrt(EV), np.exp(-((np.arange(27) - 6.0) ** 2) / 20.0) + 0.05
    w = 1.0 - np.exp(-steps / tau)
    return (1 - w)[:, None] * start + w[:, None] * end


def _numpy_change(steps: np.ndarray, profiles: np.ndarray, fraction: float) -> float:
    p = profiles / profiles.max(axis=1, keepdims=True)
    at = (1 - fraction) * steps[-1]
    before = np.array([np.interp(at, steps, p[:, i]) for i in range(p.shape[1])])
    return float(np.linalg.norm(p[-1] - before) / np.linalg.norm(p[-1]))


def test_settling_rule_on_constructed_trajectories():
    steps = np.unique(np.geomspace(1, 2000, 14).round())
    fast, slow = _relaxing(steps, 50.0), _relaxing(steps, 3000.0)
    s_fast, s_slow = T.settling(steps, fast), T.settling(steps, slow)
    assert s_fast.settled and not s_slow.settled
    assert s_fast.change == pytest.approx(_numpy_change(steps, fast, 0.2), rel=1e-12)
    assert s_slow.change == pytest.approx(_numpy_change(steps, slow, 0.2), rel=1e-12)
    assert s_fast.change < 0.02 < s_slow.change
    assert s_fast.since_step == pytest.approx(1600.0) and s_fast.last_step == 2000.0
    assert "not settled" in s_slow.describe() and "20%" in s_slow.describe()
    # A wider window sees more of the change; a constant trajectory has settled exactly.
    assert T.settling(steps, slow, fraction=0.5).change > s_slow.change
    still = T.settling(steps, np.tile(np.sqrt(EV), (steps.size, 1)))
    assert still.settled and still.change == 0.0
    # The threshold is the rule's: the same trajectory settles under a looser one.
    assert T.settling(steps, slow, threshold=1.0).settled
    # One snapshot cannot tell.
    one = T.settling(steps[:1], slow[:1])
    assert not one.settled and math.isnan(one.change)


def test_settling_rejects_bad_input():
    with pytest.raises(ValueError, match="fraction"):
        T.settling([1, 2], np.ones((2, 3)), fraction=1.0)
    with pytest.raises(ValueError, match="threshold"):
        T.settling([1, 2], np.ones((2, 3)), threshold=0.0)
    with pytest.raises(ValueError, match="profiles: expected one profile per step"):
        T.settling([1, 2, 3], np.ones((2, 3)))
    with pytest.raises(ValueError, match="steps: expected strictly increasing"):
        T.settling([2, 1], np.ones((2, 3)))


# ----------------------------------------------------------------------------------------------
# Alignment on the closed form: a one-parameter family in eta * t
# ----------------------------------------------------------------------------------------------


def test_closed_form_runs_align_exactly_at_matched_eta_t():
    # From eta*t = 0.05 on: below the fit's floor (0.01 / largest eigenvalue) every profile is
    # ~ sqrt(eigenvalue) and eta*t cannot be told apart.
    steps = np.unique(np.geomspace(20, 4000, 20).round())
    eta = 0.01
    a = T.trajectory(steps, linear_profile(EV, eta, steps), EV, eta=eta, name="a")
    b = T.trajectory(steps, linear_profile(EV, eta / 4, steps), EV, eta=eta, name="b")
    # The fit recovers eta * t of each record of the closed form (b's is a quarter of a's).
    np.testing.assert_allclose(a.eta_t, eta * steps, rtol=2e-3)
    # b's formula has (1 - a/4)^t, not (1 - a)^(t/4): equal in eta*t only nearly, and early on
    # the profile hardly depends on eta*t, so the fit is looser there.
    late = eta / 4 * steps > 0.5
    np.testing.assert_allclose(b.eta_t[late], eta / 4 * steps[late], rtol=0.02)
    np.testing.assert_allclose(b.eta_t, eta / 4 * steps, rtol=0.2)
    c = T.compare_runs(a, b)
    assert c.aligned_correlation.size > 0
    assert c.aligned_correlation.min() > 0.9999
    # Matched steps compare different points of the family.
    assert c.correlation.min() < 0.99
    np.testing.assert_array_equal(c.steps, steps.astype(np.int64))
    assert c.final == pytest.approx(_corr(a.profiles[-1], b.profiles[-1]), abs=1e-12)
    # Only the eta*t range both reached is compared.
    assert c.aligned_eta_t[0] >= max(a.eta_t[0], b.eta_t[0]) * (1 - 1e-12)
    assert c.aligned_eta_t[-1] <= min(a.eta_t[-1], b.eta_t[-1]) * (1 + 1e-12)


def test_profile_at_eta_t_matches_numpy_interpolation():
    steps = np.array([10.0, 30.0, 100.0, 400.0])
    rng = np.random.default_rng(0)
    prof = linear_profile(EV, 0.01, steps) * (1 + 0.05 * rng.random((4, 27)))
    tr = T.trajectory(steps, prof, EV, eta=0.01)
    x = np.log(tr.eta_t)
    assert np.all(np.diff(x) > 0)
    pn = prof / prof.max(axis=1, keepdims=True)
    for target in (x[0], 0.3 * x[1] + 0.7 * x[2], x[3]):
        want = np.array([np.interp(target, x, pn[:, i]) for i in range(27)])
        want /= want.max()
        np.testing.assert_allclose(T.profile_at_eta_t(tr, math.exp(target)), want, rtol=1e-12)


def test_matched_steps_interpolates_when_no_step_is_shared():
    eta = 0.01
    sa, sb = np.array([2.0, 6.0, 20.0]), np.array([1.0, 4.0, 12.0, 40.0])
    a = T.trajectory(sa, linear_profile(EV, eta, sa), EV, eta=eta)
    b = T.trajectory(sb, linear_profile(EV, eta, sb), EV, eta=eta)
    steps, r = T.matched_steps(a, b)
    np.testing.assert_array_equal(steps, [2, 6, 20])
    pb = b.profiles
    for s, got in zip(steps, r, strict=True):
        q = np.array([np.interp(s, sb, pb[:, i]) for i in range(27)])
        assert got == pytest.approx(_corr(a.profiles[list(sa).index(s)], q), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Two exact linear-CNN simulations with different step sizes
# ----------------------------------------------------------------------------------------------


def test_linear_cnn_simulations_align_at_matched_eta_t_not_at_matched_steps():
    from firstlayer.theory import simulate_linear_cnn

    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = cifar_images(1000)
        kw = {"random_labels": True, "steps": 200, "n_samples": 1000, "n_records": 16,
              "label_draws": 8, "seed": 0}  # fmt: skip
        fast = simulate_linear_cnn(x, y, **kw)
        # lr from the theory's eta = 2 lr m / (n_classes J): 16 patches, 10 classes, m = 1.
        lr_fast = fast.eta * 16 * 10 / 2
        slow = simulate_linear_cnn(x, y, **kw, lr=lr_fast / 5)
    finally:
        torch.set_num_threads(saved)
    assert slow.eta == pytest.approx(fast.eta / 5, rel=1e-9)
    a = T.trajectory(fast.steps, fast.profiles, fast.eigenvalues, name="fast")
    b = T.trajectory(slow.steps, slow.profiles, slow.eigenvalues, name="slow")
    assert a.eta == b.eta  # the same statistics give the same fit step size
    c = T.compare_runs(a, b)
    assert c.aligned_correlation.size >= 8
    assert c.aligned_correlation.min() > 0.99
    assert c.correlation.min() < 0.9
    assert c.final < 0.9
    # Independently: the slow run's last profile against the fast run's profile at its fitted
    # eta*t, interpolated with numpy in log(eta*t).
    xa = np.maximum.accumulate(np.log(a.eta_t))
    target = math.log(b.eta_t[-1])
    q = np.array([np.interp(target, xa, a.profiles[:, i]) for i in range(27)])
    assert _corr(q, b.profiles[-1]) > 0.99
    assert c.aligned_correlation[-1] == pytest.approx(_corr(q, b.profiles[-1]), abs=1e-9)
    d = c.to_dict()
    assert set(d["trajectory"]) == {"step", "correlation", "eta_t_a", "eta_t_b"}
    assert d["aligned"]["beyond_paper"] is True
    np.testing.assert_allclose(d["trajectory"]["eta_t_a"], a.eta_t, rtol=1e-12)
    assert "matched fitted eta*t" in c.summary()


def test_run_trajectory_reads_a_run_folder(tmp_path):
    from firstlayer.streaming import patch_stats
    from firstlayer.train.runs import RunDir

    rng = np.random.default_rng(1)
    x, _ = cifar_images(200)
    stats = patch_stats(x, kernel_size=3, layout="NCHW").normalized((0.5,) * 3, (0.25,) * 3)
    rd = RunDir(tmp_path / "run")
    rd.prepare(resume=False, overwrite=False)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    rd.write_npy("first_layer_init.npy", w0)
    rd.write_snapshot(0, w0)
    ws = {s: w0 + s * 0.01 * rng.standard_normal(w0.shape).astype(np.float32) for s in (5, 50)}
    for s, w in ws.items():
        rd.write_snapshot(s, w)
    rd.write_metrics([{"epoch": 1, "step": 50, "train_acc": 0.25}])
    tr = T.run_trajectory(rd.path, stats)
    np.testing.assert_array_equal(tr.steps, [5, 50])
    assert tr.train_acc == 0.25 and tr.name == "run"
    w0d = w0.astype(np.float64)
    for i, s in enumerate((5, 50)):
        d = ws[s].astype(np.float64) - w0d
        assert tr.relative_change[i] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w0d))
        u = stats.pca().components
        e = np.sqrt(np.mean((d.reshape(8, -1) @ u) ** 2, axis=0))
        np.testing.assert_allclose(tr.profiles[i], e / e.max(), rtol=1e-9)
    g = tr.regime()
    assert g["steps"] == 50 and g["train_acc"] == 0.25 and not math.isnan(g["eta_t"])
    with pytest.raises(FileNotFoundError, match="first_layer_init.npy"):
        T.run_trajectory(tmp_path, stats)
    with pytest.raises(ValueError, match="stats"):
        T.compare_runs(rd.path, rd.path)
