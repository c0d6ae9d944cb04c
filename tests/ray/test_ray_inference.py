"""An inference job on the Ray backend: a real NodeAgent starts a real Replica that serves real
inference requests (the numpy MLP's forward pass at the knob in force, really timed), and the
knob travels in the plan.

The test plays the controller's enforcement steps (prepare, commit, make / break, make) with
the desired state ``ControllerCore.desired_for`` builds (the job's entry carries ``knob``); a
small sink stands in for the controller's telemetry endpoint. Checked: the plan's knob is the
replica's; a second plan with an early-exit knob switches the SAME replica (no process start)
and its windows show less memory (counted from the arrays held: deterministic) and less compute
time per request (timed: the early exit runs a third of the layers; asserted with a wide
margin); every request's execution time is in the windows' summary, and the controller's knob
model (``KnobModels.learn`` on those windows, as a telemetry flush feeds it) holds them as
service-time samples of the knob that ran; a plan whose knob does not exist is voted down in
prepare.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("sklearn")

from actors.names import CONTROLLER, agent_name  # noqa: E402
from tests.ray.ray_cluster import (  # noqa: E402
    STORE,
    shutdown_cluster,  # noqa: E402
    wait_for,
)

pytestmark = pytest.mark.ray

NS = "cm-inference"
JOB = "digits"
# tests/inference/conftest.py's small network (trained once, cached) and the compact knob space
WORKLOAD = {"model": "inference", "widths": [96, 96, 96], "epochs": 8, "knob_space": "compact"}
FULL = "e3-fb32.fb32.fb32-std"
EARLY = "e1-fb32-std"
REQUESTS = 300
WAVE = 30


@ray.remote(num_cpus=0, max_concurrency=8)
class TelemetrySink:
    """Stands in for the controller's telemetry side: keeps every window, acks every push."""

    def __init__(self) -> None:
        self.windows: list[Any] = []

    def ingest(self, node_id: str, table: Any, meta: dict[str, Any], push: dict[str, Any] | None = None
               ) -> dict[str, Any]:  # fmt: skip
        from cluster_mgr.telemetry import batch_to_windows

        rows = batch_to_windows(table) if table is not None else []
        self.windows.extend(rows)
        return {
            "incarnation": "sink",
            "durable": int((push or {}).get("id", -1)),
            "rows": len(rows),
        }

    def of(self, job: str) -> list[Any]:
        return [w for w in self.windows if w.job == job]


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    from actors.node_agent import NodeAgent

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=4, object_store_memory=STORE, include_dashboard=False,
             namespace=NS)  # fmt: skip
    try:
        node = ray.get_runtime_context().get_node_id()
        sink = TelemetrySink.options(name=CONTROLLER, namespace=NS).remote()
        agent = NodeAgent.options(name=agent_name(node), namespace=NS).remote(
            node, NS, {"push_period_s": 0.5}
        )
        ray.get(agent.report.remote(), timeout=120)
        yield {"node": node, "agent": agent, "sink": sink}
        ray.get(agent.shutdown.remote(), timeout=120)
    finally:
        shutdown_cluster()


def desired(knob: str) -> dict[str, dict[str, Any]]:
    """One 1-CPU replica of the inference job, as ControllerCore.desired_for builds it."""
    return {JOB: {"sizes": [1.0], "workload": dict(WORKLOAD), "slo_ms": 50.0, "knob": knob}}


def enforce(env: dict[str, Any], epoch: int, knob: str) -> dict[str, Any]:
    agent = env["agent"]
    res = ray.get(agent.prepare.remote(epoch, desired(knob), None), timeout=60)
    noes = {k: v for k, v in res["votes"].items() if v is not None}
    if noes:
        ray.get(agent.abort.remote(epoch), timeout=60)
        return {"noes": noes}
    ray.get(agent.commit.remote(epoch), timeout=60)
    out: dict[str, list[str]] = {"started": [], "stopped": [], "knobs": []}
    for phase in ("make", "break", "make"):
        res = ray.get(agent.apply.remote(epoch, desired(knob), phase), timeout=180)
        for key in out:
            out[key] += res.get(key, [])
    return out


def replica(env: dict[str, Any]) -> tuple[str, Any]:
    names = [n for n, i in ray.get(env["agent"].report.remote(), timeout=30)["replicas"].items()
             if i["job"] == JOB]  # fmt: skip
    assert len(names) == 1, names
    return names[0], ray.get_actor(names[0], namespace=NS)


