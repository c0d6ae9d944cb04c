"""The Ray backend on a 4-node ray.cluster_utils.Cluster (a head and 3 workers, logical CPUs).

One cluster and one manager for the module; the tests run in file order and
each leaves the manager in a state the next one can use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from actors.load_generator import LoadGenerator  # noqa: E402
from actors.names import agent_name  # noqa: E402
from cluster_mgr.model import SLO, JobSpec  # noqa: E402
from cluster_mgr.runtime.ray_backend import RayManager  # noqa: E402
from cluster_mgr.settings import ManagerConfig  # noqa: E402
from cluster_mgr.store import RunLog  # noqa: E402
from tests.ray.ray_cluster import STORE, multi_node_cluster, wait_for  # noqa: E402, F401  (re-exported)

pytestmark = pytest.mark.ray

NS = "cm-test"
NODE_CPUS = 4
JOBS = (
    JobSpec("web", slo=SLO(target=30.0), weight=1.0, replica_cpus=4.0, workload={"service_ms": 4.0}),
    JobSpec("api", slo=SLO(target=30.0), weight=1.0, replica_cpus=4.0, workload={"service_ms": 4.0}),
)




@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, list[Any]]]:
    with multi_node_cluster(NS, NODE_CPUS) as (c, workers):
        yield c, workers


def config(tmp: str, cluster: Cluster, **kw: Any) -> ManagerConfig:
    return ManagerConfig(address=cluster.address, namespace=kw.pop("namespace", NS), round_s=6.0,
                         log_uri=tmp, admin_bind="", jobs=JOBS, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def manager(cluster: tuple[Cluster, list[Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayManager]:  # fmt: skip
    c, _ = cluster
    m = RayManager(config(str(tmp_path_factory.mktemp("log")), c),
                   {"agent_options": {"push_period_s": 0.5}})  # fmt: skip
    m.start()
    try:
        yield m
    finally:
        m.stop()


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def replicas_by_node(m: RayManager) -> dict[str, dict[str, float]]:
    """node -> job -> CPUs of its running replicas, as the replicas themselves report."""
    out: dict[str, dict[str, float]] = {}
    for nid, rep in m.info()["reports"].items():
        for info in rep.get("replicas", {}).values():
            assert info["node_id"] == nid  # the replica runs where its agent is
            jobs = out.setdefault(nid, {})
            jobs[info["job"]] = jobs.get(info["job"], 0.0) + info["size"]
    return {k: v for k, v in out.items() if v}


def plan_by_node(m: RayManager) -> dict[str, dict[str, float]]:
    plan = ray.get(m.controller.plan.remote())
    out: dict[str, dict[str, float]] = {}
    for s in plan["shares"]:
        out.setdefault(s["node_id"], {})[s["job"]] = s["resources"]["cpu"]
    return out


def converged(m: RayManager) -> bool:
    p, r = plan_by_node(m), replicas_by_node(m)
    return bool(p) and {n: {j: round(c, 3) for j, c in d.items()} for n, d in p.items()} == {
        n: {j: round(c, 3) for j, c in d.items()} for n, d in r.items()
    }


def test_shadow_mode_decides_and_logs_but_starts_nothing(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, _ = cluster
    m = RayManager(config(str(tmp_path), c, namespace="cm-shadow", shadow=True))
    m.start()
    try:
        info = m.wait_rounds(1, timeout=120)
        assert info["last_error"] == ""
        decisions = RunLog(str(tmp_path)).read_decisions()
        assert decisions and decisions[-1]["note"].startswith("shadow")
        assert len(decisions[-1]["plan"]["shares"]) >= 2
        wait_for(lambda: len(m.info()["reports"]) == 4, 60, "agent reports")
        assert replicas_by_node(m) == {}
        assert not ray.util.placement_group_table() or all(
            p["state"] == "REMOVED" for p in ray.util.placement_group_table().values()
        )
    finally:
        m.stop()


def test_one_agent_per_alive_node(manager: RayManager) -> None:
    info = wait_for(lambda: (i := manager.info())["agents"] and i, 60, "agents")
    assert set(info["agents"]) == alive_nodes() and len(info["agents"]) == 4
    for nid in info["agents"]:
        agent = ray.get_actor(agent_name(nid), namespace=NS)
        assert ray.get(agent.ping.remote(), timeout=60)["actual_node"] == nid


def test_replicas_land_where_the_plan_says_within_capacity(manager: RayManager) -> None:
    manager.wait_rounds(1, timeout=180)
    wait_for(lambda: converged(manager), 120, "replicas to match the plan")
    status = manager.status()
    for node in status.nodes:
        assert node.used.get("cpu", 0.0) <= node.capacity.get("cpu", 0.0) + 1e-6
    for nid, jobs in replicas_by_node(manager).items():
        assert sum(jobs.values()) <= NODE_CPUS + 1e-6, nid
    # Ray's own view agrees: no node has more CPU reserved than it has
    avail = ray._private.state.available_resources_per_node()
    for nid in alive_nodes():
        assert avail[nid].get("CPU", 0.0) >= -1e-9


def test_killed_agent_restarts_and_loses_no_window(manager: RayManager) -> None:
    gens = [LoadGenerator.options(namespace=NS).remote(j.name, NS, 40.0, duration_s=25.0, seed=i)
            for i, j in enumerate(JOBS)]  # fmt: skip
    runs = [g.run.remote() for g in gens]
    victim = wait_for(lambda: next(iter(replicas_by_node(manager)), None), 30, "a node with replicas")
    wait_for(lambda: manager.info()["counters"]["windows"] > 8, 30, "telemetry flowing")
    before = manager.info()
    agent = ray.get_actor(agent_name(victim), namespace=NS)
    ray.kill(agent, no_restart=False)
    wait_for(lambda: _restarted(victim), 120, "the agent to restart")
    reports = [ray.get(r, timeout=120) for r in runs]
    assert all(r["ok"] > 0 for r in reports)
    after = wait_for(lambda: (i := manager.info())["counters"]["windows"]
                     > before["counters"]["windows"] + 20 and i, 60, "telemetry after restart")  # fmt: skip
    assert after["counters"]["lost"] == before["counters"]["lost"] == 0
    # the victim's replicas delivered every window in sequence across the restart
    marks_before = before["reports"][victim]["replicas"]
    assert marks_before
    rep = after["reports"][victim]
    assert rep["restarted"]
    for name in marks_before:
        assert rep["replicas"][name]["seq"] > marks_before[name]["seq"]


def _restarted(node_id: str) -> bool:
    try:
        agent = ray.get_actor(agent_name(node_id), namespace=NS)
        return bool(ray.get(agent.ping.remote(), timeout=10)["restarted"])
    except Exception:
        return False


def test_drained_node_gets_no_replicas(manager: RayManager, cluster) -> None:  # type: ignore[no-untyped-def]
    _, workers = cluster
    target = workers[0].node_id
    manager.drain(target)
    manager.wait_rounds(1, timeout=180)
    wait_for(lambda: converged(manager), 120, "replicas to match the plan after drain")
    assert target not in plan_by_node(manager)
    assert target not in replicas_by_node(manager)
    assert next(n for n in manager.status().nodes if n.node_id == target).draining
    # more rounds later, still nothing lands there
    manager.wait_rounds(1, timeout=180)
    assert target not in replicas_by_node(manager)


def test_dead_node_replicas_replaced_within_two_rounds(manager: RayManager, cluster) -> None:  # type: ignore[no-untyped-def]
    c, workers = cluster
    plan = plan_by_node(manager)
    # A node that holds replicas but not the controller: this test is about re-placing
    # work; a controller dying with its node is test_ray_faults' resume test.
    controller_node = manager.info()["node_id"]
    victim = next(w for w in workers[1:] if w.node_id in plan and w.node_id != controller_node)
    c.remove_node(victim)
    wait_for(lambda: victim.node_id not in alive_nodes(), 60, "Ray to report the node dead")
    start_round = manager.info()["rounds_done"]
    wait_for(lambda: victim.node_id in manager.info()["dead"], 30, "the controller to see it")
    wait_for(lambda: victim.node_id not in plan_by_node(manager) and converged(manager), 180,
             "the dead node's replicas to be re-placed")  # fmt: skip
    assert manager.info()["rounds_done"] - start_round <= 2
    total = sum(sum(j.values()) for j in plan_by_node(manager).values())
    assert total >= 4.0  # the jobs still run, on the nodes that are left
    kinds = [e["kind"] for e in manager.info()["events"]]
    assert "node_dead" in kinds  # loss (if any) is recorded, never silent
