"""Inference jobs in scenarios and the sim backend: loading, refusal with key paths, a short run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from allocators.registry import format_policies, get_policy
from cluster_mgr.cli import main
from cluster_mgr.model import JobKind
from cluster_mgr.scenario import ScenarioError, load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# The conftest's small network (widths 96, 8 epochs: trained once and cached) and the compact
# knob space (52 settings), so measuring every setting takes about a second.
SMALL = 'widths = [96, 96, 96], epochs = 8, knob_space = "compact", profile_reps = 8'

SCENARIO = f"""
[scenario]
name = "inference-tiny"
duration_s = 60
round_s = 10
warmup_s = 5
seed = 3
[cluster]
count = 1
resources = {{ cpu = 4, memory = 16 }}
[[jobs]]
name = "a"
kind = "inference"
load = {{ shape = "constant", rate = 0.4 }}
workload = {{ model = "inference", load_unit = "full_cores", latency_x = 6.0, memory_mb = 4.0, {SMALL} }}
bounds = [{{ at_s = 30, latency_x = 2.5 }}]
[[jobs]]
name = "b"
kind = "inference"
load = {{ shape = "constant", rate = 0.3 }}
workload = {{ model = "inference", load_unit = "full_cores", latency_x = 5.0, memory_mb = 4.0, {SMALL} }}
bounds = [{{ at_s = 20, memory_mb = 0.16 }}]
"""


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=Console(file=out, width=200), err=Console(file=err, width=200))
    return code, out.getvalue(), err.getvalue()


def test_example_loads_with_bounds_and_changes() -> None:
    sc = load_scenario(EXAMPLES / "inference.toml")
    assert [j.name for j in sc.jobs] == ["digits-a", "digits-b", "digits-c", "digits-d"]
    for j in sc.jobs:
        assert j.spec.kind == JobKind.INFERENCE and j.model == "inference"
        assert j.spec.bound_max("memory") * 1024 == j.workload["memory_mb"]
    a = sc.jobs[0].workload["bound_changes"]
    assert a == [{"at_s": 100.0, "latency_x": 0.8}, {"at_s": 220.0, "latency_x": 3.0}]


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (('latency_x = 6.0, ', ""), "jobs[0].workload.latency_x", "give the latency bound once"),
        (('memory_mb = 4.0, ', ""), "jobs[0].workload.memory_mb", "give the memory bound once"),
        (('kind = "inference"', 'kind = "latency_critical"'), "jobs[0].kind", "needs kind"),
        (("at_s = 30, latency_x = 2.5", "at_s = 30"), "jobs[0].bounds[0].at_s", "needs latency"),
        (("at_s = 30,", "at_s = -1,"), "jobs[0].bounds[0].at_s", "expected a time >= 0"),
        (('knob_space = "compact"', 'knob_space = "huge"'), "jobs[0].workload.knob_space",
         "expected one of"),
        (("widths = [96, 96, 96]", "widths = [96, 0, 96]"), "jobs[0].workload.widths",
         "integers > 0"),
    ],
)  # fmt: skip
def test_bad_inference_job_is_refused_with_key_path(
    tmp_path: Path, change: tuple[str, str], key: str, reason: str
) -> None:
    bad = SCENARIO.replace(*change, 1)
    assert bad != SCENARIO
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert exc.value.key == key and reason in exc.value.detail
    code, _, err = run(["simulate", str(path), "--policy", "inference_knobs",
                        "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and f"{path}: {key}:" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_policies_are_registered() -> None:
    table = format_policies()
    for name in ("inference_knobs", "fixed_knob", "fixed_knob_approx"):
        assert name in table
        assert get_policy(name).name == name


def _simulate(tmp_path: Path, policy: str) -> dict:
    sc = tmp_path / "inf.toml"
    sc.write_text(SCENARIO)
    out = tmp_path / policy
    code, _, err = run(["simulate", str(sc), "--policy", policy, "--out", str(out)])
    assert code == 0, err
    return json.loads((out / "summary.json").read_text())


def test_short_sim_run_meets_bounds_most_windows(tmp_path: Path, weights: object) -> None:
    ours = _simulate(tmp_path, "inference_knobs")["inference"]
    assert ours["within_bounds_fraction"] >= 0.9, ours
    assert ours["mean_accuracy_loss"] < 2.0, ours
    b = ours["per_job"]["b"]
    # b's memory bound (0.16 MB) after t = 20 s is below the full model's: a smaller knob runs
    assert b["knob_switches"] >= 1 and b["memory_ok_fraction"] >= 0.9, b
    full = _simulate(tmp_path, "fixed_knob")["inference"]
    assert full["mean_accuracy_loss"] == pytest.approx(0.0)
    assert full["per_job"]["b"]["memory_ok_fraction"] < 0.8  # the full model cannot fit 0.16 MB
