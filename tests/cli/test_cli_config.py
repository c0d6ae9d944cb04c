"""Config and job files: good files load; every kind of bad file is refused with the
file, the key path and what was expected, and the CLI exits 2 without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_mgr.cli import main
from cluster_mgr.config import (
    ConfigError,
    job_to_toml,
    load_config,
    load_job,
    parse_job_text,
)
from cluster_mgr.model import JobKind

ROOT = Path(__file__).resolve().parents[2]
GOOD_JOB = """
name = "web"
kind = "latency_critical"
weight = 2
replica_cpus = 0.5
pins = ["node-a"]
[slo]
target = 50
[minimum]
cpu = 0.5
custom = { accel = 1 }
[maximum]
cpu = 2
custom = { accel = 2 }
[workload]
model = "mmc"
service_ms = 6.0
nested = { a = [1, 2] }
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return info.value


def test_shipped_examples_load() -> None:
    config = load_config(ROOT / "examples" / "demo.toml")
    assert [j.name for j in config.jobs] == ["web", "api", "batch"]
    assert config.round_s == 10.0 and config.num_cpus == 4
    assert config.jobs[0].slo.target == 50.0
    assert config.jobs[2].kind is JobKind.THROUGHPUT
    for job_file in sorted((ROOT / "examples" / "jobs").glob("*.toml")):
        load_job(job_file)


def test_job_fields_and_round_trip(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD_JOB, "web.toml"))
    assert job.weight == 2.0 and job.pins == ("node-a",)
    assert job.minimum.cpu == 0.5 and job.minimum.get("accel") == 1.0
    assert job.maximum.cpu == 2.0
    # The workload stays an opaque dict, nested values included.
    assert job.workload == {"model": "mmc", "service_ms": 6.0, "nested": {"a": [1, 2]}}
    assert parse_job_text(job_to_toml(job)) == job


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[manager]\nround_s = "ten"\n', "manager.round_s", "expected a number, got string 'ten'"),
        ("[manager]\nshadow = 1\n", "manager.shadow", "expected true or false"),
        ("[manager]\nseed = 1.5\n", "manager.seed", "expected an integer"),
        ('[manager]\nadmin_bind = "localhost"\n', "manager.admin_bind", "expected 'host:port'"),
        ("[manager]\nround_s = 0.5\n", "manager.round_s", "at least telemetry_window_s"),
        (
            '[[jobs]]\nname = "a"\n[[jobs]]\nname = "b"\nweight = true\n',
            "jobs[1].weight",
            "expected a number, got boolean true",
        ),
        (
            '[[jobs]]\nname = "a"\n[jobs.slo]\ntarget = -5\n',
            "jobs[0].slo.target",
            "must be > 0",
        ),
        ('[[jobs]]\nname = "a"\nkind = "fast"\n', "jobs[0].kind", "expected one of"),
        ('[[jobs]]\nname = "Bad Name"\n', "jobs[0].name", "not a valid name"),
        ('[[jobs]]\nname = "a"\npins = ["x", 3]\n', "jobs[0].pins[1]", "expected a string"),
        (
            '[[jobs]]\nname = "a"\n[jobs.minimum]\ncpu = 3\n[jobs.maximum]\ncpu = 1\n',
            "jobs[0]",
            "minimum exceeds maximum",
        ),
        ('[[jobs]]\nname = "a"\n[[jobs]]\nname = "a"\n', "jobs[1].name", "duplicate job name"),
    ],
)
def test_bad_values_name_key_path(tmp_path: Path, text: str, key: str, expected: str) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert expected in err.detail


