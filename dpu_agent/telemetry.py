"""Mesh stats -> per-job counters for one telemetry window (TelemetryWindow.extras).

Pure. The NodeAgent polls its mesh agent once per telemetry window and calls
``job_window`` with the previous and current MeshStats: Envoy's cumulative
counters become per-window deltas, summed over the job's clusters, under
Envoy's own stat names (prefixed ``mesh.``), and the device counters pass
through. Requests the proxy rejected (rate limit, breaker overflow, device
shed) are SLO misses (DESIGN.md); ``mesh.rejected`` sums them.

Latency: Envoy's ``upstream_rq_time`` histogram of each of the job's clusters,
as the difference of its fine bucket totals between the two samples, so the
window's P50 / P99 are those of exactly the requests Envoy recorded in between
(at Envoy's bucket resolution, interpolated within a bucket), merged exactly
over clusters: ``mesh.upstream_rq_time_p50_ms`` / ``_p99_ms`` for the job and
``mesh.to.<node>.upstream_rq_time_p50_ms`` / ``_p99_ms`` per upstream node (NaN
for no requests). Envoy merges histograms into its admin view at each stats
flush (1 s), so a request shows there up to 1 s after its counters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from dpu_agent import config as cfg
from dpu_agent.client import MeshStats
from dpu_agent.placement import cluster_name, safe_name

CLUSTER_STATS = (
    "upstream_rq_total", "upstream_rq_2xx", "upstream_rq_4xx", "upstream_rq_5xx",
    "upstream_rq_pending_overflow", "upstream_rq_timeout",
)


Buckets = dict[tuple[float, float], int]  # (lower_bound, width) -> count


def histogram_delta(prev: MeshStats, now: MeshStats, clusters: Iterable[str]) -> Buckets:
    """The ``upstream_rq_time`` requests recorded between two samples, over ``clusters``."""
    out: Buckets = {}
    for c in clusters:
        name = f"cluster.{c}.upstream_rq_time"
        before = {(lb, w): n for lb, w, n in prev.buckets.get(name, ())}
        for lb, w, n in now.buckets.get(name, ()):
            d = n - before.get((lb, w), 0)
            if d > 0:  # (< 0 only if Envoy restarted between the samples)
                out[(lb, w)] = out.get((lb, w), 0) + d
    return out


def quantile_ms(hist: Buckets, q: float) -> float:
    """The ``q`` quantile (0..1) of a bucket histogram, interpolated within its bucket."""
    total = sum(hist.values())
    if total <= 0:
        return math.nan
    need = q * total
    seen = 0
    for (lb, w), n in sorted(hist.items()):
        if seen + n >= need:
            return lb + w * max(0.0, need - seen) / n
        seen += n
    lb, w = max(hist)
    return lb + w


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
    clusters = {node: cluster_name(job, node) for node in upstream_nodes}
    hist = histogram_delta(prev, now, clusters.values())
    out["mesh.upstream_rq_time_count"] = float(sum(hist.values()))
    out["mesh.upstream_rq_time_p50_ms"] = quantile_ms(hist, 0.50)
    out["mesh.upstream_rq_time_p99_ms"] = quantile_ms(hist, 0.99)
    for node, c in clusters.items():
        h = histogram_delta(prev, now, (c,))
        out[f"mesh.to.{node}.upstream_rq_time_p50_ms"] = quantile_ms(h, 0.50)
        out[f"mesh.to.{node}.upstream_rq_time_p99_ms"] = quantile_ms(h, 0.99)
    out.update(now.device)
    return out
