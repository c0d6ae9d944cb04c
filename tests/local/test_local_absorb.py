"""SlackController absorbs an upstream (network) delay even when its own time looks fine.

SurgeGuard's rule for an upstream delay: the services downstream of it speed up to absorb
it. Our tightened execution-time target is floored at what a service can do at top speed,
so a service whose own P99 is already under that floor sees no violation of its own; while
its time-from-start is late and the node's end-to-end P99 is over the gate it must still
take one step a window: frequency first, then (at the top) cores within the node budget.
Hand-made signals (helpers_local.signals), one node of the hotel graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_local import signals

from cluster_mgr.local.controller import NodeControlLoop, SlackController
from cluster_mgr.local.knobs import Knobs, NodeBudget
from cluster_mgr.local.planner import RoundPlan
from cluster_mgr.local.profile import ServiceProfile, cores_gain_cap
from cluster_mgr.local.signals import NodeSignals
from cluster_mgr.sim.fastwin import hotel_search_graph

BASE = 6000.0
SLO = 20.0


def _case(profile: ServiceProfile, plan: RoundPlan, p99: float) -> tuple[int, NodeSignals]:
    """One node's signals: a service downstream of others is 5 ms past its time-from-start
    target, no service upstream of it is over its own target (a network delay), and every own
    time is under half the floor of its tightened target (no own violation anywhere)."""
    rates = hotel_search_graph().service_rates(BASE)[None, :]
    fmax = plan.budget.freq_max[:, None]
    floor = 1.1 * np.log(100.0) * profile.service_ms / fmax**profile.freq_exponent
    exec_p99 = np.minimum(0.5 * floor, 0.5 * plan.exec_target_ms)
    s = int(np.nonzero(profile.ancestors.any(axis=1))[0][-1])  # ancestors[s, j]: j is upstream of s
    up = np.array(profile.upstream_ms, dtype=float)[None, :].copy()
    up[0, s] = plan.upstream_target_ms[0, s] + 5.0
    return s, signals(exec_p99, upstream=up, arrival=rates, p99=p99, slo=SLO)


def _ctrl(profile: ServiceProfile, plan: RoundPlan, knobs: Knobs) -> SlackController:
    ctrl = SlackController(profile)
    ctrl.reset(plan, knobs)
    return ctrl


def test_late_with_e2e_over_gate_takes_a_frequency_step_under_the_floor(profile, plan) -> None:  # noqa: ANN001
    s, sig = _case(profile, plan, p99=1.2 * SLO)
    k = Knobs.initial(plan.cores)
    ctrl = _ctrl(profile, plan, k)
    # the floored target shows no violation of the service's own: sizing alone would not act
    assert (ctrl.targets(sig)[0] >= sig.exec_p99_ms[0]).all()
    new = ctrl.decide(sig, k, 0.1)
    assert new.frequency[0, s] > k.frequency[0, s]  # frequency first ...
    assert new.frequency[0, s] <= plan.budget.freq_max[0] + 1e-9
    assert new.quota[0, s] == k.quota[0, s]  # ... cores stay while the frequency can rise
    others = np.arange(len(profile.services)) != s
    assert np.array_equal(new.frequency[0, others], k.frequency[0, others])
    assert np.array_equal(new.quota[0, others], k.quota[0, others])


def test_at_top_frequency_it_takes_a_core_within_the_node_budget(profile, plan) -> None:  # noqa: ANN001
    s, sig = _case(profile, plan, p99=1.2 * SLO)
    fmax = float(plan.budget.freq_max[0])
    # the late service at the top already, on a quota where one more core still pays (> 2%)
    busy = sig.arrival_rps[0, s] * profile.service_ms[s] / 1000.0 / fmax ** profile.freq_exponent[s]
    k0 = Knobs.initial(plan.cores)
    q = k0.quota.copy()
    q[0, s] = np.ceil(1.2 * busy * 10.0) / 10.0
    f = k0.frequency.copy()
    f[0, s] = fmax
    k = k0.with_(quota=q, frequency=f)
    cap = cores_gain_cap(
        profile, sig.arrival_rps, np.full_like(q, fmax), plan.budget.cores[:, None]
    )
    assert cap[0, s] > q[0, s] + 0.1  # a core here still cuts own time by more than 2%
    room = NodeBudget(np.array([q.sum() + 10.0]), plan.budget.freq_min, plan.budget.freq_max,
                      plan.budget.pim_cores)  # fmt: skip
    loop = NodeControlLoop(_ctrl(profile, plan, k), k, profile.services)
    loop.step(sig, room, 0.1)
    assert loop.knobs.quota[0, s] > q[0, s]  # a core step
    assert loop.knobs.quota[0, s] <= q[0, s] + 1.0 + 1e-9  # one core at most
    assert loop.knobs.frequency[0, s] == pytest.approx(fmax)
    assert loop.knobs.quota.sum() <= room.cores[0] + 1e-9
    # with the node budget spent, the step is clipped to it: nothing past the budget
    full = NodeBudget(np.array([q.sum()]), plan.budget.freq_min, plan.budget.freq_max,
                      plan.budget.pim_cores)  # fmt: skip
    loop = NodeControlLoop(_ctrl(profile, plan, k), k, profile.services)
    loop.step(sig, full, 0.1)
    assert loop.knobs.quota.sum() <= full.cores[0] + 1e-9
    assert loop.knobs.quota[0, s] == pytest.approx(q[0, s])


def test_no_step_when_end_to_end_is_within_the_gate(profile, plan) -> None:  # noqa: ANN001
    for p99 in (0.85 * SLO, 0.5 * SLO):  # late, but end-to-end under the 0.9 x SLO gate
        s, sig = _case(profile, plan, p99=p99)
        k = Knobs.initial(plan.cores)
        f = k.frequency.copy()
        f[0, s] = 1.1  # not at the top: a step would be possible
        k = k.with_(frequency=f)
        new = _ctrl(profile, plan, k).decide(sig, k, 0.1)
        assert (new.frequency <= k.frequency + 1e-9).all(), p99
        assert (new.quota <= k.quota + 1e-9).all(), p99
