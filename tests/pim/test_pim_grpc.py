"""gRPC round trip on loopback, token auth, and rejected plans changing nothing."""

from __future__ import annotations

import grpc
import pytest

from pim_agent.client import GrpcTransport, InMemoryTransport, PimClient
from pim_agent.device import Assignment, PimDevice
from pim_agent.server import start_agent
from pim_agent.workloads import IMGDNN, MASSTREE


@pytest.fixture
def agent():
    dev = PimDevice(seed=0)
    handle = start_agent(dev, "127.0.0.1:0", token="t0k3n")
    client = PimClient(GrpcTransport(handle.address, "t0k3n"))
    yield dev, handle, client
    client.transport.close()
    handle.stop()


def test_round_trip_moves_cores_and_pages(agent) -> None:
    dev, handle, client = agent
    assert handle.address.startswith("127.0.0.1:")
    client.register(MASSTREE, 20000)
    client.register(IMGDNN, 500)
    preset, version, apps = client.info()
    assert preset.cpu_cores == 4 and apps == ("masstree", "imgdnn") and version == 0
    out = client.apply(
        {
            "masstree": Assignment(0, (8, 0), (1.0, 0.0)),
            "imgdnn": Assignment(4, (0, 0), (0.5, 0.5)),
        },
        1,
    )
    assert out.accepted and out.version == 1
    assert client.replicate("imgdnn", (0, 1), 2).accepted
    first = client.step()
    for _ in range(10):
        last = client.step()
    m0, m1 = first.app("masstree"), last.app("masstree")
    assert m0.locality[0] < m1.locality[0] == pytest.approx(1.0)
    assert m1.pim_cores == (8.0, 0.0) and m1.migration_progress == 1.0
    assert last.pim_utilization[0] > 0 and len(last.channel_bw_gbs) == 16
    assert client.counters().time == pytest.approx(last.time)


def test_wrong_token_is_unauthenticated(agent) -> None:
    _, handle, _ = agent
    bad = PimClient(GrpcTransport(handle.address, "wrong"))
    with pytest.raises(grpc.RpcError) as err:
        bad.info()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad.transport.close()


def test_rejected_plans_report_a_reason_and_change_nothing(agent) -> None:
    dev, _, client = agent
    client.register(MASSTREE, 1000)
    assert client.apply({"masstree": Assignment(2, (2, 0), (1.0, 0.0))}, 1).accepted
    out = client.apply({"masstree": Assignment(9, (2, 0), (1.0, 0.0))}, 2)
    assert not out.accepted and "over-subscribed" in out.reason and out.version == 1
    out = client.apply({"ghost": Assignment(0, (1, 0), (1.0, 0.0))}, 2)
    assert not out.accepted and "unknown" in out.reason
    assert not client.migrate("masstree", (0.2, 0.2), 2).accepted
    assert dev.assignment("masstree") == Assignment(2, (2, 0), (1.0, 0.0)) and dev.version == 1


def test_in_memory_double_behaves_like_the_server() -> None:
    dev = PimDevice(seed=0)
    client = PimClient(InMemoryTransport(dev))
    client.register(MASSTREE, 1000)
    assert not client.apply({"masstree": Assignment(5, (0, 0), (1.0, 0.0))}, 1).accepted
    assert client.apply({"masstree": Assignment(1, (0, 0), (1.0, 0.0))}, 1).accepted
    assert client.step().app("masstree").completed > 0
