"""Ground-truth models against closed forms, and the sampling that turns them into telemetry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster_mgr.model import ModelError
from cluster_mgr.sim.sampling import sample_window
from cluster_mgr.sim.truth import EDGES, LatencyLaw
from cluster_mgr.workloads import (
    CurveParams,
    QueueParams,
    build_graph,
    curve_latency_rate,
    erlang_b,
    erlang_c,
    mmc,
)


def test_erlang_against_closed_forms() -> None:
    # c = 1: B = a / (1 + a), C = rho; c = 2, a = 1: B = 1/5, C = 1/3.
    assert erlang_b(np.array([1.0]), np.array([0.5]))[0] == pytest.approx(1 / 3)
    assert erlang_c(np.array([1.0]), np.array([0.7]))[0] == pytest.approx(0.7)
    assert erlang_b(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(0.2)
    assert erlang_c(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(1 / 3)
    # hundreds of servers neither overflow nor underflow
    c = erlang_c(np.array([400.0]), np.array([380.0]))[0]
    assert 0.0 < c < 1.0


def test_erlang_c_is_continuous_and_falls_with_cores() -> None:
    c = np.linspace(2.0, 6.0, 81)
    p = erlang_c(c, np.full_like(c, 1.8))
    assert np.all(np.diff(p) < 0)
    assert np.max(np.abs(np.diff(p))) < 0.05  # no jumps at integers


def test_mm1_sojourn_is_exponential() -> None:
    # M/M/1: sojourn ~ Exp(mu - lambda). mu = 1/ms (service 1 ms), lambda = 0.6/ms (600 req/s).
    q = mmc(np.array([600.0]), np.array([1.0]), np.array([1.0]))
    t = np.array([[0.5, 1.0, 5.0]])
    np.testing.assert_allclose(q.sf(t)[0], np.exp(-0.4 * t[0]), rtol=1e-6)
    assert q.mean()[0] == pytest.approx(1 / 0.4)
    assert q.var()[0] == pytest.approx(1 / 0.4**2)


def test_mmc_mean_matches_the_textbook_formula() -> None:
    lam, s, c = 3000.0, 1.0, 4.0  # rho = 0.75
    q = mmc(np.array([lam]), np.array([s]), np.array([c]))
    a = lam / 1000 * s
    wq = erlang_c(np.array([c]), np.array([a]))[0] / (c / s - lam / 1000)
    assert q.mean()[0] == pytest.approx(s + wq)


def test_overload_times_out_the_excess_and_frequency_speeds_service() -> None:
    q = mmc(np.array([3000.0]), np.array([1.0]), np.array([2.0]))
    assert q.served[0] == pytest.approx(0.98 * 2000 / 3000)
    fast = mmc(np.array([1000.0]), np.array([1.0]), np.array([2.0]), frequency=2.0)
    slow = mmc(np.array([1000.0]), np.array([1.0]), np.array([2.0]), frequency=1.0)
    assert fast.mean()[0] < slow.mean()[0]


def test_pim_cores_and_dpu_offload_add_capacity() -> None:
    p = QueueParams(*(np.array([v]) for v in (1.0, 1.0, 1.0, 4.0, 0.5, 2.0, 0.5, 0.2)))
    base = p.state(np.array([2.0]), np.array([1800.0]))
    with_pim = p.state(np.array([2.0]), np.array([1800.0]), pim=np.array([4.0]))
    offloaded = p.state(np.array([2.0]), np.array([1800.0]), mesh_rps=np.array([1800.0]))
    # sidecar costs 1800 * 0.5 ms = 0.9 cores and 2 ms; the DPU proxy 0.2 ms and no host CPU
    assert with_pim.mean()[0] < base.mean()[0]
    assert offloaded.mean()[0] < base.mean()[0]
    assert base.offset[0] == pytest.approx(2.0) and offloaded.offset[0] == pytest.approx(0.2)


def test_curves_match_cilantro_families() -> None:
    c = CurveParams.build([{"family": "tanh"}, {"family": "inverse", "coeff": 100.0},
                           {"family": "logistic", "coeff": 1.0, "bias": 2.0}, {"family": "linear", "coeff": 1.0}])  # fmt: skip
    r = c.reward(np.array([1.0, 1.0, 2.0, 0.5]), np.array([750.42, 100.0, 1.0, 1.0]))
    np.testing.assert_allclose(r, [math.tanh(1.0), 0.5, 0.5, 0.5])
    with pytest.raises(ModelError):
        CurveParams.build([{"family": "cosine"}])


def test_curve_latency_law_puts_reward_at_the_target() -> None:
    rate = curve_latency_rate(np.array([0.9, 0.5]), np.array([100.0, 20.0]))
    np.testing.assert_allclose(1 - np.exp(-rate * np.array([100.0, 20.0])), [0.9, 0.5])


def _chain():
    return build_graph(
        [
            {"name": "a", "service_ms": 1.0},
            {"name": "b", "service_ms": 2.0},
            {"name": "c", "service_ms": 1.0},
        ],
        [{"from": "a", "to": "b"}, {"from": "b", "to": "c", "calls": 0.5, "requests": ["x"]}],
        [{"name": "x", "weight": 3, "entry": "a"}, {"name": "y", "weight": 1, "entry": "a"}],
    )


def test_graph_visits_and_end_to_end_moments() -> None:
    g = _chain()
    np.testing.assert_allclose(g.mix, [0.75, 0.25])
    np.testing.assert_allclose(g.visits, [[1, 1, 0.5], [1, 1, 0]])
    np.testing.assert_allclose(g.service_rates(100.0), [100, 100, 37.5])
    cpu = np.array([4.0, 4.0, 4.0])
    mean, var, served, q = g.e2e_moments(cpu, 100.0)
    m = q.mean()
    # type x: a + b + Bernoulli(0.5) * c ; type y: a + b
    assert mean[0] == pytest.approx(m[0] + m[1] + 0.5 * m[2])
    assert mean[1] == pytest.approx(m[0] + m[1])
    v = q.var()
    assert var[0] == pytest.approx(v[0] + v[1] + 0.5 * v[2] + 0.25 * m[2] ** 2)
    assert np.all(served == 1.0)
    # more cores on the bottleneck never hurt
    slower = g.e2e_moments(np.array([4.0, 0.25, 4.0]), 100.0)[0]
    assert np.all(slower > mean)


def test_graph_cycle_is_refused() -> None:
    with pytest.raises(ModelError, match="cycle"):
        build_graph([{"name": "a", "service_ms": 1}, {"name": "b", "service_ms": 1}],
                    [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}], [{"name": "x", "weight": 1, "entry": "a"}])  # fmt: skip


def _law(p_target: float, served: float = 1.0) -> LatencyLaw:
    rate = curve_latency_rate(np.array([p_target]), np.array([50.0]))
    return LatencyLaw(
        cdf_edges=1 - np.exp(-rate[:, None] * EDGES[None, :]),
        cdf_target=1 - np.exp(-rate * 50.0),
        cdf_timeout=1 - np.exp(-rate * 500.0),
        served=np.array([served]),
        mean_ms=1 / rate,
        busy_cores=np.zeros(1),
    )


def test_sampling_is_unbiased_and_consistent() -> None:
    rng = np.random.default_rng(0)
    law = _law(0.8, served=0.9)
    n = 200_000.0
    c = sample_window(law, np.array([n]), np.array([50.0]), np.array([500.0]), rng)
    assert c.offered[0] == c.completed[0] + c.timed_out[0] == c.hist.sum()
    assert c.within[0] / c.offered[0] == pytest.approx(0.9 * 0.8, abs=0.005)
    assert c.offered[0] == pytest.approx(n, rel=0.01)
    # timed-out requests sit at the timeout, so they raise P99
    assert c.percentile(99.0)[0] == pytest.approx(500.0, rel=0.2)


def test_sampling_is_deterministic_for_a_seed() -> None:
    law = _law(0.95)
    args = (law, np.array([1000.0]), np.array([50.0]), np.array([500.0]))
    a = sample_window(*args, np.random.default_rng(7))
    b = sample_window(*args, np.random.default_rng(7))
    assert np.array_equal(a.hist, b.hist) and a.within[0] == b.within[0]
