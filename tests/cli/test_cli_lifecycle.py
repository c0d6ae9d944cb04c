"""up/down plumbing without Ray: the manager process (daemon.run) on a fake manager,
'down' on a process we start, and the run summary computed from a run log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_fakes import TOKEN, Captured, FakeControlPlane

from cluster_mgr.admin import daemon
from cluster_mgr.admin.client import AdminClient
from cluster_mgr.admin.state import (
    ManagerState,
    process_started,
    read_state,
    state_path,
    write_state,
    write_token,
)
from cluster_mgr.admin.summary import build_summary
from cluster_mgr.cli import main
from cluster_mgr.model import (
    SLO,
    Allocation,
    JobSpec,
    ResourceVector,
    TelemetryWindow,
    histogram_percentile,
    latency_histogram,
)
from cluster_mgr.settings import ManagerConfig
from cluster_mgr.store import RunLog
from cluster_mgr.telemetry import windows_to_batch


class FakeManager(FakeControlPlane):
    """The RayManager surface (start/stop + ControlPlane) without Ray."""

    def __init__(self, config: ManagerConfig) -> None:
        super().__init__()
        self.config = config
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def wait_for(predicate, what: str, limit: int = 500) -> None:
    for _ in range(limit):  # bounded polling, no wall-clock assertion
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_serves_admin_and_metrics_then_cleans_up(home: Path) -> None:
    _, token_path = write_token(TOKEN)
    config = ManagerConfig(
        admin_bind="127.0.0.1:0",
        admin_token=TOKEN,
        metrics_bind="127.0.0.1:0",
        telemetry_window_s=0.05,
    )
    managers: list[FakeManager] = []

    def factory(cfg: ManagerConfig) -> FakeManager:
        managers.append(FakeManager(cfg))
        return managers[-1]

    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(daemon.run(config, str(token_path), "", stop, factory))
    )
    thread.start()
    try:
        wait_for(state_path().exists, "the state file")
        state = read_state()
        assert state.token_path == str(token_path) and state.metrics_address
        with AdminClient.from_state() as client:
            assert client.status().round == 3
        import urllib.request

        def scraped() -> bool:
            url = f"http://{state.metrics_address}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return 'cluster_mgr_job_p99_ms{job="web"} 12.5' in resp.read().decode()

        wait_for(scraped, "metrics from the status")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]
    assert managers[0].started and managers[0].stopped
    assert not state_path().exists()  # down -> no state file


def test_down_stops_the_recorded_process(home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _, token_path = write_token(TOKEN)
        write_state(
            ManagerState("127.0.0.1:1", 1, str(token_path), proc.pid, process_started(proc.pid))
        )
        captured = Captured()
        assert main(["down"], out=captured.out, err=captured.err) == 0
        proc.wait(timeout=30)  # 'down' waited for it to exit (and, as its parent here, reaped it)
        assert not state_path().exists()
        assert f"manager down (pid {proc.pid})" in captured.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_down_with_a_dead_process_removes_the_stale_state(home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_state(ManagerState("127.0.0.1:1", 1, "/nonexistent", pid=proc.pid))
    captured = Captured()
    assert main(["down"], out=captured.out, err=captured.err) == 0
    assert not state_path().exists() and "is gone" in captured.stdout


def test_summary_from_the_run_log(tmp_path: Path) -> None:
    log = RunLog(str(tmp_path / "log"))
    rng = np.random.default_rng(3)
    windows, all_latencies = [], []
    for seq in range(20):
        lat = rng.exponential(10.0, size=100)
        if seq >= 5:  # the first 5 s are warm-up
            all_latencies.append(lat)
        within = int((lat <= 30.0).sum())
        windows.append(
            TelemetryWindow(
                job="web", node_id="n1", replica="web-0", seq=seq, start=100.0 + seq,
                end=101.0 + seq, offered=100, completed=100, within_slo=within,
                latency_p99_ms=float(np.percentile(lat, 99)),
                latency_hist=tuple(int(x) for x in latency_histogram(lat)),
            )
        )  # fmt: skip
    log.append("telemetry", windows_to_batch(windows))
    for r in (1, 2):
        alloc = Allocation({"web": ResourceVector(cpu=1.0 + r)}, round=r, policy="fair_share")
        log.append_decision(round=r, epoch=0, time=float(r), policy="fair_share",
                            allocation=alloc, plan={}, policy_state={}, decision_ms=3.0)  # fmt: skip
    config = ManagerConfig(admin_token="secret", jobs=(JobSpec("web", slo=SLO(target=30.0)),))
    summary = build_summary(config, log, None, [], duration_s=20.0, warmup_s=5.0)
    web = summary["jobs"]["web"]
    assert web["windows"] == 15 and web["offered"] == 1500
    merged = latency_histogram(np.concatenate(all_latencies))
    assert web["p99_ms"] == pytest.approx(histogram_percentile(merged, 99.0))
    assert web["reward"] == pytest.approx(sum(w.within_slo for w in windows[5:]) / 1500)
    assert [a["amounts"]["web"]["cpu"] for a in summary["allocations"]] == [2.0, 3.0]
    assert summary["config"]["admin_token"] == "<redacted>"
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN anywhere


def test_down_never_signals_a_reused_pid(home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # Same pid, different start time: the recorded manager is gone, this is someone else.
        stale = process_started(proc.pid) - 1000.0
        write_state(ManagerState("127.0.0.1:1", 1, "/nonexistent", proc.pid, stale))
        captured = Captured()
        assert main(["down"], out=captured.out, err=captured.err) == 0
        assert "is gone" in captured.stdout and proc.poll() is None  # left alone
    finally:
        proc.kill()
        proc.wait()


class RoundingManager(FakeManager):
    """A fake manager that decides a new round every third status call."""

    def status(self):  # type: ignore[no-untyped-def]
        self.polls = getattr(self, "polls", 0) + 1
        self.round = 1 + self.polls // 3
        return super().status()


def test_demo_loop_records_rounds_and_writes_summary(tmp_path: Path) -> None:
    from cluster_mgr.admin.demo import Demo, summary_table

    captured = Captured()
    config = ManagerConfig(
        round_s=10.0, jobs=(JobSpec("web", slo=SLO(target=50.0), workload={"load_rps": 5}),)
    )
    made: list[FakeManager] = []
    loads: list[str] = []

    def factory(cfg: ManagerConfig) -> FakeManager:
        made.append(RoundingManager(cfg))
        return made[-1]

    demo = Demo(
        config,
        tmp_path / "run",
        duration_s=0.5,
        console=captured.out,
        factory=factory,
        poll_s=0.02,
        load_starter=lambda cfg, d: loads.append("start") or ["gen"],
        load_stopper=lambda gens: loads.append("stop") or {"web": {"ok": 3, "p99_ms": 1.5}},
    )
    summary = demo.run()
    # The demo gives the manager its own log folder, token and free admin port.
    cfg = made[0].config
    assert cfg.log_uri == str(tmp_path / "run" / "log") and cfg.admin_token
    assert cfg.admin_bind == "127.0.0.1:0" and cfg.metrics_bind is None
    assert made[0].started and made[0].stopped and loads == ["start", "stop"]
    rounds = [r["round"] for r in summary["observed_rounds"]]
    assert rounds == sorted(set(rounds)) and len(rounds) >= 2  # one record per round
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["observed_rounds"] == summary["observed_rounds"]
    assert on_disk["load_generators"] == {"web": {"ok": 3, "p99_ms": 1.5}}
    assert on_disk["config"]["admin_token"] == "<redacted>" and not on_disk["interrupted"]
    # Not a terminal: one printed table per round, not a redraw per poll.
    assert captured.stdout.count("round ") >= len(rounds)
    assert "12.5 / 50 ms" in captured.stdout
    captured.out.print(summary_table(summary))
