"""Both telemetry modes across an agent restart and a controller restart, on the 4-node cluster:
agent-log (the default on one machine: NodeAgents de-duplicate and log their node's replica
windows themselves and send the controller partial sums keyed by log part) and controller-log
(agents send the windows, the controller logs them). Every logged (replica, seq) once, nothing
lost, nothing learned twice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from actors.load_generator import LoadGenerator  # noqa: E402
from actors.names import agent_name  # noqa: E402
from cluster_mgr.runtime.ray_backend import RayManager  # noqa: E402
from cluster_mgr.settings import ManagerConfig  # noqa: E402
from cluster_mgr.store import RunLog  # noqa: E402
from tests.ray.ray_cluster import shutdown_cluster  # noqa: E402
from tests.ray.test_ray_backend import JOBS, NODE_CPUS, STORE, converged, replicas_by_node, wait_for  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = "cm-agentlog"


@pytest.fixture(scope="module", params=[True, False], ids=["agent-log", "controller-log"])
def manager(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayManager]:  # fmt: skip
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "object_store_memory": STORE,
                                                       "include_dashboard": False})  # fmt: skip
    for _ in range(3):
        c.add_node(num_cpus=NODE_CPUS, object_store_memory=STORE)
    ray.init(address=c.address, namespace=NS)
    cfg = ManagerConfig(address=c.address, namespace=NS, round_s=6.0, admin_bind="", jobs=JOBS,
                        log_uri=str(tmp_path_factory.mktemp("agentlog")))  # fmt: skip
    m = RayManager(cfg, {"agent_options": {"push_period_s": 0.5}, "agent_log": request.param})
    try:
        assert m.start().info()["agent_log"] is request.param
        m.wait_rounds(1, timeout=180)
        wait_for(lambda: converged(m), 120, "replicas to match the plan")
        yield m
    finally:
        m.stop()
        shutdown_cluster(c)


def logged(m: RayManager) -> tuple[int, int, set[str]]:
    """(rows, distinct (replica, seq), writers) of the telemetry log."""
    log = RunLog(m.config.log_uri)
    t = log.read("telemetry")
    keys = set(zip(t.column("replica").to_pylist(), t.column("seq").to_pylist(), strict=True))
    writers = {p.rsplit("/", 1)[-1].split("-")[1] for p in log.parts("telemetry")}
    return t.num_rows, len(keys), writers


def test_agents_log_once_across_agent_and_controller_restarts(manager: RayManager) -> None:
    m = manager
    gens = [LoadGenerator.options(namespace=NS).remote(j.name, NS, 40.0, duration_s=25.0, seed=i)
            for i, j in enumerate(JOBS)]  # fmt: skip
    runs = [g.run.remote() for g in gens]
    wait_for(lambda: m.info()["counters"]["observations"] >= 4, 60, "observations learned")
    rows, distinct, writers = logged(m)
    # agent-log: the controller logs no telemetry; controller-log: only the controller does
    assert rows == distinct > 0 and writers == ({"agent"} if m.info()["agent_log"] else {"ctl"})
    # an agent restart: it re-seeds its marks from the log and drops what it had logged
    victim = next(iter(replicas_by_node(m)))
    w0 = m.info()["counters"]["windows"]
    ray.kill(ray.get_actor(agent_name(victim), namespace=NS), no_restart=False)
    wait_for(lambda: m.info()["counters"]["windows"] > w0 + 20, 120, "telemetry after the agent restart")
    # a controller restart: it replays the log and skips the partial sums of replayed parts
    before = m.info()
    ray.kill(m.controller, no_restart=False)
    after = wait_for(lambda: (i := _info(m)) and i["incarnation"] != before["incarnation"] and i,
                     120, "the controller to come back")  # fmt: skip
    assert after["restored_windows"] > 0
    wait_for(lambda: m.info()["counters"]["windows"] > after["counters"]["windows"] + 20, 60,
             "telemetry after the controller restart")  # fmt: skip
    assert all(ray.get(r, timeout=120)["ok"] > 0 for r in runs)
    info = m.info()
    rows, distinct, _ = logged(m)
    assert rows == distinct  # no window logged twice
    assert info["counters"]["windows"] <= rows  # none learned twice (logged before learned)
    assert info["counters"]["lost"] == 0


def _info(m: RayManager) -> dict[str, Any] | None:
    try:
        return m.wait_controller(timeout=10)
    except Exception:
        return None