def test_unknown_keys_with_did_you_mean(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[jobs]]\nname = "a"\nwieght = 2\n')
    assert err.key == "jobs[0].wieght"
    assert "unknown key" in err.detail and "did you mean 'weight'?" in err.detail
    err = config_error(tmp_path, '[manager]\npolcy = "x"\n')
    assert err.key == "manager.polcy" and "did you mean 'policy'?" in err.detail
    err = config_error(tmp_path, '[[jobs]]\nname = "a"\n[jobs.minimum]\ncpus = 1\n')
    assert err.key == "jobs[0].minimum.cpus" and "did you mean 'cpu'?" in err.detail
    err = config_error(tmp_path, "[managr]\n")
    assert err.key == "managr" and "did you mean 'manager'?" in err.detail


def test_missing_keys(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[[jobs]]\nname = "a"\n[[jobs]]\nweight = 1\n')
    assert (err.key, err.detail) == ("jobs[1].name", "missing required key")
    err = config_error(tmp_path, '[[jobs]]\nname = "a"\n[jobs.slo]\npercentile = 95\n')
    assert err.key == "jobs[0].slo.target" and "missing required key" in err.detail


def test_bad_toml_syntax_and_missing_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[manager]\npolicy = "fair_share\n')
    assert "invalid TOML" in err.detail and "line 2" in err.detail
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(tmp_path / "nope.toml")


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_MGR_TOKEN", "from-env")
    assert load_config(write(tmp_path, "[manager]\n")).admin_token == "from-env"
    (tmp_path / "tok").write_text("from-file\n")
    cfg = load_config(write(tmp_path, '[manager]\nadmin_token_file = "tok"\n'))
    assert cfg.admin_token == "from-file"  # relative to the config file's folder
    cfg = load_config(write(tmp_path, '[manager]\nadmin_token = "inline"\n'))
    assert cfg.admin_token == "inline"
    err = config_error(tmp_path, '[manager]\nadmin_token = "a"\nadmin_token_file = "tok"\n')
    assert err.key == "manager.admin_token_file" and "not both" in err.detail
    err = config_error(tmp_path, '[manager]\nadmin_token_file = "missing"\n')
    assert "cannot read" in err.detail


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, '[manager]\nmetrics_bind = ""\n')).metrics_bind is None
    cfg = load_config(write(tmp_path, '[manager]\nmetrics_bind = "127.0.0.1:0"\n'))
    assert cfg.metrics_bind == "127.0.0.1:0"


def test_cli_refuses_bad_config_before_starting_anything(tmp_path: Path, home, captured) -> None:
    bad = write(tmp_path, '[manager]\nround_s = "ten"\n')
    code = main(["up", "--config", str(bad)], out=captured.out, err=captured.err)
    assert code == 2
    assert f"{bad}: manager.round_s: expected a number" in captured.stderr
    assert "Traceback" not in captured.stderr
    assert not home.exists()  # no token, no state file, no process: nothing started


def test_cli_bad_job_file_in_a_real_process(tmp_path: Path, home) -> None:
    bad = write(tmp_path, 'name = "web"\n[slo]\ntarget = "fast"\n', "job.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "cluster_mgr.cli", "submit", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 2
    assert f"{bad}: slo.target: expected a number, got string 'fast'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("manager", "key", "expected"),
    [
        ('policy = "utilitarain"', "manager.policy", "did you mean 'utilitarian'?"),
        ("policy_options = { bogus = 1 }", "manager.policy_options", "bogus"),
        ('learner = "intervall"', "manager.learner", "did you mean 'interval'?"),
        ("learner_options = { zzz = 1 }", "manager.learner_options", "zzz"),
    ],
)
def test_unknown_policy_or_learner(tmp_path: Path, manager: str, key: str, expected: str) -> None:
    err = config_error(tmp_path, f"[manager]\n{manager}\n")
    assert err.key == key and expected in err.detail


def test_the_documented_example_loads(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "admin.token").write_text("s3cret\n")
    config = load_config(write(tmp_path, example))
    assert config.policy == "utilitarian" and config.admin_token == "s3cret"
    assert [j.name for j in config.jobs] == ["web", "batch"]
    assert config.jobs[0].maximum.get("accel") == 1.0
    assert config.jobs[1].slo.metric == "throughput"
