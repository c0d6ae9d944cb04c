"""The metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cluster_mgr import metrics_calc as mc

NAN = np.nan


def test_welfare() -> None:
    u = np.array([[1.0, 0.5, NAN], [0.2, 0.8, 0.5]])
    w = np.array([1.0, 3.0, 1.0])
    np.testing.assert_allclose(mc.utilitarian(u, w), [(1 + 1.5) / 4, (0.2 + 2.4 + 0.5) / 5])
    np.testing.assert_allclose(mc.egalitarian(u), [0.5, 0.2])
    np.testing.assert_allclose(
        mc.nash(u, w), [0.5**0.75, np.exp((np.log(0.2) + 3 * np.log(0.8) + np.log(0.5)) / 5)]
    )
    assert mc.nash(np.array([[0.0, 1.0]]), np.ones(2))[0] == 0.0
    assert np.isnan(mc.utilitarian(np.array([[NAN, NAN]]), np.ones(2))[0])


def test_fairness_violation_sums_shortfalls_below_the_entitlement() -> None:
    fair = np.array([[0.6, 0.5, NAN]])
    held = np.array([[0.4, 0.9, 0.1]])
    assert mc.fairness_violation(fair, held)[0] == pytest.approx(0.2)


def test_slo_violations() -> None:
    p99 = np.array([[100.0], [150.0], [300.0], [NAN], [90.0]])
    mag, dur, rate = mc.slo_violations(p99, np.array([100.0]), 1.0)
    assert mag[0] == pytest.approx(0.5 + 2.0)
    assert dur[0] == 2.0
    assert rate[0] == pytest.approx(2 / 4)


def test_recovery_time_spans_windows_without_traffic() -> None:
    p99 = np.array([50, 150, 160, NAN, 120, 80, 200, 210.0])
    assert mc.recovery_times(p99, 100.0, 1.0) == [
        4.0,
        2.0,
    ]  # the last episode is still open at the end


def test_reaction_time_counts_windows_to_the_first_raise() -> None:
    over = np.array([0, 1, 1, 1, 0, 0], dtype=bool)
    raised = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    assert mc.reaction_times(over, raised, 1.0) == [2.0]


def test_reversals_and_changes() -> None:
    assert (
        mc.reversals(np.array([1, 2, 1, 1, 1, 2.0])) == 1
    )  # up, down (within 3), later up after 3 rounds
    assert mc.reversals(np.array([1, 2, 3, 2, 3.0])) == 2
    assert mc.reversals(np.array([5, 5.02, 5.0])) == 0  # below the CPU quantum
    assert mc.allocation_changes(np.array([[1, 1], [2, 1], [2, 3.0]])) == 2


def test_effective_machine_utilization() -> None:
    load = np.array([[50, 25], [90, 95], [80, 60.0]])
    max_load = np.array([100.0, 100.0])
    ok = np.array([True, False, True])
    # 10% steps, rounded down: window 0 -> 0.5 + 0.2; window 2 -> 0.8 + 0.6; window 1 violated
    assert mc.effective_machine_utilization(load, max_load, ok) == pytest.approx(1.4)
    assert mc.effective_machine_utilization(load, max_load, np.zeros(3, bool)) is None


def test_ratio_and_best() -> None:
    assert mc.ratio(2.0, 4.0) == 0.5 and mc.ratio(1.0, 0.0) is None and mc.ratio(None, 1.0) is None
    assert mc.best_of([0.2, None, 0.5], "utilitarian_welfare") == 0.5
    assert mc.best_of([120.0, 80.0], "p99_ms") == 80.0
    assert set(mc.HIGHER_IS_BETTER) == set(mc.METRIC_KEYS)
