"""Scenario loading: the examples load, and bad scenarios are refused with file, key path and reason."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cluster_mgr.scenario import ScenarioError, load_scenario
from cluster_mgr.scenario.loads import LoadSpec
from dpu_agent.device import preset

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [
    "cluster_sharing",
    "hotel_reservation",
    "hotel_reservation_40cpu",
    "surge",
    "surge_local",
    "pim_colocation",
    "mesh_mix",
    "ray_small_sim",
]

BASE = """
[scenario]
name = "t"
duration_s = 60
[cluster]
count = 2
resources = { cpu = 8 }
[[jobs]]
name = "a"
slo = { target = 50 }
load = { shape = "constant", rate = 100 }
workload = { model = "queue", service_ms = 5 }
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_load(name: str, shared_data: Path) -> None:
    sc = load_scenario(REPO / "examples" / f"{name}.toml")
    assert sc.jobs and sc.nodes
    assert sc.duration_s > sc.warmup_s >= 0


def test_cluster_sharing_uses_the_real_twitter_trace(shared_data: Path) -> None:
    sc = load_scenario(REPO / "examples" / "cluster_sharing.toml")
    assert len(sc.jobs) == 20
    real = np.loadtxt(shared_data / "cilantro" / "twitter_load_1476.txt")
    load = sc.jobs[0].load
    assert load is not None and load.trace is not None
    np.testing.assert_array_equal(load.trace, real)
    assert sc.capacity().cpu == 1000


def test_hotel_reservation_has_the_19_real_deployments(shared_data: Path) -> None:
    import ast

    import pandas as pd

    sc = load_scenario(REPO / "examples" / "hotel_reservation.toml")
    d = pd.read_csv(shared_data / "cilantro" / "hotelres_ucbopt_152cpu.csv", nrows=1)
    real = sorted(k.removeprefix("root--") for k in ast.literal_eval(d.allocs.iloc[0]))
    assert sorted(sc.graphs[0].params.services) == real
    assert sc.capacity().cpu == 152


@pytest.mark.parametrize(
    "edit, key, reason",
    [
        ("resources = { cpu = 8 }", "cluster.resources.cpu", "expected an amount >= 0"),
        ("service_ms = 5", "jobs[0].workload.service_ms", "expected a number"),
        ('model = "queue", service_ms = 5', "jobs[0].workload.family", "unknown curve"),
        ('shape = "constant"', "jobs[0].load.shape", "expected one of"),
        ('name = "a"', "jobs[0].nmae", "unknown key"),
    ],
)
def test_bad_values_name_file_key_and_reason(
    tmp_path: Path, edit: str, key: str, reason: str
) -> None:
    replacement = {
        "resources = { cpu = 8 }": "resources = { cpu = -8 }",
        "service_ms = 5": 'service_ms = "fast"',
        'model = "queue", service_ms = 5': 'model = "curve", family = "cosine"',
        'shape = "constant"': 'shape = "sawtooth"',
        'name = "a"': 'nmae = "a"',
    }[edit]
    p = write(tmp_path, BASE.replace(edit, replacement, 1))
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: {key}: "), msg
    assert reason in msg


def test_cyclic_graph_is_refused(tmp_path: Path) -> None:
    text = """
[scenario]
duration_s = 60
[cluster]
count = 1
resources = { cpu = 8 }
[[graphs]]
name = "g"
slo = { target = 50 }
load = { rate = 10 }
services = [ { name = "a", service_ms = 1 }, { name = "b", service_ms = 1 }, { name = "c", service_ms = 1 } ]
edges = [ { from = "a", to = "b" }, { from = "b", to = "c" }, { from = "c", to = "b" } ]
"""
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    assert "graphs[0].edges" in str(exc.value)
    assert "cycle" in str(exc.value) and "'b'" in str(exc.value)


