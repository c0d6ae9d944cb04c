"""Side-by-side benchmark: baselines, our policies and the oracle on one scenario, several seeds.

Each (policy, seed) run is independent, so runs go to a process pool; every
run writes its own folder (summary.json, run.npz, plots, telemetry log) under
``<out>/<policy>/seed-<n>``. The parent then scores regret against the oracle
run of the same seed, averages over seeds, and computes each metric's ratio to
the best baseline and to the oracle.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster_mgr.metrics_calc import (
    METRIC_KEYS,
    best_of,
    ratio,
    regret,
    summarize,
)
from cluster_mgr.scenario import load_scenario
from cluster_mgr.sim.engine import SimOptions, run_scenario
from cluster_mgr.sim.result import RunResult
from cluster_mgr.store import write_json_atomic

ORACLES = {
    "utilitarian": "oracle_utilitarian",
    "egalitarian": "oracle_egalitarian",
    "nash": "oracle_nash",
    "p99": "oracle_utilitarian",
}


def oracle_for(objective: str) -> str:
    return ORACLES.get(objective, "oracle_utilitarian")


def policy_kind(name: str) -> str:
    from allocators.registry import policy_class

    return str(getattr(policy_class(name), "kind", "baseline"))


def all_policies(kinds: set[str] | None = None) -> list[str]:
    """Every registered policy that is not an oracle and can be built with default options;
    with ``kinds`` (the scenario's job kinds), a policy for one job kind only when it has some."""
    from allocators.registry import KIND_POLICIES, get_policy, list_policies

    out = []
    for info in list_policies():
        if info.kind == "oracle":
            continue
        if info.name in KIND_POLICIES and (kinds is None or KIND_POLICIES[info.name] not in kinds):
            continue
        try:
            get_policy(info.name)
        except Exception:  # a policy that needs options (or fails to load) does not apply as-is
            continue
        out.append(info.name)
    return out


@dataclass(frozen=True)
class Task:
    scenario_path: str
    policy: str
    seed: int
    duration_s: float | None
    out_dir: str


def run_task(task: Task) -> tuple[str, int, str, dict[str, Any] | None, str]:
    """One run in a worker process: returns (policy, seed, run folder, summary or None, error)."""
    from cluster_mgr.sim.plots import plot_run

    out = Path(task.out_dir)
    try:
        sc = load_scenario(task.scenario_path)
        r = run_scenario(
            sc,
            SimOptions(policy=task.policy, seed=task.seed, duration_s=task.duration_s, out_dir=out),
        )
        r.save(out / "run.npz")
        summary = {"policy": task.policy, "seed": task.seed, **summarize(r)}
        write_json_atomic(str(out / "summary.json"), summary)
        plot_run(r, out)
        return task.policy, task.seed, str(out), summary, ""
    except Exception as exc:  # one failing policy must not sink the whole bench
        return task.policy, task.seed, str(out), None, f"{type(exc).__name__}: {exc}"


def run_bench(
    scenario_path: str,
    policies: Sequence[str],
    seeds: int,
    out: Path,
    *,
    duration_s: float | None = None,
    workers: int | None = None,
    on_done: Callable[[str, int, str], None] | None = None,
) -> dict[str, Any]:
    sc = load_scenario(scenario_path)  # refuse a bad scenario before any worker starts
    oracle = oracle_for(sc.objective)
    names = [p for p in dict.fromkeys(policies) if p != oracle] + [oracle]
    kinds = {p: policy_kind(p) for p in names}
    seed_list = [sc.seed + i for i in range(seeds)]
    tasks = [
        Task(str(scenario_path), p, s, duration_s, str(out / p / f"seed-{s}"))
        for p in names
        for s in seed_list
    ]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    done: dict[tuple[str, int], tuple[str, dict[str, Any] | None, str]] = {}
    if n_workers == 1:
        for t in tasks:
            p, s, folder, summary, err = run_task(t)
            done[(p, s)] = (folder, summary, err)
            if on_done:
                on_done(p, s, err)
    else:
        ctx = mp.get_context("spawn")  # no fork of a process holding Arrow and BLAS threads
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futs = [pool.submit(run_task, t) for t in tasks]
            for f in as_completed(futs):
                p, s, folder, summary, err = f.result()
                done[(p, s)] = (folder, summary, err)
                if on_done:
                    on_done(p, s, err)
    return _collect(sc.name, names, kinds, oracle, seed_list, done, out)


def _collect(
    scenario: str,
    names: list[str],
    kinds: dict[str, str],
    oracle: str,
    seeds: list[int],
    done: dict[tuple[str, int], tuple[str, dict[str, Any] | None, str]],
    out: Path,
) -> dict[str, Any]:
    errors = {f"{p}/seed-{s}": err for (p, s), (_, _, err) in done.items() if err}
    results: dict[str, dict[str, float | None]] = {}
    extras: dict[str, dict[str, float | None]] = {}
    runs: dict[str, RunResult] = {}
    for p in names:
        per_seed = []
        per_extra = []
        for s in seeds:
            folder, summary, _ = done[(p, s)]
            if summary is None:
                continue
            m = dict(summary["metrics"])
            o_folder, o_summary, _ = done.get((oracle, s), ("", None, ""))
            if o_summary is not None:
                mine = RunResult.load(Path(folder) / "run.npz")
                theirs = RunResult.load(Path(o_folder) / "run.npz")
                m["regret"] = regret(mine, theirs)
                if s == seeds[0]:
                    runs[p] = mine
            per_seed.append(m)
            per_extra.append(summary.get("extra", {}))
        if per_seed:
            results[p] = {k: _avg([m.get(k) for m in per_seed]) for k in METRIC_KEYS}
            extras[p] = {k: _avg([e.get(k) for e in per_extra]) for k in per_extra[0]}
    ours = [p for p in results if kinds.get(p) == "ours"]
    baselines = [p for p in results if kinds.get(p) not in ("ours", "oracle")]
    ratios = {}
    for p in ours:
        ratios[p] = {}
        for k in METRIC_KEYS:
            best = best_of([results[b][k] for b in baselines], k)
            ratios[p][k] = {
                "vs_best_baseline": ratio(results[p][k], best),
                "vs_oracle": ratio(results[p][k], results.get(oracle, {}).get(k)),
            }
    gap = _gap_closed(results, ours, baselines, oracle)
    report = {
        "scenario": scenario,
        "seeds": seeds,
        "results": results,
        "oracle": oracle if oracle in results else None,
        "ours": ours,
        "baselines": baselines,
        "ratios": ratios,
        "gap_closed": gap,
        "extra": extras,
        "errors": errors,
    }
    write_json_atomic(str(out / "bench.json"), report)
    if runs:
        from cluster_mgr.sim.plots import plot_bench

        plot_bench(runs, results, out)
    return report


def _gap_closed(
    results: dict[str, dict[str, float | None]], ours: list[str], baselines: list[str], oracle: str
) -> dict[str, dict[str, float | None]]:
    """Per ours, per welfare metric: (ours - best baseline) / (oracle - best baseline)."""
    out: dict[str, dict[str, float | None]] = {}
    for p in ours:
        out[p] = {}
        for k in ("utilitarian_welfare", "egalitarian_welfare", "nash_welfare"):
            best = best_of([results[b][k] for b in baselines], k)
            o = results.get(oracle, {}).get(k)
            v = results[p][k]
            if None in (best, o, v) or abs(o - best) < 1e-9:  # type: ignore[operator]
                out[p][k] = None
            else:
                out[p][k] = (v - best) / (o - best)  # type: ignore[operator]
    return out


def _avg(values: list[Any]) -> float | None:
    vals = [
        float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    return float(np.mean(vals)) if vals else None


#: Short column headers for the printed tables (full keys are in bench.json and the report).
SHORT = {
    "utilitarian_welfare": "util", "egalitarian_welfare": "egal", "nash_welfare": "nash",
    "fairness_violation": "fairviol", "p99_ms": "p99 ms", "goodput": "goodput",
    "slo_violation_magnitude": "viol mag", "slo_violation_duration_s": "viol s",
    "slo_violation_rate": "viol rate", "recovery_time_s": "recov s", "cpu_seconds": "cpu-s",
    "effective_machine_utilization": "EMU", "decision_ms_p50": "dec ms", "reversals_per_hour": "rev/h",
    "regret": "regret",
}  # fmt: skip


def table_policies(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(policy, kind) in print order: baselines, ours, oracles (the main oracle last)."""
    out = [(p, "baseline") for p in report["baselines"]] + [(p, "ours") for p in report["ours"]]
    extra = [
        p
        for p in report["results"]
        if p not in report["baselines"] + report["ours"] + [report["oracle"]]
    ]
    out += [(p, "oracle") for p in extra]
    if report["oracle"]:
        out.append((report["oracle"], "oracle"))
    return out


def value_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per policy: name, kind, then every metric (METRIC_KEYS order)."""
    return [
        [p, kind, *(_fmt(report["results"][p][k]) for k in METRIC_KEYS)]
        for p, kind in table_policies(report)
    ]


def ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per policy of ours: every metric as 'ratio to best baseline / ratio to oracle'."""
    rows = []
    for p in report["ours"]:
        r = report["ratios"][p]
        rows.append(
            [
                p,
                *(
                    f"{_fmt(r[k]['vs_best_baseline'])}/{_fmt(r[k]['vs_oracle'])}"
                    for k in METRIC_KEYS
                ),
            ]
        )
    return rows


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def load_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
