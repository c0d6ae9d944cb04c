"""The per-node LocalController hosted in each NodeAgent (issue 8 items 1-2), on a 2-node
ray.cluster_utils.Cluster (head + 1 worker, 4 logical CPUs each).

One job ``api`` (a replica of 4 CPUs per node, latency SLO 100 ms) under an open-loop
Poisson load with three 2.5x surges. The manager runs with ``local_controller = "ours"``:
every NodeAgent steps a SlackController each 100 ms fast window on its replicas'
per-window signals, inside the node budget of the last committed plan, through the
fast path only. Reaction time (DESIGN.md) is measured from the agents' histories.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from cluster_mgr.model import SLO, JobSpec  # noqa: E402
from cluster_mgr.runtime.ray_backend import RayManager  # noqa: E402
from cluster_mgr.runtime.surge import agents_of, run_surge  # noqa: E402
from cluster_mgr.settings import ManagerConfig  # noqa: E402
from cluster_mgr.store import RunLog  # noqa: E402
from tests.ray.ray_cluster import shutdown_cluster  # noqa: E402

pytestmark = pytest.mark.ray

NS = "cm-local"
NODE_CPUS = 4
STORE = 80 * 1024**2
JOB = JobSpec("api", slo=SLO(target=100.0), replica_cpus=4.0,
              workload={"service_ms": 10.0, "dist": "exp"})  # fmt: skip


def test_make_plan_places_device_amounts_on_labelled_nodes() -> None:
    """Pure: with device labels on the nodes (set by the Ray controller from the config), the
    CPU part is packed and checked against Ray's capacity, then mesh and PIM parts are added."""
    from cluster_mgr.model import Allocation, NodeInfo, ResourceVector
    from cluster_mgr.place import DPU_LABEL, PIM_LABEL, make_plan

    nodes = (NodeInfo("a", ResourceVector(cpu=4.0), labels=((DPU_LABEL, "bluefield2"),)),
             NodeInfo("b", ResourceVector(cpu=4.0), labels=((PIM_LABEL, "2x8"),)))  # fmt: skip
    jobs = (JobSpec("web", replica_cpus=2.0), JobSpec("lc"))
    alloc = Allocation({"web": ResourceVector(cpu=2.0, mesh=40.0), "lc": ResourceVector(pim_cores=6.0)})
    plan = make_plan(alloc, jobs, nodes, None, 1, 1).plan
    assert [(m.node_id, m.job, m.rate_limit_rps) for m in plan.mesh] == [("a", "web", 40.0)]
    assert {(s.node_id, s.job): s.resources.pim_cores for s in plan.shares if s.job == "lc"} == {("b", "lc"): 6.0}
    assert sum(s.resources.cpu for s in plan.shares) == 2.0 and plan.pages[0].node_id == "b"
    # without labels nothing changes: every kind is packed against capacity (no mesh there)
    with pytest.raises(ValueError):
        make_plan(alloc, jobs, tuple(NodeInfo(n.node_id, n.capacity) for n in nodes), None, 1, 1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "object_store_memory": STORE, "include_dashboard": False})  # fmt: skip
    c.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE)
    ray.init(address=c.address, namespace=NS)
    try:
        c.wait_for_nodes()
        yield c
    finally:
        shutdown_cluster(c)


@pytest.fixture(scope="module")
def manager(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayManager]:
    cfg = ManagerConfig(address=cluster.address, namespace=NS, round_s=3600.0,
                        log_uri=str(tmp_path_factory.mktemp("local-log")), admin_bind="",
                        jobs=(JOB,), local_controller="ours")  # fmt: skip
    m = RayManager(cfg, {"agent_options": {"push_period_s": 0.5}})
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def surge(manager: RayManager) -> dict[str, Any]:
    return run_surge(NS, "api", base_rps=100.0, factor=2.5, seed=3)


def test_fast_layer_reacts_to_surges_within_the_node_budget(manager: RayManager, surge: dict[str, Any]) -> None:  # fmt: skip
    hist = surge["histories"]
    assert len(hist) == 2  # one LocalController per node, each on its own replica
    plan = ray.get(manager.controller.plan.remote())
    share = {s["node_id"]: s["resources"]["cpu"] for s in plan["shares"] if s["job"] == "api"}
    infos = {n: ray.get(a.local_info.remote()) for n, a in agents_of(NS).items()}
    for nid, h in hist.items():
        # the budget is the plan's share of the job on this node (the global layer's round)
        assert infos[nid]["budget"] == {"api": pytest.approx(share[nid])}, (infos, share)
        assert infos[nid]["errors"] == 0, infos[nid]
        quotas = [e["jobs"]["api"]["quota"] for e in h]
        ups = [a for e in h for a in e["actions"] if a["up"]]
        downs = [a for e in h for a in e["actions"] if not a["up"] and a["kind"] == "quota"]
        assert max(quotas) <= share[nid] + 1e-6  # never past the node budget
        kinds = {a["kind"] for e in h for a in e["actions"]}
        print(f"\n{nid[:8]}: {len(h)} windows, {len(ups)} scale-ups, {len(downs)} quota releases, "
              f"kinds {sorted(kinds)}, quota {min(quotas):.1f}-{max(quotas):.1f}, "
              f"violating windows {sum(e['jobs']['api']['viol'] for e in h)}")  # fmt: skip
        assert ups and downs, "it scaled up in surges and gave back in calm periods"
    rs = surge["reactions"]
    print(f"\nreaction windows per node and surge: {rs}; median {surge['reaction_windows_median']}"
          f"; load {surge['load']}")  # fmt: skip
    # every surge that showed a violation was answered by an enforced scale-up
    assert surge["events"] >= 3 and surge["unanswered"] == 0, rs
    assert math.isfinite(surge["reaction_windows_median"])


def test_fast_layer_never_starts_a_process_and_reports(manager: RayManager, surge: dict[str, Any]) -> None:  # fmt: skip
    info = manager.info()
    names = {n for r in info["reports"].values() for n in r["replicas"]}
    assert len(names) == 2  # the replicas placed before the surges, none started since
    assert all(r["replicas"][n]["size"] == 4.0 for r in info["reports"].values() for n in r["replicas"])
    ev = [e for e in info["events"] if e["kind"] == "local_actions"]
    assert ev and {e["job"] for e in ev} == {"api"} and all(e["actions"] > 0 for e in ev), ev[:3]
    # local.* extras reach the telemetry log with the node's windows
    log = RunLog(manager.config.log_uri)

    def logged() -> Any:
        t = log.read("telemetry").to_pylist()
        return [r for r in t if "local:" in r["replica"]] or None

    from tests.ray.test_ray_backend import wait_for

    rows = wait_for(logged, 60, "local.* windows in the telemetry log")
    extras = [dict(r["extras"]) if not isinstance(r["extras"], dict) else r["extras"] for r in rows]
    assert any(x.get("local.up_actions", 0) > 0 for x in extras), extras[:3]
    assert all("local.budget_cores" in x for x in extras)
