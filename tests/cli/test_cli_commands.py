"""CLI commands through the in-memory test transport, and through the real gRPC path
that ``up`` sets up (state file + token file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fakes import TOKEN, Captured, FakeControlPlane

from cluster_mgr.admin.client import AdminClient, InMemoryTransport
from cluster_mgr.admin.server import serve
from cluster_mgr.admin.state import ManagerState, write_state, write_token
from cluster_mgr.cli import main
from cluster_mgr.config import load_job

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], captured: Captured, fake: FakeControlPlane | None = None) -> int:
    factory = None
    if fake is not None:
        transport = InMemoryTransport(fake)
        factory = lambda timeout: AdminClient(transport)  # noqa: E731
    return main(argv, client_factory=factory, out=captured.out, err=captured.err)


def test_status_tables(captured: Captured, fake: FakeControlPlane) -> None:
    assert run(["status"], captured, fake) == 0
    out = captured.stdout
    assert "policy fair_share | round 3 (epoch 1)" in out
    assert "telemetry windows 120, lost 2" in out
    assert "12.5 / 50 ms" in out  # P99 against the SLO
    assert "cpu 2.7" in out and "cpu 1.3" in out
    assert "node-a" in out and "node-b" in out


def test_status_json(captured: Captured, fake: FakeControlPlane) -> None:
    assert run(["status", "--json"], captured, fake) == 0
    data = json.loads(captured.stdout)
    assert data["round"] == 3
    assert {j["name"]: j["allocation"]["cpu"] for j in data["jobs"]} == {"web": 2.7, "batch": 1.3}


def test_submit_remove_drain(captured: Captured, fake: FakeControlPlane) -> None:
    job_file = ROOT / "examples" / "jobs" / "cache.toml"
    assert run(["submit", str(job_file)], captured, fake) == 0
    assert fake.jobs["cache"] == load_job(job_file)
    assert "submitted cache" in captured.stdout
    assert run(["remove", "cache"], captured, fake) == 0
    assert "cache" not in fake.jobs
    assert run(["drain", "node-a"], captured, fake) == 0
    assert fake.draining == {"node-a"}


def test_bad_input_exits_2_without_traceback(
    tmp_path: Path, captured: Captured, fake: FakeControlPlane
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nweigth = 2\n')
    assert run(["submit", str(bad)], captured, fake) == 2
    assert f"{bad}: weigth: unknown key" in captured.stderr
    assert fake.calls == []  # refused locally: nothing sent
    assert run(["remove", "ghost"], captured, fake) == 2
    assert run(["drain", "node-z"], captured, fake) == 2
    assert run(["explain", "ghost"], captured, fake) == 2
    big = tmp_path / "big.toml"
    big.write_text('name = "big"\n[minimum]\ncpu = 9\n')
    assert run(["submit", str(big)], captured, fake) == 2  # refused by the control plane
    assert "does not fit" in captured.stderr
    assert "Traceback" not in captured.stderr + captured.stdout
    assert run(["frobnicate"], captured, fake) == 2  # unknown command: argparse usage error


def test_explain(captured: Captured, fake: FakeControlPlane) -> None:
    assert run(["explain", "web"], captured, fake) == 0
    out = captured.stdout
    assert "binding constraints" in out and "capacity" in out
    assert "0.9 / 0.95 / 0.99" in out and "66.7%" in out
    assert run(["explain", "web", "--json"], Captured(), fake) == 0


def test_policies_lists_the_registry(captured: Captured) -> None:
    assert run(["policies", "--json"], captured) == 0
    names = [p["name"] for p in json.loads(captured.stdout)]
    assert "fair_share" in names


def test_no_manager_is_a_runtime_failure(home: Path, captured: Captured) -> None:
    assert run(["status"], captured) == 1
    assert "no running manager" in captured.stderr
    assert len(captured.stderr.strip().splitlines()) == 1


def test_status_over_grpc_from_the_state_file(
    home: Path, captured: Captured, fake: FakeControlPlane
) -> None:
    server = serve(fake, "127.0.0.1:0", TOKEN)
    try:
        _, token_path = write_token(TOKEN)
        assert token_path.stat().st_mode & 0o777 == 0o600
        write_state(ManagerState(server.address, server.port, str(token_path), pid=1))
        assert run(["status"], captured) == 0
        assert "12.5 / 50 ms" in captured.stdout
        assert run(["remove", "batch"], captured) == 0 and "batch" not in fake.jobs
        write_token("wrong-token")
        assert run(["status"], captured) == 1  # UNAUTHENTICATED is not bad input
        assert "invalid admin token" in captured.stderr
    finally:
        server.stop(grace=None)
    assert run(["status"], captured) == 1  # the manager is gone: unreachable
    assert "cannot reach the manager" in captured.stderr


@pytest.mark.parametrize("argv", [["up"], ["submit"], ["demo", "--duration", "-5"]])
def test_usage_errors(argv: list[str], captured: Captured) -> None:
    assert run(argv, captured) == 2