@pytest.mark.parametrize(
    "content, reason",
    [("10\nnan\n12\n", ":2: rate is nan"), ("10\n-3\n", ":2: rate -3 is negative")],
)
def test_bad_trace_is_refused(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "trace.txt").write_text(content)
    p = write(
        tmp_path,
        BASE.replace(
            '{ shape = "constant", rate = 100 }', '{ shape = "trace", trace = "trace.txt" }'
        ),
    )
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    assert "jobs[0].load.trace" in str(exc.value) and reason in str(exc.value)


def test_minimums_above_capacity_are_refused(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        BASE.replace("slo = { target = 50 }", "slo = { target = 50 }\nminimum = { cpu = 20 }"),
    )
    with pytest.raises(ScenarioError, match="minimums exceed cluster capacity"):
        load_scenario(p)


def test_node_lists_presets_and_events(tmp_path: Path) -> None:
    text = """
[scenario]
duration_s = 60
[cluster]
nodes = [
  { id = "big", resources = { cpu = 32 }, pim = { preset = "pimcloud", stacks = 4 } },
  { count = 2, resources = { cpu = 8 }, dpu = "bluefield-3" },
]
events = [ { time_s = 10, node = "big", action = "fail" }, { time_s = 30, node = "big", action = "return" } ]
[[jobs]]
name = "a"
slo = { target = 50 }
load = { rate = 100 }
workload = { service_ms = 5, model = "queue" }
"""
    sc = load_scenario(write(tmp_path, text))
    assert [n.node_id for n in sc.nodes] == ["big", "node-0", "node-1"]
    assert sc.nodes[0].capacity.pim_cores == 32  # 4 stacks x 8 cores (override of the preset)
    assert sc.nodes[1].capacity.mesh == preset("bluefield3").admission_rps  # the device emulator's BlueField-3
    assert [(e.time_s, e.action) for e in sc.events] == [(10, "fail"), (30, "return")]


def test_custom_device_without_preset_needs_every_parameter(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        BASE.replace("resources = { cpu = 8 }", "resources = { cpu = 8 }\npim = { stacks = 2 }"),
    )
    with pytest.raises(ScenarioError, match=r"cluster\.pim\.cores_per_stack: missing"):
        load_scenario(p)


def test_load_shapes() -> None:
    t = np.arange(0.0, 100.0)
    assert np.all(LoadSpec(shape="constant", rate=5).rates(t) == 5)
    step = LoadSpec(shape="step", rate=10, factor=3, at_s=20, until_s=40).rates(t)
    assert step[19] == 10 and step[20] == 30 and step[39] == 30 and step[40] == 10
    ramp = LoadSpec(shape="ramp", rate=0, to=100, start_s=0, end_s=100).rates(t)
    assert ramp[50] == pytest.approx(50)
    di = LoadSpec(shape="diurnal", rate=10, amplitude=0.5, period_s=100).rates(t)
    assert di.max() == pytest.approx(15, rel=1e-3) and di.min() == pytest.approx(5, rel=1e-3)
    b1 = LoadSpec(shape="bursty", rate=10, burst_factor=4, on_s=5, off_s=10, seed=3).rates(t)
    b2 = LoadSpec(shape="bursty", rate=10, burst_factor=4, on_s=5, off_s=10, seed=3).rates(t)
    assert np.array_equal(b1, b2) and set(np.unique(b1)) == {10.0, 40.0}
    tr = LoadSpec(
        shape="trace", rate=0, scale=2, trace=np.array([1.0, 2.0, 3.0]), mirror=True
    ).rates(np.arange(8.0))
    assert tr.tolist() == [2, 4, 6, 6, 4, 2, 2, 4]


def test_job_count_expands_names_and_arrivals(tmp_path: Path) -> None:
    text = BASE.replace('name = "a"', 'name = "a"\ncount = 3\narrival_s = 5\ndeparture_s = 50')
    sc = load_scenario(write(tmp_path, text))
    assert [j.name for j in sc.jobs] == ["a-0", "a-1", "a-2"]
    assert all(j.arrival_s == 5 and j.departure_s == 50 for j in sc.jobs)
    assert math.isinf(load_scenario(write(tmp_path, BASE, "b.toml")).jobs[0].departure_s)
