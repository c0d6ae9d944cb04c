"""Mesh stats -> per-job counters for one telemetry window (TelemetryWindow.extras).

Pure. The NodeAgent polls its mesh agent once per telemetry window and calls
``job_window`` with the previous and current MeshStats: Envoy's cumulative
counters become per-window deltas, summed over the job's clusters, under
Envoy's own stat names (prefixed ``mesh.``), and the device counters pass
through. Requests the proxy rejected (rate limit, breaker overflow, device
shed) are SLO misses (DESIGN.md); ``mesh.rejected`` sums them.
"""

from __future__ import annotations

from dpu_agent import config as cfg
from dpu_agent.client import MeshStats
from dpu_agent.placement import cluster_name, safe_name

CLUSTER_STATS = (
    "upstream_rq_total", "upstream_rq_2xx", "upstream_rq_4xx", "upstream_rq_5xx",
    "upstream_rq_pending_overflow", "upstream_rq_timeout",
)


def job_window(job: str, upstream_nodes: list[str], prev: MeshStats, now: MeshStats) -> dict[str, float]:
    def delta(name: str) -> float:
        return max(0.0, now.counter(name) - prev.counter(name))

    out: dict[str, float] = {f"mesh.{s}": 0.0 for s in CLUSTER_STATS}
    ejections = 0.0
    for node in upstream_nodes:
        c = cluster_name(job, node)
        for s in CLUSTER_STATS:
            out[f"mesh.{s}"] += delta(f"cluster.{c}.{s}")
        ejections += now.cluster(c, "outlier_detection.ejections_active")  # a gauge: no delta
    out["mesh.ejections_active"] = ejections
    prefix = cfg.rate_limit_stat_prefix(safe_name(job))
    out["mesh.rate_limited"] = delta(f"{prefix}.http_local_rate_limit.rate_limited")
    out["mesh.rejected"] = out["mesh.rate_limited"] + out["mesh.upstream_rq_pending_overflow"]
    out.update(now.device)
    return out
