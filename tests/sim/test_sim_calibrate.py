"""The saturation fit of sim.calibrate: it recovers a planted bottleneck and refuses a false one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cluster_mgr.sim.calibrate import fit_saturation, hypothesis, within_2x
from cluster_mgr.workloads import RHO_MAX

SERVICES = ("a", "b", "c")
RPS = np.array([1000.0, 500.0, 2000.0])


def _windows(bottleneck_cpu: float | None, n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(2.0, 12.0, size=(n, len(SERVICES)))
    bad = np.zeros(n, bool) if bottleneck_cpu is None else x[:, 0] < bottleneck_cpu
    p99 = np.where(bad, rng.uniform(2000, 4000, n), rng.uniform(100, 125, n))
    f = pd.DataFrame(x, columns=list(SERVICES))
    f["p99"] = p99
    f["window_rps"] = 3000.0
    f["run"] = np.where(np.arange(n) < n // 2, "r1", "r2")
    return f


def test_within_2x() -> None:
    assert within_2x(np.array([100.0, 100.0, 100.0]), np.array([60.0, 199.0, 201.0])).tolist() == [
        True,
        True,
        False,
    ]


def test_fit_recovers_a_planted_bottleneck() -> None:
    w = _windows(bottleneck_cpu=6.0)
    f = fit_saturation(w, SERVICES, RPS)
    assert set(f.demand_ms) == {"a"}
    assert f.cpu_threshold["a"] == pytest.approx(6.0, abs=0.1)
    assert f.demand_ms["a"] == pytest.approx(6.0 * RHO_MAX, abs=0.1)  # 1,000 req/s
    assert f.agreement >= 0.99  # candidates are the held CPUs to 0.01
    assert set(f.table.run) == {"r1", "r2", "all"}


def test_fit_adds_no_bottleneck_the_data_does_not_show() -> None:
    w = _windows(bottleneck_cpu=None)
    f = fit_saturation(w, SERVICES, RPS)
    assert f.demand_ms == {}
    assert f.agreement == pytest.approx(1.0)
    # a false hypothesis costs agreement
    h = hypothesis(w, SERVICES, RPS, {"b": 15.0})  # saturates b below ~7.7 CPUs
    assert h.agreement < 0.6
