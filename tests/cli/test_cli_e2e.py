"""End to end on a real local Ray instance: the demo, and up / status / submit / down.

Each test runs the real console script in a subprocess, as a user would, and
leaves nothing running: the demo stops its Ray instance itself; the up/down
test always runs 'down' (and kills the manager by its recorded pid if that fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cluster_mgr.store import RunLog

ROOT = Path(__file__).resolve().parents[2]
CLI = shutil.which("cluster-mgr", path=str(Path(sys.executable).parent)) or "cluster-mgr"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.ray
def test_demo_writes_summary_and_log(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = cli("demo", "--duration", "40", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "summary:" in proc.stdout and "round" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] >= 2
    assert summary["windows_ingested"] > 0 and summary["lost_windows"] == 0
    assert set(summary["jobs"]) == {"web", "api", "batch"}
    for name, job in summary["jobs"].items():
        assert job["windows"] > 0 and job["offered"] > 0, name
        assert job["p99_ms"] is not None and job["p99_ms"] > 0, name
    assert len(summary["allocations"]) >= 2
    assert summary["config"]["admin_token"] == "<redacted>"
    # The telemetry log stays in the run folder and holds what the summary counted.
    telemetry = RunLog(str(out / "log")).read("telemetry")
    assert telemetry.num_rows >= sum(j["windows"] for j in summary["jobs"].values())


@pytest.mark.ray
@pytest.mark.slow
def test_up_status_submit_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "manager.toml"
    config.write_text(
        (ROOT / "examples" / "demo.toml")
        .read_text()
        .replace('admin_bind = "127.0.0.1:50151"', 'admin_bind = "127.0.0.1:0"')
        .replace('metrics_bind = "127.0.0.1:9464"', 'metrics_bind = "127.0.0.1:0"')
        .replace('log_uri = "runs/demo/log"', f'log_uri = "{tmp_path / "log"}"')
    )
    env = {"CLUSTER_MGR_HOME": str(home)}
    try:
        up = cli("up", "--config", str(config), env=env)
        assert up.returncode == 0, up.stderr[-2000:]
        state = json.loads((home / "manager.json").read_text())
        assert (home / "token").stat().st_mode & 0o777 == 0o600
        again = cli("up", "--config", str(config), env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        status = cli("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert {j["name"] for j in json.loads(status.stdout)["jobs"]} == {"web", "api", "batch"}
        submit = cli("submit", str(ROOT / "examples" / "jobs" / "report.toml"), env=env)
        assert submit.returncode == 0, submit.stderr
        status = cli("status", "--json", env=env)
        assert "report" in {j["name"] for j in json.loads(status.stdout)["jobs"]}
        assert cli("explain", "web", env=env).returncode == 0
        missing = cli("remove", "ghost", env=env)
        assert missing.returncode == 2 and "Traceback" not in missing.stderr
        assert cli("remove", "report", env=env).returncode == 0
        import urllib.request

        with urllib.request.urlopen(f"http://{state['metrics_address']}/metrics") as r:
            assert "cluster_mgr_job_allocation" in r.read().decode()
    finally:
        down = cli("down", env=env)
        if (home / "manager.json").exists():  # 'down' failed: stop what this test started
            pid = json.loads((home / "manager.json").read_text())["pid"]
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
    assert down.returncode == 0, down.stderr
    assert not (home / "manager.json").exists()
    assert not psutil.pid_exists(state["pid"])
