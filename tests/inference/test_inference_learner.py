import numpy as np
import pytest

from learners.knob_profile import (
    MB,
    KnobLatencyModel,
    KnobPrior,
    KnobProfileLearner,
    erlang_c,
    workers_for,
)


def _priors():
    rng = np.random.default_rng(0)
    return [
        KnobPrior("slow", tuple(10 * np.exp(rng.normal(0, 0.1, 30))), 8_000_000, 500_000, 780, 800),
        KnobPrior("fast", tuple(2 * np.exp(rng.normal(0, 0.1, 30))), 1_000_000, 200_000, 760, 800),
    ]


def test_erlang_c_known_values():
    assert erlang_c(np.array([1.0]), np.array([0.5]))[0] == pytest.approx(0.5)  # M/M/1: rho
    assert erlang_c(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(1 / 3)
    assert erlang_c(np.array([2.0]), np.array([2.5]))[0] == 1.0


def test_latency_bounds_ordered_and_monotone():
    lr = KnobProfileLearner(_priors())
    cpus = np.array([1.0, 2.0, 3.0, 4.0])
    g = lr.grid(cpus, load=50.0)
    assert np.all(g.latency_hi >= g.latency_mean)
    slow = g.latency_hi[0]
    assert np.all(np.diff(slow[np.isfinite(slow)]) <= 1e-9)  # more whole cores, lower P99
    # 200 req/s x ~10 ms = 2 cores of work: one core saturates, so no finite bound
    assert not np.isfinite(lr.grid(np.array([1.0]), load=200.0).latency_hi[0, 0])
    assert np.all(g.latency_hi[1] < g.latency_hi[0])
    hi_load = lr.grid(cpus, load=150.0)
    assert np.all(hi_load.latency_hi[1] >= g.latency_hi[1])


def test_memory_deterministic_and_accuracy_interval():
    lr = KnobProfileLearner(_priors())
    g = lr.grid(np.array([1.0, 2.5]), 10.0)
    n, _ = workers_for(np.array([1.0, 2.5]))
    np.testing.assert_allclose(g.memory_mb[0], (8_000_000 + n * 500_000) / MB)
    assert g.accuracy[0] == pytest.approx(780 / 800)
    assert g.accuracy_lo[0] < g.accuracy[0] < g.accuracy_hi[0]
    width = g.accuracy_hi[0] - g.accuracy_lo[0]
    lr.learn_window("slow", 2.0, 10.0, correct=3900, labelled=4000)
    g2 = lr.grid(np.array([1.0]), 10.0)
    assert g2.accuracy_hi[0] - g2.accuracy_lo[0] < width


def test_online_feedback_moves_latency_estimate():
    lr = KnobProfileLearner(_priors())
    before = lr.estimate("fast", 1.0, 100.0)["latency_p99_hi_ms"]
    for _ in range(10):  # the node got twice as slow: execution times and P99 show it
        lr.learn_window("fast", 1.0, 100.0, p99_ms=3 * before, service_ms=[4.0] * 8)
    after = lr.estimate("fast", 1.0, 100.0)
    assert after["latency_p99_hi_ms"] > 1.5 * before
    with pytest.raises(ValueError):
        lr.learn_window("fast", 0.0, 1.0)


def test_knob_latency_model_is_a_learner():
    lr = KnobProfileLearner(_priors())
    m = KnobLatencyModel(lr, "slow")
    lo, mean, hi = m.bounds(np.array([1.0, 2.0, 4.0]), 20.0)
    assert np.all(lo <= mean) and np.all(mean <= hi)
    need = m.demand(30.0, load=20.0, side="upper", hi=16.0)
    assert 0 < need <= 16.0
    assert m.bounds(np.array([need]), 20.0)[2][0] <= 30.0 + 1e-6


def test_heavy_tail_seen_in_samples_is_not_underestimated():
    # one request in twelve hit interference: the P99 of service is that outlier
    prior = KnobPrior("k", (1.0,) * 11 + (30.0,), 1_000, 100, 9, 10)
    lr = KnobProfileLearner([prior])
    est = lr.estimate("k", 1.0, 1.0)
    assert est["latency_p99_ms"] > 20.0  # a lognormal fit alone says about 13 ms
    assert est["latency_p99_hi_ms"] >= 30.0
