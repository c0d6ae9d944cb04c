"""Device physics: remote-access penalty, settle times, migration cost, plan rejection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pim_agent.device import Assignment, PimDevice, PlanError, app_p99_ms, service_times_ms
from pim_agent.presets import PIMCLOUD
from pim_agent.workloads import IMGDNN, MASSTREE


def test_remote_pages_slow_pim_cores_and_r_i_holds_when_local() -> None:
    cpu_s, pim = service_times_ms(PIMCLOUD, MASSTREE, np.array([1.0, 0.0]))
    assert pim[0] == pytest.approx(MASSTREE.r_pim * cpu_s)  # R_i is defined with local pages
    assert pim[1] > pim[0] * 1.3  # all-remote pays 86 ns instead of 21 ns per access
    _, pim_dnn = service_times_ms(PIMCLOUD, IMGDNN, np.array([1.0, 0.0]))
    # A compute-bound app loses less from remote pages than a memory-bound one.
    assert pim_dnn[1] / pim_dnn[0] < pim[1] / pim[0]


def test_core_changes_settle_over_intervals() -> None:
    d = PimDevice(seed=1)
    d.register(MASSTREE, 5000)
    d.apply({"masstree": Assignment(0, (6, 0), (1.0, 0.0))}, 1)
    seen = [d.step().app("masstree").pim_cores[0] for _ in range(4)]
    assert seen == pytest.approx([2.0, 4.0, 6.0, 6.0])  # 3 intervals for PIM cores
    d.apply({"masstree": Assignment(0, (2, 0), (1.0, 0.0))}, 2)
    assert d.step().app("masstree").pim_cores[0] == pytest.approx(2.0)  # removal is immediate


def test_migration_costs_one_us_per_page_and_locality_follows() -> None:
    d = PimDevice(seed=2)
    d.register(MASSTREE, 10000)
    d.apply({"masstree": Assignment(0, (8, 0), (1.0, 0.0))}, 1)
    to_move = MASSTREE.hot_pages / 2  # starts interleaved: half already on stack 0
    per_interval = PIMCLOUD.interval_s * 1e6 / PIMCLOUD.page_migrate_us
    expected = math.ceil(to_move / per_interval)
    assert 3 <= expected <= 8
    locality, steps = [], 0
    while True:
        w = d.step().app("masstree")
        locality.append(w.locality[0])
        steps += 1
        if w.migration_progress >= 1.0:
            break
    assert steps == expected
    assert locality == sorted(locality) and locality[-1] == pytest.approx(1.0)


def test_settled_latency_matches_the_queueing_model_and_remote_hurts() -> None:
    local = Assignment(0, (8, 0), (1.0, 0.0))
    remote = Assignment(0, (8, 0), (0.0, 1.0))
    assert app_p99_ms(PIMCLOUD, MASSTREE, remote, 30000) > app_p99_ms(
        PIMCLOUD, MASSTREE, local, 30000
    )
    d = PimDevice(seed=3)
    d.register(MASSTREE, 30000)
    d.apply({"masstree": local}, 1)
    for _ in range(12):
        d.step()
    hist = np.zeros(96, dtype=np.int64)
    for _ in range(20):
        hist += np.asarray(d.step().app("masstree").latency_hist)
    from cluster_mgr.model import histogram_percentile

    assert histogram_percentile(hist, 99.0) == pytest.approx(
        app_p99_ms(PIMCLOUD, MASSTREE, local, 30000), rel=0.15
    )


def test_rejected_plan_changes_nothing() -> None:
    d = PimDevice(seed=4)
    d.register(MASSTREE, 1000)
    d.register(IMGDNN, 100)
    d.apply({"masstree": Assignment(2, (4, 0), (1.0, 0.0))}, 1)
    before = (d.version, d.assignment("masstree"), d.assignment("imgdnn"))
    bad = [
        ({"imgdnn": Assignment(3, (0, 0), (0.5, 0.5))}, 2, "big cores"),
        ({"imgdnn": Assignment(0, (5, 0), (0.5, 0.5))}, 2, "PIM cores"),
        ({"nope": Assignment(0, (0, 0), (0.5, 0.5))}, 2, "unknown"),
        ({"imgdnn": Assignment(0, (0, 1), (0.7, 0.7))}, 2, "sum to 1"),
        ({"imgdnn": Assignment(0, (0, 1), (0.5, 0.5))}, 1, "stale"),
    ]
    for plan, version, why in bad:
        with pytest.raises(PlanError, match=why):
            d.apply(plan, version)
        assert (d.version, d.assignment("masstree"), d.assignment("imgdnn")) == before


def test_overload_builds_a_backlog_that_drains() -> None:
    d = PimDevice(seed=5)
    d.register(MASSTREE, 40000)
    d.apply({"masstree": Assignment(1, (0, 0), (0.5, 0.5))}, 1)
    for _ in range(5):
        w = d.step().app("masstree")
    assert w.backlog > 0 and w.p99_ms > 100
    d.apply({"masstree": Assignment(4, (8, 8), (0.5, 0.5), (0, 1))}, 2)
    for _ in range(30):
        w = d.step().app("masstree")
    assert w.backlog == 0 and w.p99_ms < MASSTREE.slo_p99_ms
