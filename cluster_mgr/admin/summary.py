"""What a finished run amounts to: per-job latency, reward and allocations over rounds.

Computed from the run log (the durable record), not from what a live view
happened to see: request-level P99 from the merged latency histograms of every
window after the warm-up, the mean of per-window P99s beside it (DESIGN.md,
"Headline P99"), reward as the fraction of offered requests within the SLO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from cluster_mgr.control.api import Status
from cluster_mgr.model import histogram_percentile
from cluster_mgr.settings import ManagerConfig
from cluster_mgr.store import RunLog
from cluster_mgr.telemetry import merged_histogram

REDACTED = "<redacted>"


def config_record(config: ManagerConfig) -> dict[str, Any]:
    """The config as plain data, with the admin token left out (summaries get shared)."""
    d = asdict(config)
    if d.get("admin_token"):
        d["admin_token"] = REDACTED
    d["jobs"] = [_job_record(j) for j in d["jobs"]]
    return d


def _job_record(job: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(job)
    out["kind"] = str(out["kind"].value if hasattr(out["kind"], "value") else out["kind"])
    for key in ("minimum", "maximum"):
        vec = out.get(key)
        if isinstance(vec, Mapping):
            builtin = {k: v for k, v in vec.items() if k != "custom" and v}
            builtin.update(dict(vec.get("custom") or ()))
            out[key] = builtin
    out["workload"] = dict(out.get("workload") or {})
    return out


def _finite(x: float) -> float | None:
    """JSON has no NaN: missing statistics are null."""
    return float(x) if x is not None and math.isfinite(x) else None


def job_summaries(
    log: RunLog, slo_targets: Mapping[str, float | None], warmup_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Per job, over telemetry windows that start at least ``warmup_s`` after the first one."""
    table = log.read("telemetry")
    if table.num_rows == 0:
        return {}
    cols = table.select(
        ["job", "start", "offered", "completed", "rejected", "timed_out", "within_slo",
         "latency_p99_ms", "latency_hist"]
    ).to_pydict()  # fmt: skip
    t0 = min(cols["start"])
    out: dict[str, dict[str, Any]] = {}
    for job in sorted(set(cols["job"])):
        idx = [
            i for i, j in enumerate(cols["job"]) if j == job and cols["start"][i] >= t0 + warmup_s
        ]
        offered = sum(cols["offered"][i] or 0 for i in idx)
        within = sum(cols["within_slo"][i] or 0 for i in idx)
        p99s = np.array(
            [p for i in idx if (p := cols["latency_p99_ms"][i]) is not None and math.isfinite(p)]
        )
        hist = merged_histogram(cols["latency_hist"][i] or () for i in idx)
        target = slo_targets.get(job)
        out[job] = {
            "windows": len(idx),
            "offered": int(offered),
            "completed": int(sum(cols["completed"][i] or 0 for i in idx)),
            "rejected": int(sum(cols["rejected"][i] or 0 for i in idx)),
            "timed_out": int(sum(cols["timed_out"][i] or 0 for i in idx)),
            "p99_ms": _finite(histogram_percentile(hist, 99.0)),
            "mean_window_p99_ms": _finite(float(p99s.mean())) if p99s.size else None,
            "reward": _finite(within / offered) if offered else None,
            "slo_target_ms": target,
            "windows_over_slo": (
                float(np.mean(p99s > target)) if target is not None and p99s.size else None
            ),
        }
    return out


def allocations_over_rounds(log: RunLog) -> list[dict[str, Any]]:
    """One entry per decided round: its time, policy, decision time and amounts per job."""
    rows = []
    for d in log.read_decisions():
        alloc = d.get("allocation") or {}
        rows.append(
            {
                "round": d["round"],
                "epoch": d["epoch"],
                "time": d["time"],
                "policy": d["policy"],
                "decision_ms": _finite(d["decision_ms"]),
                "enforced": d["enforced"],
                "amounts": alloc.get("amounts", {}),
            }
        )
    return rows


def build_summary(
    config: ManagerConfig,
    log: RunLog,
    final: Status | None,
    observed_rounds: Sequence[Mapping[str, Any]],
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """summary.json of a run. ``observed_rounds``: what the live view saw per round, used
    for allocations when the log holds no decisions (e.g. the manager died early)."""
    targets = {j.name: (j.slo.target if j.slo and j.slo.metric == "latency" else None)
               for j in config.jobs}  # fmt: skip
    decided = allocations_over_rounds(log)
    return {
        "config": config_record(config),
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "policy": final.policy if final else config.policy,
        "rounds": (final.round if final else 0),
        "decisions_logged": len(decided),
        "windows_ingested": final.telemetry_windows if final else 0,
        "lost_windows": final.lost_windows if final else 0,
        "jobs": job_summaries(log, targets, warmup_s),
        "allocations": decided or list(observed_rounds),
        "observed_rounds": list(observed_rounds),
        "log": log.uri,
    }
