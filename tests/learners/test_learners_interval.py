"""The monotone interval tree: validity, monotone projection, flags, demand, domain growth."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cluster_mgr.model import Observation
from learners import IntervalLearner, make_learner


def _tanh_data(n: int, seed: int, sigma: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 6, n)
    return a, np.tanh(0.75 * a) + rng.normal(0, sigma, n)


def test_registry_default_and_unknown_name() -> None:
    assert isinstance(make_learner(), IntervalLearner)
    with pytest.raises(ValueError, match="ernest"):
        make_learner("no-such-learner")


def test_cold_bounds_are_the_prior_and_demand_is_infinite() -> None:
    m = IntervalLearner()
    lcb, mean, ucb = m.bounds(np.array([1.0, 5.0]), 10.0)
    assert np.all(lcb == 0) and np.all(ucb == 1) and m.cold
    assert m.demand(0.5, 10.0, "lower") == float("inf")


def test_bounds_cover_truth_and_shrink_with_data() -> None:
    g = np.linspace(0.1, 5.9, 100)
    truth = np.tanh(0.75 * g)
    widths = []
    for n in (200, 2000):
        m = IntervalLearner()
        a, y = _tanh_data(n, seed=n)
        m.learn_arrays(a, 1000.0, y, 0.05)
        lcb, _, ucb = m.bounds(g, 1000.0)
        assert np.all((truth >= lcb) & (truth <= ucb))
        assert np.all(np.diff(lcb) >= 0) and np.all(np.diff(ucb) >= 0)
        widths.append(np.mean(ucb - lcb))
    assert widths[1] < 0.7 * widths[0]


def test_discrete_design_gets_parametric_rate_at_design_points() -> None:
    """Many observations at the same allocation: the node holding only them bounds f there
    from both sides, so the width is 2 beta sigma / sqrt(count), with no bias term."""
    m = IntervalLearner()
    rng = np.random.default_rng(3)
    a = np.repeat([1.0, 2.0, 4.0], 400)
    m.learn_arrays(a, 1.0, np.tanh(a) + rng.normal(0, 0.05, len(a)), 0.05)
    lcb, _, ucb = m.bounds(np.array([2.0]), 1.0)
    beta = m._store.beta[m._row]
    assert ucb[0] - lcb[0] == pytest.approx(2 * beta * 0.05 / np.sqrt(400), rel=1e-6)


def test_exact_demand_matches_the_bound() -> None:
    m = IntervalLearner()
    a, y = _tanh_data(3000, seed=4)
    m.learn_arrays(a, 1000.0, y, 0.05)
    d = m.demand(0.8, 1000.0, "lower")
    assert np.isfinite(d)
    assert m.bounds(np.array([d]), 1000.0)[0][0] >= 0.8
    assert m.bounds(np.array([d * (1 - 1e-6)]), 1000.0)[0][0] < 0.8
    assert d >= np.arctanh(0.8) / 0.75  # conservative: not below the true demand
    assert m.demand(0.8, 2000.0, "lower") == pytest.approx(2 * d)  # x = alloc / load


def test_domain_grows_without_losing_data() -> None:
    m = IntervalLearner()
    m.learn_arrays(np.array([0.5, 0.6]), 1.0, np.array([0.3, 0.35]), 0.01)
    before = m.bounds(np.array([0.7]), 1.0)[0][0]
    m.learn_arrays(np.array([50.0]), 1.0, np.array([0.99]), 0.01)  # 64x beyond the domain
    assert m.explain()["x_max"] >= 64
    # the old tree became the leftmost subtree: its data are all still there (the deepest
    # level merged into its parent), so the bound at 0.7 still rests on both points
    after = m.bounds(np.array([0.7]), 1.0)[0][0]
    assert 0.25 < after <= before
    assert m._store.cnt[m._row, 0] == 3 and m.n_observations == 3


def test_zero_load_is_ignored_not_an_error() -> None:
    m = IntervalLearner()
    m.learn_one(Observation("j", 0.0, (2.0,), 0.0, 0.5, 0.1))
    assert m.n_observations == 0 and m.n_ignored == 1


def test_bump_raises_the_monotonicity_flag_and_widens() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 6, 3000)
    f = np.tanh(0.75 * a) - 0.5 * np.exp(-(((a - 3) / 0.2) ** 2))
    m = IntervalLearner()
    m.learn_arrays(a, 1.0, f + rng.normal(0, 0.05, len(a)), 0.05)
    assert m.misspecified and "monoton" in m.misspecification_reason
    assert m.explain()["monotone_projection_in_force"] is False
    lcb, _, ucb = m.bounds(np.array([3.0]), 1.0)
    truth = np.tanh(2.25) - 0.5
    assert lcb[0] <= truth <= ucb[0]


def test_lipschitz_constant_tightens_and_a_step_breaks_it() -> None:
    a, y = _tanh_data(3000, seed=6)
    plain, lip = IntervalLearner(), IntervalLearner(lipschitz=1.0)  # true slope <= 0.75 per unit x
    for m in (plain, lip):
        m.learn_arrays(a, 1.0, y, 0.05)
    g = np.linspace(0.2, 5.8, 50)
    w_plain = np.mean(np.subtract(*plain.bounds(g, 1.0)[::-2]))
    w_lip = np.mean(np.subtract(*lip.bounds(g, 1.0)[::-2]))
    assert not lip.misspecified and w_lip <= w_plain
    step = IntervalLearner(lipschitz=1.0)
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 6, 3000)
    step.learn_arrays(x, 1.0, 0.2 + 0.6 * (x > 3) + rng.normal(0, 0.02, 3000), 0.02)
    assert step.misspecified
    assert step.explain()["lipschitz_in_force"] is False or "noise" in step.misspecification_reason


def test_understated_noise_is_flagged_and_inflated() -> None:
    a, y = _tanh_data(3000, seed=8, sigma=0.15)
    m = IntervalLearner()
    m.learn_arrays(a, 1.0, y, 0.05)  # told a third of the real noise
    assert m.misspecified and "noise" in m.misspecification_reason
    assert m.explain()["noise_scale"] == pytest.approx(3.0, rel=0.15)


def test_pickle_and_clone_round_trip() -> None:
    a, y = _tanh_data(500, seed=9)
    m = IntervalLearner(delta=0.1, seed=3)
    m.learn_arrays(a, 1.0, y, 0.05)
    g = np.linspace(0, 6, 20)
    for copy_ in (pickle.loads(pickle.dumps(m)), m.clone()):
        for u, v in zip(m.bounds(g, 1.0), copy_.bounds(g, 1.0), strict=True):
            assert np.array_equal(u, v)


def test_bad_options_raise() -> None:
    for bad in ({"dim": 2}, {"lipschitz": -1.0}, {"value_range": (1.0, 0.0)}, {"depth": 0}, {"delta": 1.0}):
        with pytest.raises(ValueError):
            IntervalLearner(**bad)  # type: ignore[arg-type]
