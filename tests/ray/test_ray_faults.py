"""Faults on a 4-node ray.cluster_utils.Cluster (issue 8): two-phase apply refused by a
participant (a no, a timeout), a NodeAgent down while its replicas keep serving, and the
controller killed and resumed from the log with its old plans fenced by epoch.

One cluster and one manager for the module; the tests run in file order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
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
from tests.ray.ray_cluster import multi_node_cluster, wait_for  # noqa: E402
from tests.ray.test_ray_backend import (  # noqa: E402
    JOBS,
    NODE_CPUS,
    converged,
    plan_by_node,
    replicas_by_node,
)

# Fault-heavy (kills agents, the controller and nodes of a 4-node cluster): in the slow suite,
# `pytest -m slow tests/ray/test_ray_faults.py`.
pytestmark = [pytest.mark.ray, pytest.mark.slow]

NS = "cm-faults"
PARTICIPANTS = "tests.ray.plan_participants"
PREPARE_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, list[Any]]]:
    with multi_node_cluster(NS, NODE_CPUS) as (c, workers):
        yield c, workers


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("faultlog"))


@pytest.fixture(scope="module")
def manager(cluster: tuple[Cluster, list[Any]], log_dir: str) -> Iterator[RayManager]:
    c, _ = cluster
    cfg = ManagerConfig(address=c.address, namespace=NS, round_s=6.0, log_uri=log_dir,
                        admin_bind="", jobs=JOBS)  # fmt: skip
    m = RayManager(cfg, {"agent_options": {"push_period_s": 0.5, "prepare_timeout_s": PREPARE_TIMEOUT_S},
                         "prepare_timeout_s": 30.0, "agent_timeout_s": 3.0})  # fmt: skip
    m.start()
    m.wait_rounds(1, timeout=180)
    wait_for(lambda: converged(m), 120, "replicas to match the first plan")
    try:
        yield m
    finally:
        m.stop()


def agent(nid: str) -> Any:
    return ray.get_actor(agent_name(nid), namespace=NS)


def events(m: RayManager, kind: str) -> list[dict[str, Any]]:
    return [e for e in m.info()["events"] if e["kind"] == kind]


def calls(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def replica_names(m: RayManager) -> set[str]:
    return {n for rep in m.info()["reports"].values() for n in rep.get("replicas", {})}


def test_a_no_vote_aborts_everywhere_and_the_last_plan_stays(manager: RayManager, tmp_path: Path) -> None:  # fmt: skip
    m = manager
    nodes = sorted(m.info()["agents"])
    before_plan, before_names = plan_by_node(m), replica_names(m)
    for nid in nodes:
        ray.get(agent(nid).register_participant.remote(
            {"factory": f"{PARTICIPANTS}:Recorder",
             "options": {"name": "rec", "path": str(tmp_path / f"rec-{nid}")}}), timeout=60)  # fmt: skip
    no = nodes[1]
    ray.get(agent(no).register_participant.remote(
        {"factory": f"{PARTICIPANTS}:Nack",
         "options": {"name": "mesh", "path": str(tmp_path / "nack"), "reason": "weights do not sum to 1"}}),
        timeout=60)  # fmt: skip
    aborted0 = len(events(m, "plan_aborted"))
    m.submit(JobSpec("batch", slo=SLO(target=50.0), weight=2.0, replica_cpus=4.0,
                     workload={"service_ms": 4.0}))  # fmt: skip
    ev = wait_for(lambda: (e := events(m, "plan_aborted"))[aborted0:] and e[-1], 120, "the plan to be aborted")
    epoch = ev["epoch"]
    assert ev["votes"] == {f"{no}/mesh": "weights do not sum to 1"}
    # nothing changed: the plan in force, the replicas and what the participants committed
    assert plan_by_node(m) == before_plan and replica_names(m) == before_names
    for nid in nodes:
        seen = calls(tmp_path / f"rec-{nid}")
        assert f"prepare {epoch}" in seen and f"abort {epoch}" in seen and f"commit {epoch}" not in seen
    assert calls(tmp_path / "nack")[-2:] == [f"prepare {epoch}", f"abort {epoch}"]
    # the event is in the durable log too, with who said no and why
    logged = [e for e in RunLog(m.config.log_uri).read("events").to_pylist() if e["kind"] == "plan_aborted"]
    assert any("weights do not sum to 1" in e["detail"] and no in e["detail"] for e in logged)
    # an aborted epoch can never be applied
    assert ray.get(agent(nodes[0]).apply.remote(epoch, {}, "break"), timeout=60)["refused"]
    # the participant withdraws its objection: the next plan commits everywhere and is enforced
    assert ray.get(agent(no).unregister_participant.remote("mesh"), timeout=60)
    ray.get(m.controller.request_round.remote())
    wait_for(lambda: m.info()["enforced_epoch"] > epoch and "batch" in {j for d in plan_by_node(m).values() for j in d},
             120, "the next plan to be enforced")  # fmt: skip
    committed = m.info()["enforced_epoch"]
    for nid in nodes:
        assert f"commit {committed}" in calls(tmp_path / f"rec-{nid}")
    wait_for(lambda: converged(m), 120, "replicas to match the committed plan")
    for nid in nodes:
        ray.get(agent(nid).unregister_participant.remote("rec"), timeout=60)


def test_a_participant_that_does_not_answer_votes_no(manager: RayManager, tmp_path: Path) -> None:
    m = manager
    before_plan = plan_by_node(m)
    nid = sorted(m.info()["agents"])[2]
    ray.get(agent(nid).register_participant.remote(
        {"factory": f"{PARTICIPANTS}:Hang", "options": {"name": "pim", "path": str(tmp_path / "hang")}}),
        timeout=60)  # fmt: skip
    aborted0 = len(events(m, "plan_aborted"))
    ray.get(m.controller.request_round.remote())
    ev = wait_for(lambda: (e := events(m, "plan_aborted"))[aborted0:] and e[-1], 120, "the plan to be aborted")
    assert ev["votes"] == {f"{nid}/pim": f"no answer within {PREPARE_TIMEOUT_S:g} s"}
    assert plan_by_node(m) == before_plan
    assert ray.get(agent(nid).unregister_participant.remote("pim"), timeout=60)  # releases it
    assert calls(tmp_path / "hang")[-2:] == [f"abort {ev['epoch']}", "close"]


def test_replicas_keep_serving_while_their_agent_is_down(manager: RayManager) -> None:
    m = manager
    by_node = replicas_by_node(m)
    victim = next(iter(by_node))
    names = sorted(n for n, i in m.info()["reports"][victim]["replicas"].items())
    handles = [ray.get_actor(n, namespace=NS) for n in names]
    lost0 = m.info()["counters"]["lost"]
    ray.kill(agent(victim), no_restart=True)  # dead for good: Ray will not bring it back
    killed = time.time()
    # the data plane does not need the agent: requests complete under the last plan
    results = ray.get([h.handle.remote() for h in handles for _ in range(40)], timeout=60)
    served = time.time()
    assert results.count(0) == len(results)  # all OK
    # the controller notices, re-creates the agent on the node, and it adopts the replicas
    back = wait_for(lambda: _ping(victim), 120, "the agent to be re-created")
    assert back["started_at"] > served > killed and back["restarted"]
    assert any(e["kind"] == "agent_dead" and e["subject"] == victim for e in m.info()["events"])
    wait_for(lambda: set(m.info()["reports"][victim]["replicas"]) == set(names), 60, "the replicas adopted")
    # every window the replicas closed, also while the agent was down, arrives; none lost
    closed = {n: ray.get(h.info.remote(), timeout=60)["seq"] - 1 for n, h in zip(names, handles, strict=True)}
    wait_for(lambda: all(v >= closed[n] for n, v in ray.get(m.controller.marks.remote(names)).items()),
             60, "the windows held while the agent was down")  # fmt: skip
    assert m.info()["counters"]["lost"] == lost0


def _ping(nid: str) -> dict[str, Any] | None:
    try:
        return ray.get(agent(nid).ping.remote(), timeout=10)
    except Exception:
        return None


def test_killed_controller_resumes_from_the_log_and_old_plans_are_fenced(manager: RayManager) -> None:  # fmt: skip
    m = manager
    gens = [LoadGenerator.options(namespace=NS).remote(j.name, NS, 40.0, duration_s=20.0, seed=i)
            for i, j in enumerate(JOBS)]  # fmt: skip
    runs = [g.run.remote() for g in gens]
    wait_for(lambda: m.info()["counters"]["observations"] >= 4, 60, "observations learned")
    m.submit(JobSpec("tmp", weight=1.0))
    m.remove("tmp")
    m.wait_rounds(1, timeout=120)
    wait_for(lambda: converged(m), 120, "replicas to match the plan")
    before = m.info()
    old_epoch, names = before["enforced_epoch"], replica_names(m)
    assert before["epoch"] == old_epoch
    ray.kill(m.controller, no_restart=False)  # Ray restarts it; it resumes from the log
    after = wait_for(lambda: (i := _info(m)) and i["incarnation"] != before["incarnation"] and i,
                     120, "the controller to come back")  # fmt: skip
    assert after["restored_windows"] > 0 and after["counters"]["observations"] > 0  # learners replayed
    restored = next(e for e in after["events"] if e["kind"] == "controller_restored")
    assert restored["epoch"] == old_epoch  # resumed at the last epoch: its next plan is + 1
    assert set(restored["jobs"]) == {"web", "api", "batch"}  # submit and remove events replayed
    assert {j.name for j in m.status().jobs} == {"web", "api", "batch"}
    wait_for(lambda: (_info(m) or {}).get("enforced_epoch", -1) >= old_epoch + 1, 120,
             "the resumed controller to enforce a plan")  # fmt: skip
    wait_for(lambda: converged(m), 120, "replicas to match the resumed plan")
    # a plan from the controller that was thought dead is refused everywhere and changes nothing
    now = replica_names(m)
    for nid in m.info()["agents"]:
        a = agent(nid)
        assert ray.get(a.prepare.remote(old_epoch, {}, None), timeout=60)["refused"]
        assert ray.get(a.apply.remote(old_epoch, {}, "break"), timeout=60)["refused"]
    assert replica_names(m) == now
    assert now == names  # the same plan: the resumed controller did not restart the replicas
    assert all(ray.get(r, timeout=120)["ok"] > 0 for r in runs)
    assert m.info()["counters"]["lost"] == 0


def _info(m: RayManager) -> dict[str, Any] | None:
    try:
        return m.wait_controller(timeout=10)
    except Exception:
        return None
