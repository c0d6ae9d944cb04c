"""`cluster-mgr simulate` and `cluster-mgr bench` through the real CLI entry point."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from cluster_mgr.cli import main
from cluster_mgr.metrics_calc import METRIC_KEYS

SCENARIO = """
[scenario]
name = "tiny"
duration_s = 30
round_s = 10
warmup_s = 5
[cluster]
count = 1
resources = { cpu = 8 }
[[jobs]]
name = "a"
slo = { target = 100, percentile = 90 }
load = { rate = 100 }
workload = { model = "curve", family = "tanh", coeff = 100 }
[[jobs]]
name = "b"
slo = { target = 30 }
load = { rate = 400 }
workload = { model = "queue", service_ms = 5 }
"""


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=Console(file=out, width=200), err=Console(file=err, width=200))
    return code, out.getvalue(), err.getvalue()


def test_simulate_writes_summary_log_and_plots(tmp_path: Path) -> None:
    sc = tmp_path / "tiny.toml"
    sc.write_text(SCENARIO)
    code, out, err = run(
        ["simulate", str(sc), "--policy", "fair_share", "--seed", "2", "--out", str(tmp_path / "o")]
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["policy"] == "fair_share"
    assert set(summary["metrics"]) == set(METRIC_KEYS)
    assert summary["metrics"]["regret"] is None  # no oracle in a single run
    for f in ("allocation.png", "p99.png", "utility.png"):
        assert (tmp_path / "o" / f).stat().st_size > 1000
    assert list((tmp_path / "o" / "log" / "telemetry").glob("part-*.parquet"))


def test_bench_writes_the_contract(tmp_path: Path) -> None:
    sc = tmp_path / "tiny.toml"
    sc.write_text(SCENARIO)
    out = tmp_path / "b"
    code, text, err = run(
        ["bench", str(sc), "--policies", "fair_share,utilitarian", "--jobs", "1", "--out", str(out)]
    )
    assert code == 0, err
    bench = json.loads((out / "bench.json").read_text())
    assert bench["oracle"] == "oracle_utilitarian"
    assert bench["ours"] == ["utilitarian"] and bench["baselines"] == ["fair_share"]
    assert set(bench["results"]) == {"fair_share", "utilitarian", "oracle_utilitarian"}
    for metrics in bench["results"].values():
        assert set(metrics) == set(METRIC_KEYS)
    assert bench["results"]["oracle_utilitarian"]["regret"] == 0.0
    assert (out / "report.html").read_text().count("<img") >= 2
    assert "oracle_utilitarian" in text


def test_bad_scenario_exits_2_with_file_key_and_reason(tmp_path: Path) -> None:
    sc = tmp_path / "bad.toml"
    sc.write_text(SCENARIO.replace("cpu = 8", "cpu = -8"))
    for argv in (["simulate", str(sc), "--policy", "fair_share", "--out", str(tmp_path / "o")],
                 ["bench", str(sc), "--policies", "fair_share", "--out", str(tmp_path / "b")]):  # fmt: skip
        code, _, err = run(argv)
        assert code == 2
        assert f"{sc}: cluster.resources.cpu: expected an amount >= 0" in err
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


def test_unknown_policy_exits_2(tmp_path: Path) -> None:
    sc = tmp_path / "tiny.toml"
    sc.write_text(SCENARIO)
    code, _, err = run(
        ["simulate", str(sc), "--policy", "no_such_policy", "--out", str(tmp_path / "o")]
    )
    assert code == 2 and "unknown policy 'no_such_policy'" in err
