"""Manager-side conversions: Allocation + PagePlacement -> agent plan; counters -> telemetry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster_mgr.model import (
    Allocation,
    NodeShare,
    PagePlacement,
    PlacementPlan,
    ResourceVector,
    histogram_percentile,
)
from pim_agent.device import PimDevice
from pim_agent.placement import PlacementError, plan_for_node, spread_cores, telemetry_windows
from pim_agent.presets import PIMCLOUD
from pim_agent.workloads import IMGDNN, MASSTREE


def test_cores_follow_pages_and_respect_stack_capacity() -> None:
    assert spread_cores(6, (0.5, 0.5), 8) == (3, 3)
    assert spread_cores(5, (0.9, 0.1), 8) == (5, 0)
    assert spread_cores(12, (1.0, 0.0), 8) == (8, 4)  # overflow spills to the next stack
    with pytest.raises(PlacementError):
        spread_cores(17, (0.5, 0.5), 8)


def test_plan_for_node_is_accepted_by_the_device() -> None:
    alloc = Allocation({"masstree": ResourceVector(pim_cores=7), "imgdnn": ResourceVector(pim_cores=3)})
    plan = PlacementPlan(
        epoch=1,
        round=1,
        shares=(NodeShare("n1", "imgdnn", 1, ResourceVector(cpu=4, pim_cores=2)),),
        pages=(
            PagePlacement("n1", "masstree", (0.0, 1.0)),
            PagePlacement("n1", "imgdnn", (0.5, 0.5)),
            PagePlacement("n2", "other", (1.0, 0.0)),
        ),
    )
    out = plan_for_node(alloc, plan, "n1", PIMCLOUD, big_cores={"imgdnn": 4})
    assert set(out) == {"masstree", "imgdnn"}
    assert out["masstree"].pim == (0, 7) and out["masstree"].replicas == ()
    # The node's share (2) wins over the cluster-wide amount (3); it spans both stacks.
    assert out["imgdnn"].pim == (1, 1) and out["imgdnn"].replicas == (0, 1)
    assert out["imgdnn"].cpu == 4
    d = PimDevice(seed=0)
    d.register(MASSTREE, 1000)
    d.register(IMGDNN, 100)
    d.apply(out, 1)  # validated by the device: raises if wrong
    assert d.assignment("masstree").pages == (0.0, 1.0)


def test_plan_for_node_rejects_what_cannot_be_enforced() -> None:
    pages = (PagePlacement("n1", "a", (1.0, 0.0)), PagePlacement("n1", "b", (1.0, 0.0)))
    plan = PlacementPlan(1, 1, pages=pages)
    over = Allocation({"a": ResourceVector(pim_cores=8), "b": ResourceVector(pim_cores=9)})
    with pytest.raises(PlacementError):
        plan_for_node(over, plan, "n1", PIMCLOUD)
    frac = Allocation({"a": ResourceVector(pim_cores=1.5)})
    with pytest.raises(PlacementError, match="integral"):
        plan_for_node(frac, PlacementPlan(1, 1, pages=pages[:1]), "n1", PIMCLOUD)
    bad = PlacementPlan(1, 1, pages=(PagePlacement("n1", "a", (0.7, 0.7)),))
    with pytest.raises(PlacementError, match="sum"):
        plan_for_node(Allocation({"a": ResourceVector(pim_cores=1)}), bad, "n1", PIMCLOUD)


def test_counters_become_telemetry_windows_with_pim_extras() -> None:
    d = PimDevice(seed=4)
    d.register(MASSTREE, 20000)
    d.register(IMGDNN, 500)
    plan = PlacementPlan(
        1, 1, pages=(PagePlacement("n1", "masstree", (1.0, 0.0)),
                     PagePlacement("n1", "imgdnn", (0.0, 1.0)))
    )  # fmt: skip
    alloc = Allocation({"masstree": ResourceVector(pim_cores=8), "imgdnn": ResourceVector()})
    d.apply(plan_for_node(alloc, plan, "n1", PIMCLOUD, big_cores={"imgdnn": 4}), 1)
    for _ in range(10):
        w = d.step()
    tws = {t.job: t for t in telemetry_windows(w, "n1", 9, {"masstree": 1.0, "imgdnn": 7.0})}
    m = tws["masstree"]
    a = w.app("masstree")
    assert m.seq == 9 and m.end == pytest.approx(w.time) and m.duration == pytest.approx(0.1)
    assert m.completed == a.completed == sum(m.latency_hist) > 0
    assert m.latency_p99_ms == pytest.approx(histogram_percentile(np.asarray(a.latency_hist), 99))
    assert 0 < m.within_slo <= m.completed
    assert all(k.startswith("pim.") for k in m.extras)
    assert m.extras["pim.stack0.cores"] == pytest.approx(8.0)
    assert m.extras["pim.stack0.locality"] > m.extras["pim.stack1.locality"]
    assert m.extras["pim.stack0.utilization"] > 0 and m.extras["pim.cpu_cores"] == 0.0
    assert tws["imgdnn"].extras["pim.cpu_cores"] == pytest.approx(4.0)
    # A window with no completions has no latency statistics.
    d2 = PimDevice(seed=5)
    d2.register(MASSTREE, 0)
    t0 = telemetry_windows(d2.step(), "n1", 0)[0]
    assert t0.completed == 0 and math.isnan(t0.latency_p99_ms) and t0.within_slo == 0
