"""PIM policies' SLO behaviour, closed loop against the device model."""

from __future__ import annotations

import numpy as np
import pytest

from allocators.pim import POLICIES
from cluster_mgr.model import histogram_percentile
from pim_agent.client import InMemoryTransport, PimClient
from pim_agent.device import PimDevice
from pim_agent.loop import PimControlLoop
from pim_agent.workloads import IMGDNN, MASSTREE, STREAM


def run(
    policy: str, loads: dict[str, float], ticks: int = 80, extra=()
) -> tuple[PimControlLoop, dict]:
    dev = PimDevice(seed=11)
    profiles = {"masstree": MASSTREE, "imgdnn": IMGDNN}
    for p in extra:
        profiles[p.name] = p
    for n, p in profiles.items():
        dev.register(p, loads.get(n, 0.0))
    loop = PimControlLoop(PimClient(InMemoryTransport(dev)), POLICIES[policy](), profiles)
    hists = {n: [] for n in profiles}
    for _ in range(ticks):
        w = loop.tick()
        for n in profiles:
            hists[n].append(np.asarray(w.app(n).latency_hist))
    p99 = {n: histogram_percentile(np.sum(h[-30:], axis=0), 99.0) for n, h in hists.items()}
    return loop, p99


def test_learned_meets_both_slos_where_os_default_cannot() -> None:
    loads = {"masstree": 20000, "imgdnn": 1500}
    loop, p99 = run("learned", loads)
    assert p99["masstree"] <= MASSTREE.slo_p99_ms and p99["imgdnn"] <= IMGDNN.slo_p99_ms
    assert not loop.rejections
    # It learned that ImgDNN wants big cores and Masstree is fine on PIM cores.
    assert loop.current.apps["imgdnn"].cpu >= 3 and sum(loop.current.apps["masstree"].pim) >= 8
    _, p99_os = run("os-default", loads)
    assert p99_os["imgdnn"] > IMGDNN.slo_p99_ms


def test_learned_leaves_cores_to_best_effort_when_slos_allow() -> None:
    loop, p99 = run("learned", {"masstree": 5000, "imgdnn": 500}, extra=(STREAM,))
    assert p99["masstree"] <= MASSTREE.slo_p99_ms and p99["imgdnn"] <= IMGDNN.slo_p99_ms
    assert loop.current.apps["stream"].cores > 0


@pytest.mark.parametrize("policy", ["octopus-man", "pimcloud"])
def test_feedback_baselines_keep_plans_valid(policy: str) -> None:
    loop, _ = run(policy, {"masstree": 10000, "imgdnn": 800})
    assert not loop.rejections and loop.current is not None
