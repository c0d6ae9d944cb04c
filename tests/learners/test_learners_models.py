"""GP-UCB and Ernest: fits, incremental Cholesky, bounded working set, flags, real-data shape."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from learners import ErnestLearner, GPUCBLearner, make_learner


def test_gp_incremental_cholesky_equals_a_fresh_factorization() -> None:
    rng = np.random.default_rng(0)
    m = GPUCBLearner(dim=2, merge_radius=0.0, max_points=64)
    X = rng.uniform(0, 1, (40, 2))
    m.learn_arrays(X, 1.0, np.sin(3 * X[:, 0]) + X[:, 1], 0.1)
    m.bounds(X[:2], 1.0)  # factor once
    X2 = rng.uniform(0, 1, (10, 2))
    m.learn_arrays(X2, 1.0, np.sin(3 * X2[:, 0]) + X2[:, 1], 0.1)  # appends only
    m.bounds(X2[:2], 1.0)
    K = m._kernel_matrix(slice(None), m._lengthscales, m._amp)
    assert np.allclose(m._L, linalg.cholesky(K, lower=True), atol=1e-8)


def test_gp_working_set_is_bounded_and_uses_all_data() -> None:
    rng = np.random.default_rng(1)
    m = GPUCBLearner(dim=3, max_points=50)
    X = rng.uniform(1, 10, (3000, 3))
    y = 100 + (50 / X).sum(1)
    m.learn_arrays(X, 1.0, y * np.exp(rng.normal(0, 0.05, len(y))), 0.05 * y)
    assert m.explain()["working_set"] == 50
    assert m._P.sum() == 3000  # every observation sits in some pseudo-point
    q = rng.uniform(2, 9, (200, 3))
    lcb, mean, ucb = m.bounds(q, 1.0)
    assert np.all(lcb <= mean) and np.all(mean <= ucb)
    assert np.mean(np.abs(mean - (100 + (50 / q).sum(1))) / mean) < 0.1


def test_gp_warp_follows_a_steep_corner() -> None:
    """A latency that blows up near the low end of the range: marginal likelihood picks a warp
    that stretches the low end, the mean follows the curve, and queries outside the observed
    range (where the warp continues linearly) stay finite and ordered."""
    rng = np.random.default_rng(6)
    x = rng.uniform(4, 12, 3000)
    f = 10 + 20 / (x - 3.4)
    m = GPUCBLearner(log_value=True)
    m.learn_arrays(x, 1.0, f * (1 + 0.05 * rng.standard_normal(len(x))), 0.05 * f)
    assert m._warp[0] == -1 and not m.misspecified
    g = np.linspace(4.2, 11.8, 100)
    lcb, mean, ucb = m.bounds(g, 1.0)
    truth = 10 + 20 / (g - 3.4)
    assert np.all(np.abs(mean / truth - 1) < 0.01) and np.all(lcb <= mean) and np.all(mean <= ucb)
    lo, mid, hi = m.bounds(np.array([2.0, 3.0, 14.0]), 1.0)
    assert np.all(np.isfinite(hi)) and np.all((lo > 0) & (lo <= mid) & (mid <= hi))


def test_gp_log_values_are_corrected_for_their_bias() -> None:
    """y = f + noise of sd sigma has E[log y] = log f - (sigma/f)^2 / 2: without the correction
    a flat curve at 20% noise would come out 2% low, many standard errors at n = 4,000."""
    rng = np.random.default_rng(7)
    x = rng.uniform(1, 10, 4000)
    m = GPUCBLearner(log_value=True)
    m.learn_arrays(x, 1.0, 50 * (1 + 0.2 * rng.standard_normal(len(x))), 10.0)
    lcb, mean, ucb = m.bounds(np.linspace(2, 9, 20), 1.0)
    assert np.all(np.abs(mean / 50 - 1) < 0.01) and np.all((lcb <= 50) & (ucb >= 50))


def test_gp_cold_bounds_say_unknown() -> None:
    m = GPUCBLearner(dim=2, log_value=True)
    lcb, mean, ucb = m.bounds(np.ones((3, 2)), 1.0)
    assert np.all(lcb == 0) and np.all(np.isinf(ucb)) and m.cold


def test_gp_flags_understated_noise() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, 1500)
    m = GPUCBLearner()
    m.learn_arrays(x, 1.0, np.sin(4 * x) + rng.normal(0, 0.3, len(x)), 0.1)
    assert m.misspecified and "noise" in m.misspecification_reason
    assert m.explain()["noise_scale"] == pytest.approx(3.0, rel=0.2)


def test_ernest_recovers_parameters_and_bounds_cover() -> None:
    rng = np.random.default_rng(3)
    theta = np.array([5.0, 200.0, 1.0, 0.05])
    a = rng.uniform(1, 64, 4000)
    ld = rng.uniform(1, 10, 4000)
    f = theta[0] + theta[1] * ld / a + theta[2] * np.log(a) + theta[3] * a
    m = ErnestLearner()
    m.learn_arrays(a, ld, f + rng.normal(0, 1.0, len(a)), 1.0)
    assert np.allclose(m.theta, theta, rtol=0.15, atol=0.3)
    g = np.linspace(1, 64, 100)
    lcb, _, ucb = m.bounds(g, 5.0)
    truth = theta[0] + theta[1] * 5 / g + theta[2] * np.log(g) + theta[3] * g
    assert np.all((truth >= lcb) & (truth <= ucb)) and not m.misspecified
    d = m.demand(30.0, 5.0, "upper")
    assert np.isfinite(d) and m.bounds(np.array([d]), 5.0)[2][0] <= 30.0 + 1e-6


def test_ernest_unidentified_is_wide_and_small_alloc_is_refused() -> None:
    m = ErnestLearner()
    m.learn_arrays(np.array([4.0, 4.0]), 1.0, np.array([10.0, 11.0]), 1.0)
    lcb, _, ucb = m.bounds(np.array([4.0, 8.0]), 1.0)
    assert np.all(lcb == 0) and np.all(np.isinf(ucb))
    with pytest.raises(ValueError, match="min_alloc"):
        m.learn_arrays(np.array([0.0]), 1.0, np.array([1.0]), 1.0)
    assert m.n_observations == 2


def test_registry_builds_each_learner_with_options() -> None:
    assert isinstance(make_learner("gp_ucb", dim=19, log_value=True), GPUCBLearner)
    assert make_learner("ernest", delta=0.01).delta == 0.01
    with pytest.raises(ValueError):
        make_learner("gp_ucb", max_points=1)


@pytest.mark.parametrize("opts", [{"log_value": True}, {"use_load": True}])
def test_gp_scalar_fast_path_equals_the_general_path(opts: dict[str, bool]) -> None:
    """One window at a time as scalars (the fast path) or as Observations (the general
    path): the same observations in the same order give the same model."""
    from cluster_mgr.model import Observation

    rng = np.random.default_rng(4)
    a = rng.uniform(2, 20, 150)
    ld = rng.uniform(0.5, 1.0, 150)
    y = 10 + 200 / a + rng.normal(0, 1.0, 150)
    fast, slow = GPUCBLearner(**opts), GPUCBLearner(**opts)
    for i in range(150):
        fast.learn_arrays(float(a[i]), float(ld[i]), float(y[i]), 1.0)
        slow.learn_many([Observation("j", float(i), (float(a[i]),), float(ld[i]), float(y[i]), 1.0)])
    g = np.linspace(2, 20, 30)
    assert fast.n_observations == slow.n_observations == 150
    for u, v in zip(fast.bounds(g, 0.7), slow.bounds(g, 0.7), strict=True):
        assert np.allclose(u, v, rtol=1e-9)
    with pytest.raises(ValueError):
        fast.learn_arrays(3.0, 1.0, np.nan, 1.0)
    if opts.get("log_value"):
        with pytest.raises(ValueError, match="values > 0"):
            fast.learn_arrays(3.0, 1.0, -1.0, 1.0)
    assert fast.n_observations == 150


def test_ernest_scalar_fast_path_equals_the_general_path() -> None:
    from cluster_mgr.model import Observation

    rng = np.random.default_rng(5)
    a = rng.uniform(1, 64, 200)
    ld = rng.uniform(1, 10, 200)
    y = 3 + 200 * ld / a + 0.5 * np.log(a) + 0.05 * a + rng.normal(0, 1.0, 200)
    fast, slow = ErnestLearner(), ErnestLearner()
    for i in range(200):
        fast.learn_arrays(float(a[i]), float(ld[i]), float(y[i]), 1.0)
        slow.learn_many([Observation("j", float(i), (float(a[i]),), float(ld[i]), float(y[i]), 1.0)])
        if i == 100:
            fast.learn_arrays(a[:3], ld[:3], y[:3], 1.0)  # a batch in between keeps the order
            slow.learn_arrays(a[:3], ld[:3], y[:3], 1.0)
    g = np.linspace(2, 60, 20)
    assert fast.n_observations == slow.n_observations == 203
    for u, v in zip(fast.bounds(g, 5.0), slow.bounds(g, 5.0), strict=True):
        assert np.allclose(u, v, rtol=1e-7)
    with pytest.raises(ValueError, match="min_alloc"):
        fast.learn_arrays(0.0, 1.0, 1.0, 1.0)
    assert fast.n_observations == 203
