"""The admin API: a real gRPC server on loopback and the in-memory transport give the
same answers; the token is enforced; errors map to the right codes."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cli_fakes import TOKEN, FakeControlPlane

from cluster_mgr import protos
from cluster_mgr.admin.client import AdminClient, InMemoryTransport
from cluster_mgr.admin.convert import ADMIN_PROTO
from cluster_mgr.admin.errors import AdminError
from cluster_mgr.admin.server import serve
from cluster_mgr.config import load_job
from cluster_mgr.model import SLO, JobSpec, ResourceVector

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(fake: FakeControlPlane) -> Iterator:
    srv = serve(fake, "127.0.0.1:0", TOKEN)
    yield srv
    srv.stop(grace=None)


@pytest.fixture(params=["grpc", "memory"])
def client(request: pytest.FixtureRequest, fake: FakeControlPlane) -> Iterator[AdminClient]:
    if request.param == "grpc":
        srv = serve(fake, "127.0.0.1:0", TOKEN)
        c = AdminClient.connect(srv.address, TOKEN)
        yield c
        c.close()
        srv.stop(grace=None)
    else:
        yield AdminClient(InMemoryTransport(fake))


def _same(a: object, b: object) -> bool:
    """Dataclass equality where NaN equals NaN (a job without traffic has a NaN P99)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(
            _same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__
        )
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_status_round_trip(client: AdminClient, fake: FakeControlPlane) -> None:
    got = client.status()
    assert _same(got, fake.status())
    batch = next(j for j in got.jobs if j.name == "batch")
    # None survives the wire (proto3 optional), NaN too.
    assert batch.slo_target is None and batch.slo_met is None and math.isnan(batch.p99_ms)
    web = next(j for j in got.jobs if j.name == "web")
    assert web.slo_met is True and web.slo_target == 50.0 and web.allocation == {"cpu": 2.7}


def test_submit_structured_and_toml(client: AdminClient, fake: FakeControlPlane) -> None:
    spec = JobSpec(
        "cache",
        slo=SLO(target=20.0, percentile=95.0, threshold=0.9),
        weight=1.5,
        priority=2,
        minimum=ResourceVector(cpu=0.5, memory=1.0),
        maximum=ResourceVector(cpu=2.0, memory=4.0, custom=(("accel", 1.0),)),
        pins=("node-b",),
        replica_cpus=0.25,
        workload={"service_ms": 2.0, "mix": {"get": 0.9}},
    )
    assert client.submit(spec) == "cache"
    assert fake.jobs["cache"] == spec
    text = (ROOT / "examples" / "jobs" / "report.toml").read_text()
    assert client.submit(text) == "report"
    assert fake.jobs["report"] == load_job(ROOT / "examples" / "jobs" / "report.toml")


def test_errors_map_to_codes(client: AdminClient, fake: FakeControlPlane) -> None:
    with pytest.raises(AdminError) as info:
        client.remove("nope")
    assert info.value.code == "NOT_FOUND" and "nope" in info.value.details
    with pytest.raises(AdminError) as info:
        client.submit(JobSpec("huge", minimum=ResourceVector(cpu=10.0)))
    assert info.value.code == "INVALID_ARGUMENT" and "does not fit" in info.value.details
    assert "huge" not in fake.jobs  # refused: nothing changed
    with pytest.raises(AdminError) as info:
        client.submit('name = "x"\nweight = -1\n')
    assert info.value.code == "INVALID_ARGUMENT" and "weight" in info.value.details
    with pytest.raises(AdminError) as info:
        client.explain("ghost")
    assert info.value.code == "NOT_FOUND"


def test_remove_drain_explain_policies(client: AdminClient, fake: FakeControlPlane) -> None:
    client.remove("batch")
    assert "batch" not in fake.jobs
    client.drain("node-b")
    assert fake.draining == {"node-b"}
    assert client.status().nodes[1].draining
    e = client.explain("web")
    assert e.binding == ("capacity",) and e.share_of_objective == 1.0
    assert e.bounds == {"lcb": 0.9, "mean": 0.95, "ucb": 0.99}
    assert [p.name for p in client.policies()] == ["fair_share", "welfare"]


def _raw_status(address: str, metadata: tuple = ()) -> grpc.RpcError:
    pb, services = protos.load(ADMIN_PROTO)
    with grpc.insecure_channel(address) as channel:
        stub = services.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Status(pb.StatusRequest(), metadata=metadata, timeout=5)
    return info.value


def test_auth_refusals(server, fake: FakeControlPlane) -> None:
    err = _raw_status(server.address)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "missing" in err.details()
    err = _raw_status(server.address, (("authorization", "Bearer wrong"),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid" in err.details()
    err = _raw_status(server.address, (("authorization", TOKEN),))  # no 'Bearer '
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(AdminError) as info, AdminClient.connect(server.address, "bad") as c:
        c.remove("web")
    assert info.value.code == "UNAUTHENTICATED" and not info.value.bad_input
    assert fake.calls == []  # refused before any handler ran
    assert "web" in fake.jobs


def test_server_refuses_empty_token_and_taken_port(fake: FakeControlPlane, server) -> None:
    with pytest.raises(ValueError, match="empty token"):
        serve(fake, "127.0.0.1:0", "")
    with pytest.raises(OSError, match="cannot bind"):
        serve(fake, server.address, TOKEN)


def test_unreachable_manager_is_unavailable() -> None:
    fake_srv = serve(FakeControlPlane(), "127.0.0.1:0", TOKEN)
    address = fake_srv.address
    fake_srv.stop(grace=None)  # now nothing listens there
    with pytest.raises(AdminError) as info, AdminClient.connect(address, TOKEN, 2.0) as c:
        c.status()
    assert info.value.code == "UNAVAILABLE" and address in info.value.details


def test_client_and_cli_do_not_import_ray() -> None:
    code = (
        "import sys, cluster_mgr.admin.client, cluster_mgr.admin.server, cluster_mgr.cli, "
        "cluster_mgr.metrics; "
        "sys.exit(1 if 'ray' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_structured_defaults_and_explicit_zero(fake: FakeControlPlane) -> None:
    pb = protos.load(ADMIN_PROTO)[0]
    client = AdminClient(InMemoryTransport(fake))
    # Unset optional fields take the model's defaults...
    client.transport.call("Submit", pb.SubmitRequest(job=pb.JobSpec(name="bare")))
    assert fake.jobs["bare"] == JobSpec("bare")
    # ...but an explicit weight of 0 is refused, not mistaken for "unset".
    with pytest.raises(AdminError) as info:
        client.transport.call("Submit", pb.SubmitRequest(job=pb.JobSpec(name="z", weight=0.0)))
    assert info.value.code == "INVALID_ARGUMENT" and "weight" in info.value.details
    with pytest.raises(AdminError) as info:
        client.transport.call("Submit", pb.SubmitRequest())
    assert info.value.code == "INVALID_ARGUMENT" and "neither" in info.value.details
