"""MeshResources <-> mesh.proto messages. Unset optional fields take Envoy's defaults."""

from __future__ import annotations

from typing import Any

from cluster_mgr.protos import load
from dpu_agent import config as cfg

PROTO = "dpu_agent/mesh.proto"


def pb() -> Any:
    """The generated message module (compiled on first use)."""
    return load(PROTO)[0]


def _opt(msg: Any, name: str, default: int) -> int:
    return int(getattr(msg, name)) if msg.HasField(name) else default


def resources_from_proto(msg: Any) -> cfg.MeshResources:
    clusters = []
    for c in msg.clusters:
        cb = c.circuit_breakers
        od = None
        if c.HasField("outlier_detection"):
            o = c.outlier_detection
            od = cfg.OutlierDetection(
                consecutive_5xx=_opt(o, "consecutive_5xx", cfg.DEFAULT_CONSECUTIVE_5XX),
                interval_ms=_opt(o, "interval_ms", cfg.DEFAULT_OD_INTERVAL_MS),
                base_ejection_time_ms=_opt(o, "base_ejection_time_ms", cfg.DEFAULT_BASE_EJECTION_MS),
                max_ejection_percent=_opt(o, "max_ejection_percent", cfg.DEFAULT_MAX_EJECTION_PERCENT),
            )
        clusters.append(
            cfg.Cluster(
                name=c.name,
                endpoints=tuple(
                    cfg.Endpoint(e.host, int(e.port), int(e.weight) if e.weight != 0 else 1)
                    for e in c.endpoints
                ),
                connect_timeout_ms=_opt(c, "connect_timeout_ms", cfg.DEFAULT_CONNECT_TIMEOUT_MS),
                circuit_breakers=cfg.CircuitBreakers(
                    max_connections=_opt(cb, "max_connections", cfg.DEFAULT_MAX_CONNECTIONS),
                    max_pending_requests=_opt(cb, "max_pending_requests", cfg.DEFAULT_MAX_PENDING),
                    max_requests=_opt(cb, "max_requests", cfg.DEFAULT_MAX_REQUESTS),
                    max_retries=_opt(cb, "max_retries", cfg.DEFAULT_MAX_RETRIES),
                ),
                outlier_detection=od,
            )
        )
    routes = tuple(
        cfg.Route(
            name=r.name,
            domain=r.domain,
            prefix=r.prefix or "/",
            targets=tuple(cfg.WeightedTarget(w.cluster, int(w.weight)) for w in r.clusters),
            rate_limit=r.rate_limit,
            timeout_ms=_opt(r, "timeout_ms", cfg.DEFAULT_ROUTE_TIMEOUT_MS),
            fault=r.fault,
        )
        for r in msg.routes
    )
    limits = tuple(
        cfg.RateLimit(rl.name, int(rl.max_tokens), int(rl.tokens_per_fill), int(rl.fill_interval_ms))
        for rl in msg.rate_limits
    )
    faults = tuple(
        cfg.Fault(f.name, int(f.delay_ms), float(f.percent) if f.HasField("percent") else 100.0)
        for f in msg.faults
    )
    return cfg.MeshResources(tuple(clusters), routes, limits, faults)


def resources_to_proto(res: cfg.MeshResources) -> Any:
    m = pb()
    out = m.Resources()
    for c in res.clusters:
        pc = out.clusters.add(name=c.name, connect_timeout_ms=c.connect_timeout_ms)
        for e in c.endpoints:
            pc.endpoints.add(host=e.host, port=e.port, weight=e.weight)
        cb = c.circuit_breakers
        pc.circuit_breakers.CopyFrom(
            m.CircuitBreakers(
                max_connections=cb.max_connections, max_pending_requests=cb.max_pending_requests,
                max_requests=cb.max_requests, max_retries=cb.max_retries,
            )
        )
        if c.outlier_detection is not None:
            od = c.outlier_detection
            pc.outlier_detection.CopyFrom(
                m.OutlierDetection(
                    consecutive_5xx=od.consecutive_5xx, interval_ms=od.interval_ms,
                    base_ejection_time_ms=od.base_ejection_time_ms,
                    max_ejection_percent=od.max_ejection_percent,
                )
            )
    for r in res.routes:
        pr = out.routes.add(
            name=r.name, domain=r.domain, prefix=r.prefix, rate_limit=r.rate_limit,
            timeout_ms=r.timeout_ms, fault=r.fault,
        )
        for t in r.targets:
            pr.clusters.add(cluster=t.cluster, weight=t.weight)
    for rl in res.rate_limits:
        out.rate_limits.add(
            name=rl.name, max_tokens=rl.max_tokens, tokens_per_fill=rl.tokens_per_fill,
            fill_interval_ms=rl.fill_interval_ms,
        )
    for f in res.faults:
        out.faults.add(name=f.name, delay_ms=f.delay_ms, percent=f.percent)
    return out