def serve(env: dict[str, Any], handle: Any) -> dict[str, Any]:
    """REQUESTS real requests, then the windows they landed in: compute ms per request, memory,
    accuracy counts, execution times counted, and the windows."""
    before = len(ray.get(env["sink"].of.remote(JOB), timeout=30))
    codes: list[int] = []
    for _ in range(REQUESTS // WAVE):  # waves within the replica's queue limit (64 waiting)
        codes += ray.get([handle.handle.remote() for _ in range(WAVE)], timeout=300)
    assert codes == [0] * REQUESTS
    ray.get(handle.flush.remote(), timeout=30)

    def landed() -> list[Any] | None:
        ws = ray.get(env["sink"].of.remote(JOB), timeout=30)[before:]
        return ws if sum(w.completed for w in ws) >= REQUESTS else None

    every = wait_for(landed, 120, "the windows of the requests")
    ws = [w for w in every if w.completed]
    done = sum(w.completed for w in ws)
    from actors.inference.serving import exec_samples

    return {
        "exec_ms": sum(w.exec_ms_mean * w.completed for w in ws) / done,
        # the fastest sampled pass: a pass that ran without being preempted, so it measures the
        # knob's compute even when the shared machine is busy (a mean would measure the machine)
        "exec_min_ms": min(t for w in every for t in exec_samples(w.extras)),
        "memory_mb": max(w.extras["inference_memory_mb"] for w in ws),
        "labelled": sum(w.extras["inference_labelled"] for w in ws),
        "correct": sum(w.extras["inference_correct"] for w in ws),
        # every window: a pass timed just before a window closes completes in the next one
        "exec_n": sum(w.extras["inference_exec_n"] for w in every),
        "windows": every,
    }


def learned(windows: list[Any], knob: str) -> None:
    """The controller's knob model learns the windows: its samples of ``knob`` grow by the
    execution times the windows carry, and hold exactly those times (1-CPU replica: as timed)."""
    from actors.inference.control import KnobModels
    from actors.inference.serving import exec_samples
    from cluster_mgr.model import JobKind, JobSpec
    from cluster_mgr.telemetry import windows_to_batch

    # profile_reps 8: the measured profiles tests/inference caches for this network
    spec = JobSpec(JOB, kind=JobKind.INFERENCE, workload=dict(WORKLOAD, profile_reps=8))
    models = KnobModels(lambda: {JOB: spec})
    profile = models[JOB].profile
    before = profile.n_samples(knob)
    times = [t for w in windows for t in exec_samples(w.extras)]
    assert 0 < len(times) <= 16 * len(windows)  # a fixed-size summary per window
    assert models.learn(windows_to_batch(windows)) == len(windows)
    assert models[JOB].knob == knob
    assert profile.n_samples(knob) == before + len(times)
    assert profile.to_state()["samples"][knob][-len(times) :] == pytest.approx(times)  # type: ignore[index]


def test_replica_serves_real_inference_and_the_plans_knob_changes_latency(
    env: dict[str, Any],
) -> None:
    first = enforce(env, 1, FULL)
    assert "noes" not in first and len(first["started"]) == 1, first
    name, h = replica(env)
    assert ray.get(h.info.remote(), timeout=30)["knob"] == FULL
    full = serve(env, h)
    assert full["labelled"] >= REQUESTS * 128  # every request is a real 128-digit batch
    assert full["correct"] / full["labelled"] > 0.8  # and really classified
    assert full["exec_n"] == REQUESTS  # every request's execution time, counted for its knob
    learned(full["windows"], FULL)

    second = enforce(env, 2, EARLY)
    assert second["started"] == [] and second["stopped"] == [], second
    assert second["knobs"] == [name]  # the same replica switched: no process start
    assert ray.get(h.info.remote(), timeout=30)["knob"] == EARLY
    early = serve(env, h)
    assert early["memory_mb"] < full["memory_mb"] * 0.75  # fewer layers held: deterministic
    assert early["exec_min_ms"] < full["exec_min_ms"] * 0.8, (early, full)  # a third of the layers run
    assert early["exec_n"] == REQUESTS  # none of the full model's times reported as the early's
    learned(early["windows"], EARLY)


def test_unknown_knob_is_voted_down_in_prepare(env: dict[str, Any]) -> None:
    res = enforce(env, 3, "e9-no-such-knob")
    assert "noes" in res and "knob" in res["noes"]["replicas"], res
    _, h = replica(env)
    assert ray.get(h.info.remote(), timeout=30)["knob"] == EARLY  # the last good plan stays
