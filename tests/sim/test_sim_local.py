"""The sim backend with fast per-node local control: surges answered, determinism, budgets, keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from cluster_mgr.model import NodeShare, PlacementPlan, ResourceVector
from cluster_mgr.scenario import ScenarioError, load_scenario, parse_scenario
from cluster_mgr.scenario.schema import Scenario
from cluster_mgr.sim import RunResult, SimOptions, Simulation
from cluster_mgr.sim.fastlayer import FastLayer
from cluster_mgr.sim.fasttrace import Trace, score_event

# A three-service chain on one 16-CPU node; a 2.5x load step in [3, 6) s breaks a 25 ms P99 at
# the plan's fair shares, and a network surge later adds delay on one edge.
CHAIN = """
[scenario]
name = "local"
duration_s = {duration}
round_s = 30
warmup_s = 0
seed = 3
[cluster]
count = {nodes}
resources = {{ cpu = 16 }}
{control}
[[graphs]]
name = "chain"
slo = {{ target = 25, percentile = 99 }}
load = {{ shape = "step", rate = 1000, factor = 2.5, at_s = 3, until_s = 6 }}
services = [
  {{ name = "front", service_ms = 1.0, minimum = {{ cpu = 0.5 }} }},
  {{ name = "mid", service_ms = 1.5, minimum = {{ cpu = 0.5 }} }},
  {{ name = "db", service_ms = 2.0, minimum = {{ cpu = 0.5 }} }},
]
edges = [ {{ from = "front", to = "mid" }}, {{ from = "mid", to = "db" }} ]
[[surges]]
graph = "chain"
from = "mid"
to = "db"
start_s = 8
end_s = 10
extra_ms = 30.0
"""


def chain(local: str | None = "ours", duration: float = 11.0, nodes: int = 1) -> Scenario:
    control = "" if local is None else f'[control]\nlocal_controller = "{local}"'
    text = CHAIN.format(duration=duration, control=control, nodes=nodes)
    return parse_scenario(tomllib.loads(text), "chain.toml", Path("."))


def fast_run(sc: Scenario, **opts: object) -> tuple[RunResult, Trace]:
    sim = Simulation(sc, SimOptions(policy="fair_share", fast_trace=True, **opts))  # type: ignore[arg-type]
    res = sim.run()
    assert sim.fast is not None
    return res, sim.fast.traces()["chain"]


def test_ours_answers_a_load_surge_within_two_fast_windows() -> None:
    _, ours = fast_run(chain("ours"))
    _, alone = fast_run(chain(None))  # the plan alone at 100 ms (fast_trace, no controller)
    span = (0, 30, 75)  # the surge [3, 6) s plus its tail, in fast windows
    s_ours, s_alone = score_event(ours, *span), score_event(alone, *span)
    assert s_alone.duration_windows > 0 and s_ours.duration_windows > 0  # the surge does break it
    assert s_ours.reaction_windows is not None and s_ours.reaction_windows <= 2
    assert s_alone.reaction_windows is None  # nothing acts between rounds without a fast layer
    assert s_ours.magnitude_s < s_alone.magnitude_s
    assert s_ours.duration_windows < s_alone.duration_windows
    # The network surge on mid -> db shows in the fast P99 (it comes from the scenario).
    assert alone.p99_ms[81:99, 0].mean() > alone.p99_ms[62:78, 0].mean() + 20.0


def test_same_seed_same_result_with_local_control() -> None:
    sc = chain("parties", duration=8.0)
    (a, ta), (b, tb) = fast_run(sc), fast_run(sc)
    for k in ("p99_ms", "quota", "frequency", "enforced"):
        np.testing.assert_array_equal(getattr(ta, k), getattr(tb, k), err_msg=k)
    for k in ("p99_ms", "app_cpu", "offered", "within"):  # and the telemetry-window results
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert ta.changes == tb.changes and ta.changes > 0
    _, tc = fast_run(sc, seed=99)
    assert not np.array_equal(ta.p99_ms, tc.p99_ms)


@pytest.mark.parametrize("local", ["ours", "parties"])
def test_local_control_never_exceeds_the_node_budget(local: str) -> None:
    sc = chain(local, duration=12.0, nodes=2)
    fast = FastLayer(sc, local, seed=1)
    jobs = sc.graphs[0].jobs
    # A tight plan: 4 CPUs for the three services on node-0, less than the surge needs; a
    # second replica of db alone on node-1 (the other services have no quota there).
    shares = tuple(NodeShare("node-0", j, 1, ResourceVector(cpu=c))
                   for j, c in zip(jobs, (1.0, 1.4, 1.6), strict=True))  # fmt: skip
    shares += (NodeShare("node-1", jobs[2], 1, ResourceVector(cpu=1.0)),)
    fast.set_plan(PlacementPlan(epoch=1, round=0, shares=shares), {"node-0": True, "node-1": True})
    index = {j.name: k for k, j in enumerate(sc.jobs)}
    grp = fast.groups[0]
    assert grp.plan is not None
    budget = grp.plan.budget.cores
    grew = False
    for w in range(8):  # through the surge in [3, 6) s
        cpu, _, _ = fast.window(float(w), np.zeros(len(sc.jobs)), index)
        assert grp.knobs is not None
        assert (grp.knobs.quota.sum(axis=1) <= budget + 1e-9).all()
        assert (grp.knobs.quota[1, :2] == 0.0).all()  # no quota where a service has no replica
        assert cpu.sum() <= budget.sum() + 1e-9
        grew |= bool(grp.knobs.frequency.max() > 1.0 or grp.knobs.quota.sum() > 5.0 - 1e-9)
    assert grew  # it did try to scale up into the (binding) budget


def test_a_bad_local_controller_is_refused_with_the_key_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(CHAIN.format(duration=10, nodes=1,
                              control='[control]\nlocal_controller = "fastest"'))  # fmt: skip
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert "control.local_controller" in str(e.value) and "fastest" in str(e.value)
    p.write_text(CHAIN.format(duration=10, nodes=1, control='[control]\nlocal = "ours"'))
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert "control.local" in str(e.value)


def test_no_fast_layer_unless_asked() -> None:
    sc = chain(None, duration=4.0)
    assert sc.local_controller == "none"
    assert Simulation(sc, SimOptions(policy="fair_share")).fast is None
    assert Simulation(sc, SimOptions(policy="fair_share", local_controller="caladan")).fast


def test_the_surge_local_example_runs_its_controller() -> None:
    repo = Path(__file__).resolve().parents[2]
    sc = load_scenario(repo / "examples" / "surge_local.toml")
    assert sc.local_controller == "ours"
    sim = Simulation(sc, SimOptions(policy="fair_share", duration_s=3.0))
    res = sim.run()
    assert sim.fast is not None
    tr = sim.fast.traces()["social"]
    assert tr.p99_ms.shape == (30, 1) and tr.changes > 0  # 3 s: 30 fast windows, it acted
    # the services report the quota they held, no more than the plan gave the graph
    assert 0 < res.app_cpu[-1, -1] <= sc.capacity().cpu + 1e-9


def test_a_failed_node_takes_its_fast_knobs_with_it() -> None:
    text = CHAIN.format(duration=5.0, nodes=2, control='[control]\nlocal_controller = "ours"')
    text = text.replace("resources = { cpu = 16 }", 'resources = { cpu = 16 }\nevents = '
                        '[ { time_s = 2, node = "node-1", action = "fail" } ]')  # fmt: skip
    sc = parse_scenario(tomllib.loads(text), "fail.toml", Path("."))
    sim = Simulation(sc, SimOptions(policy="fair_share"))
    res = sim.run()
    assert sim.fast is not None
    grp = sim.fast.groups[0]
    assert grp.knobs is not None and grp.plan is not None
    assert grp.knobs.quota[1].sum() == 0.0 and grp.plan.budget.cores[1] == 0.0  # node-1 is gone
    assert (grp.knobs.quota.sum(axis=1) <= grp.plan.budget.cores + 1e-9).all()
    assert np.isfinite(sim.fast.traces()["chain"].p99_ms).all() and res.failures == 0
