from __future__ import annotations

import numpy as np
from helpers_local import signals

from cluster_mgr.local.baselines import (
    AutothrottleController,
    CaladanController,
    PartiesController,
    SurgeGuardController,
)
from cluster_mgr.local.knobs import Knobs

TARGET = np.array([[10.0, 10.0, 10.0]])


def _plan(plan, s=3):  # noqa: ANN001, ANN202 - a RoundPlan cut to s services with round targets
    from dataclasses import replace

    return replace(plan, cores=plan.cores[:, :s], exec_target_ms=TARGET[:, :s],
                   upstream_target_ms=np.ones((1, s)))  # fmt: skip


def _profile(profile, s=3):  # noqa: ANN001, ANN202
    from dataclasses import replace

    return replace(profile, services=profile.services[:s], service_ms=profile.service_ms[:s],
                   cv=profile.cv[:s], freq_exponent=profile.freq_exponent[:s],
                   exec_p99_ms=profile.exec_p99_ms[:s], upstream_ms=profile.upstream_ms[:s])  # fmt: skip


def test_parties_upsizes_the_worst_service_when_slack_is_low(plan, profile) -> None:  # noqa: ANN001
    c = PartiesController(_profile(profile), seed=0)
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    c.kind[:] = 0  # cores first, to make the unit known
    out = c.decide(signals([9.0, 9.8, 5.0]), k, 0.0)  # slack 0.1, 0.02, 0.5
    assert out.quota.tolist() == [[2.0, 3.0, 2.0]]


def test_parties_downsizes_the_service_with_most_slack(plan, profile) -> None:  # noqa: ANN001
    c = PartiesController(_profile(profile), seed=0)
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    c.kind[:] = 0
    out = c.decide(signals([9.0, 9.0, 3.0]), k, 0.0)  # slacks 0.1, 0.1, 0.7
    assert out.quota.tolist() == [[2.0, 2.0, 1.0]]


def test_parties_reverts_an_upsize_without_gain_after_five_intervals(plan, profile) -> None:  # noqa: ANN001
    c = PartiesController(_profile(profile), seed=0)
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    c.kind[:] = 0
    k = c.decide(signals([9.0, 9.9, 5.0], window=0), k, 0.0)
    assert k.quota[0, 1] == 3.0
    for w in range(1, 5):  # still waiting for the effect: nothing changes
        k = c.decide(signals([9.0, 9.9, 5.0], window=w), k, w * 0.1)
        assert k.quota[0, 1] == 3.0
    k = c.decide(signals([9.0, 9.95, 5.0], window=5), k, 0.5)
    assert k.quota[0, 1] in (2.0, 3.0)  # reverted to 2, then (same window) upsized again by freq
    assert c.kind[0, 1] == 1  # the next kind (frequency) is tried next


def test_parties_locks_out_a_service_whose_downsize_hurt(plan, profile) -> None:  # noqa: ANN001
    c = PartiesController(_profile(profile), seed=0)
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    c.kind[:] = 0
    k = c.decide(signals([9.0, 9.0, 3.0], window=0), k, 0.0)
    assert k.quota[0, 2] == 1.0
    k = c.decide(signals([9.0, 9.0, 9.9], window=1), k, 0.1)
    assert k.quota[0, 2] == 2.0 and c.locked_until[0, 2] == 101


def test_surgeguard_scales_frequency_before_cores(plan, profile) -> None:  # noqa: ANN001
    c = SurgeGuardController(_profile(profile))
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    k1 = c.decide(signals([12.0, 5.0, 5.0], arrival=[[2000.0, 100.0, 100.0]]), k, 0.0)
    assert k1.frequency[0, 0] == 1.5 and k1.quota[0, 0] == 2.0
    k2 = c.decide(signals([12.0, 5.0, 5.0], arrival=[[2000.0, 100.0, 100.0]]), k1, 0.1)
    assert k2.quota[0, 0] == 3.0  # frequency at the top: now a core


def test_surgeguard_reacts_to_late_time_from_start(plan, profile) -> None:  # noqa: ANN001
    c = SurgeGuardController(_profile(profile))
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    out = c.decide(signals([5.0, 5.0, 5.0], upstream=[[0.0, 3.0, 0.0]],
                           arrival=[[2000.0] * 3]), k, 0.0)  # fmt: skip
    assert out.frequency[0, 1] == 1.5


def test_surgeguard_releases_cores_with_small_marginal_gain(plan, profile) -> None:  # noqa: ANN001
    c = SurgeGuardController(_profile(profile))
    k = Knobs.initial(np.array([[10.0, 10.0, 10.0]]))
    c.reset(_plan(plan), k)
    out = c.decide(signals([2.0, 2.0, 2.0], arrival=[[100.0, 100.0, 100.0]]), k, 0.0)
    assert (out.quota == 9.0).all()


def test_caladan_grants_a_core_on_congestion_and_takes_idle_ones(plan, profile) -> None:  # noqa: ANN001
    c = CaladanController(_profile(profile))
    p = _plan(plan)
    c.reset(p, Knobs.initial(p.cores))
    k = Knobs.initial(np.maximum(p.cores, 1.0) + 3.0)
    out = c.decide(signals([5.0] * 3, queue_delay=[[5.0, 0.0, 0.0]],
                           utilization=[[0.9, 0.1, 0.99]]), k, 0.0)  # fmt: skip
    assert out.quota[0, 0] == k.quota[0, 0] + 1.0
    assert out.quota[0, 1] == k.quota[0, 1] - 1.0
    assert out.quota[0, 2] == k.quota[0, 2]


def test_autothrottle_tracks_the_throttle_target(plan) -> None:  # noqa: ANN001
    c = AutothrottleController(seed=0, init_target=0.1)
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    out = c.decide(signals([5.0] * 3, throttled=[[0.5, 0.1, 0.0]],
                           utilization=[[0.9, 0.5, 0.2]]), k, 0.0)  # fmt: skip
    assert out.quota[0, 0] > 2.0 and out.quota[0, 1] == 2.0 and out.quota[0, 2] < 2.0


def test_autothrottle_tower_tightens_after_a_bad_minute(plan) -> None:  # noqa: ANN001
    c = AutothrottleController(seed=0, init_target=0.2, tower_s=1.0)
    k = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    c.reset(_plan(plan), k)
    for w in range(10):
        c.decide(signals([5.0] * 3, p99=30.0, slo=20.0, window=w), k, w * 0.1)
    c.decide(signals([5.0] * 3, p99=30.0, slo=20.0, window=10), k, 1.0)
    assert (c.target < 0.15).all()
