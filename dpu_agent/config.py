"""Mesh resources: plain data, validation, and translation to Envoy v3 JSON.

Pure (no gRPC, no files, no processes) so validation and translation are
tested in microseconds. The shapes and defaults mirror Envoy's own:

- a Cluster is an Envoy STATIC cluster whose ``load_assignment`` lists the
  endpoints with their ``load_balancing_weight`` (Envoy requires >= 1);
- a Route is a route entry of a virtual host (matched by Host header =
  ``domain`` and a path ``prefix``) whose action is ``weighted_clusters``;
- a RateLimit is an ``envoy.filters.http.local_ratelimit`` token bucket
  (max_tokens, tokens_per_fill, fill_interval >= 50 ms) attached per route;
  excess requests get 429 and count in ``<prefix>.http_local_rate_limit.rate_limited``;
- a Fault is an ``envoy.filters.http.fault`` fixed delay (``delay.fixed_delay``,
  ``delay.percentage``) attached per route: an emulated network-latency surge
  on the way to the job's replicas; delayed requests count in
  ``http.<prefix>.fault.delays_injected``;
- CircuitBreakers default to Envoy's (1024 connections, 1024 pending,
  1024 requests, 3 retries); OutlierDetection to Envoy's (5 consecutive 5xx,
  10 s interval, 30 s base ejection, 10 % max ejected).

``validate`` returns every problem it finds (an empty list means valid);
the agent NACKs with them and changes nothing.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Envoy's own defaults (envoy/config/cluster/v3/circuit_breaker.proto, outlier_detection.proto,
# route.proto RouteAction.timeout, cluster.proto connect_timeout).
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3
DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_OD_INTERVAL_MS = 10_000
DEFAULT_BASE_EJECTION_MS = 30_000
DEFAULT_MAX_EJECTION_PERCENT = 10
DEFAULT_CONNECT_TIMEOUT_MS = 5_000
DEFAULT_ROUTE_TIMEOUT_MS = 15_000
MIN_FILL_INTERVAL_MS = 50  # Envoy rejects a local rate limit fill_interval below 50 ms
UINT32_MAX = 2**32 - 1

ROUTE_CONFIG_NAME = "mesh_routes"
RATE_LIMIT_FILTER = "mesh.local_rate_limit"  # per-route buckets attach to this filter name
DEVICE_LIMIT_FILTER = "dpu.device_limit"  # the device-wide bucket (see device.DpuSpec.admission_rps)
FAULT_FILTER = "mesh.fault"  # per-route fault injection (delays) attaches to this filter name
MAX_FAULT_DELAY_MS = 60_000  # a delay longer than a minute is a partition, not a latency surge

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*-]{0,252}$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending_requests: int = DEFAULT_MAX_PENDING
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = DEFAULT_CONSECUTIVE_5XX
    interval_ms: int = DEFAULT_OD_INTERVAL_MS
    base_ejection_time_ms: int = DEFAULT_BASE_EJECTION_MS
    max_ejection_percent: int = DEFAULT_MAX_EJECTION_PERCENT


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    outlier_detection: OutlierDetection | None = None  # None: no outlier detection (Envoy's default)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: starts full at ``max_tokens``; ``tokens_per_fill`` added every
    ``fill_interval_ms``; a request takes one token or gets 429."""

    name: str
    max_tokens: int
    tokens_per_fill: int
    fill_interval_ms: int


@dataclass(frozen=True, slots=True)
class Fault:
    """A fixed delay before the request is forwarded upstream (Envoy's HTTP fault filter), on
    ``percent`` of the requests of every route that names it: an emulated network-latency
    surge. Envoy does the delaying; nothing is aborted."""

    name: str
    delay_ms: int
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class WeightedTarget:
    cluster: str
    weight: int


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    domain: str  # matched against the Host header (with or without a port)
    targets: tuple[WeightedTarget, ...]
    prefix: str = "/"
    rate_limit: str = ""  # name of a RateLimit, or "" for none
    timeout_ms: int = DEFAULT_ROUTE_TIMEOUT_MS
    fault: str = ""  # name of a Fault, or "" for none


@dataclass(frozen=True, slots=True)
class MeshResources:
    clusters: tuple[Cluster, ...] = ()
    routes: tuple[Route, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    faults: tuple[Fault, ...] = ()


# --------------------------------------------------------------------------- validation


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_range(errors: list[str], what: str, v: Any, lo: int, hi: int = UINT32_MAX) -> None:
    if not _is_int(v) or not lo <= v <= hi:
        errors.append(f"{what}: must be an integer in [{lo}, {hi}], got {v!r}")


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    return dup


def _validate_cluster(errors: list[str], c: Cluster) -> None:
    where = f"cluster {c.name!r}"
    if not isinstance(c.name, str) or not _NAME_RE.match(c.name):
        errors.append(f"{where}: name must match {_NAME_RE.pattern}")
    _check_range(errors, f"{where}: connect_timeout_ms", c.connect_timeout_ms, 1, 3_600_000)
    for i, ep in enumerate(c.endpoints):
        ew = f"{where}: endpoint {i}"
        try:
            ipaddress.ip_address(ep.host)
        except (ValueError, TypeError):
            errors.append(f"{ew}: host must be an IP address literal, got {ep.host!r}")
        _check_range(errors, f"{ew}: port", ep.port, 1, 65_535)
        _check_range(errors, f"{ew}: weight", ep.weight, 1)  # Envoy: load_balancing_weight >= 1
    dup = _duplicates(f"{ep.host}:{ep.port}" for ep in c.endpoints)
    if dup:
        errors.append(f"{where}: duplicate endpoints {dup}")
    cb = c.circuit_breakers
    for fname in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        _check_range(errors, f"{where}: circuit_breakers.{fname}", getattr(cb, fname), 0)
    od = c.outlier_detection
    if od is not None:
        _check_range(errors, f"{where}: outlier_detection.consecutive_5xx", od.consecutive_5xx, 1)
        _check_range(errors, f"{where}: outlier_detection.interval_ms", od.interval_ms, 1, 86_400_000)
        _check_range(
            errors, f"{where}: outlier_detection.base_ejection_time_ms",
            od.base_ejection_time_ms, 1, 86_400_000,
        )
        _check_range(
            errors, f"{where}: outlier_detection.max_ejection_percent", od.max_ejection_percent, 0, 100
        )


def _validate_rate_limit(errors: list[str], rl: RateLimit) -> None:
    where = f"rate_limit {rl.name!r}"
    if not isinstance(rl.name, str) or not _NAME_RE.match(rl.name):
        errors.append(f"{where}: name must match {_NAME_RE.pattern}")
    _check_range(errors, f"{where}: max_tokens", rl.max_tokens, 1)
    _check_range(errors, f"{where}: tokens_per_fill", rl.tokens_per_fill, 1)
    if _is_int(rl.fill_interval_ms) and rl.fill_interval_ms == 0:
        errors.append(f"{where}: fill_interval_ms must not be zero")
    else:
        _check_range(errors, f"{where}: fill_interval_ms", rl.fill_interval_ms, MIN_FILL_INTERVAL_MS)


def _validate_fault(errors: list[str], f: Fault) -> None:
    where = f"fault {f.name!r}"
    if not isinstance(f.name, str) or not _NAME_RE.match(f.name):
        errors.append(f"{where}: name must match {_NAME_RE.pattern}")
    _check_range(errors, f"{where}: delay_ms", f.delay_ms, 1, MAX_FAULT_DELAY_MS)
    p = f.percent
    # Envoy takes a FractionalPercent; a fault on no request is no fault (leave it out instead)
    if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or not 0 < p <= 100:
        errors.append(f"{where}: percent must be a number in (0, 100], got {p!r}")


def _validate_route(
    errors: list[str], r: Route, clusters: set[str], rate_limits: set[str], faults: set[str]
) -> None:
    where = f"route {r.name!r}"
    if not isinstance(r.name, str) or not _NAME_RE.match(r.name):
        errors.append(f"{where}: name must match {_NAME_RE.pattern}")
    if not isinstance(r.domain, str) or not _DOMAIN_RE.match(r.domain):
        errors.append(f"{where}: domain {r.domain!r} is not a host name")
    if not isinstance(r.prefix, str) or not r.prefix.startswith("/"):
        errors.append(f"{where}: prefix must start with '/', got {r.prefix!r}")
    _check_range(errors, f"{where}: timeout_ms", r.timeout_ms, 0, 86_400_000)
    if not r.targets:
        errors.append(f"{where}: needs at least one weighted cluster")
    total = 0
    for t in r.targets:
        if t.cluster not in clusters:
            errors.append(f"{where}: routes to unknown cluster {t.cluster!r}")
        if not _is_int(t.weight) or t.weight < 0:
            errors.append(f"{where}: weight of {t.cluster!r} must be a non-negative integer, got {t.weight!r}")
        elif t.weight > UINT32_MAX:
            errors.append(f"{where}: weight of {t.cluster!r} exceeds {UINT32_MAX}")
        else:
            total += t.weight
    if r.targets and total == 0:
        errors.append(f"{where}: weights sum to zero")
    if total > UINT32_MAX:
        errors.append(f"{where}: weights sum to more than {UINT32_MAX}")
    dup = _duplicates(t.cluster for t in r.targets)
    if dup:
        errors.append(f"{where}: cluster listed twice {dup}")
    if r.rate_limit and r.rate_limit not in rate_limits:
        errors.append(f"{where}: unknown rate_limit {r.rate_limit!r}")
    if r.fault and r.fault not in faults:
        errors.append(f"{where}: unknown fault {r.fault!r}")


def validate(res: MeshResources) -> list[str]:
    """Every problem in ``res``; empty when Envoy should accept it."""
    errors: list[str] = []
    for kind, names in (
        ("cluster", [c.name for c in res.clusters]),
        ("route", [r.name for r in res.routes]),
        ("rate_limit", [rl.name for rl in res.rate_limits]),
        ("fault", [f.name for f in res.faults]),
    ):
        dup = _duplicates(names)
        if dup:
            errors.append(f"duplicate {kind} names {dup}")
    for c in res.clusters:
        _validate_cluster(errors, c)
    for rl in res.rate_limits:
        _validate_rate_limit(errors, rl)
    for f in res.faults:
        _validate_fault(errors, f)
    clusters = {c.name for c in res.clusters}
    limits = {rl.name for rl in res.rate_limits}
    faults = {f.name for f in res.faults}
    for r in res.routes:
        _validate_route(errors, r, clusters, limits, faults)
    dup = _duplicates(f"{r.domain}{r.prefix}" for r in res.routes)
    if dup:
        errors.append(f"two routes match the same domain and prefix {dup}")
    return errors


# --------------------------------------------------------------------------- translation

_CLUSTER_T = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_ROUTE_CONFIG_T = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_LOCAL_RL_T = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_FAULT_T = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def _duration(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def envoy_cluster(c: Cluster) -> dict[str, Any]:
    cb = c.circuit_breakers
    out: dict[str, Any] = {
        "@type": _CLUSTER_T,
        "name": c.name,
        "type": "STATIC",
        "connect_timeout": _duration(c.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",  # weighted round robin over load_balancing_weight
        "load_assignment": {
            "cluster_name": c.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": ep.host, "port_value": ep.port}
                                }
                            },
                            "load_balancing_weight": ep.weight,
                        }
                        for ep in c.endpoints
                    ]
                }
            ]
            if c.endpoints
            else [],
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": cb.max_connections,
                    "max_pending_requests": cb.max_pending_requests,
                    "max_requests": cb.max_requests,
                    "max_retries": cb.max_retries,
                }
            ]
        },
    }
    od = c.outlier_detection
    if od is not None:
        out["outlier_detection"] = {
            "consecutive_5xx": od.consecutive_5xx,
            "interval": _duration(od.interval_ms),
            "base_ejection_time": _duration(od.base_ejection_time_ms),
            "max_ejection_percent": od.max_ejection_percent,
        }
    return out


def rate_limit_stat_prefix(name: str) -> str:
    return f"rl_{name}"


def local_rate_limit(
    stat_prefix: str, max_tokens: int, tokens_per_fill: int, fill_interval_ms: int,
    status: str | None = None,
) -> dict[str, Any]:
    """An enabled, enforced local_ratelimit config (the filter is off unless both are 100 %)."""
    cfg: dict[str, Any] = {
        "@type": _LOCAL_RL_T,
        "stat_prefix": stat_prefix,
        "token_bucket": {
            "max_tokens": max_tokens,
            "tokens_per_fill": tokens_per_fill,
            "fill_interval": _duration(fill_interval_ms),
        },
        "filter_enabled": {
            "runtime_key": f"{stat_prefix}_enabled",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
        "filter_enforced": {
            "runtime_key": f"{stat_prefix}_enforced",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
    }
    if status is not None:
        cfg["status"] = {"code": status}
    return cfg


def http_fault(f: Fault | None = None) -> dict[str, Any]:
    """An HTTPFault config: ``f``'s fixed delay on its share of requests (per million, so a
    fractional percent survives), or, without ``f``, the filter-level config that injects
    nothing (no delay, no abort), so routes without a fault pass untouched."""
    cfg: dict[str, Any] = {"@type": _FAULT_T}
    if f is not None:
        cfg["delay"] = {
            "fixed_delay": _duration(f.delay_ms),
            "percentage": {"numerator": round(f.percent * 10_000), "denominator": "MILLION"},
        }
    return cfg


def envoy_route_configuration(res: MeshResources) -> dict[str, Any]:
    limits = {rl.name: rl for rl in res.rate_limits}
    faults = {f.name: f for f in res.faults}
    by_domain: dict[str, list[Route]] = {}
    for r in res.routes:
        by_domain.setdefault(r.domain, []).append(r)
    vhosts = []
    for domain in sorted(by_domain):
        # Envoy takes the first matching route: longest prefix first.
        routes = sorted(by_domain[domain], key=lambda r: (-len(r.prefix), r.prefix))
        entries = []
        for r in routes:
            entry: dict[str, Any] = {
                "name": r.name,
                "match": {"prefix": r.prefix},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": t.cluster, "weight": t.weight} for t in r.targets]
                    },
                    "timeout": _duration(r.timeout_ms),
                },
            }
            per_filter: dict[str, Any] = {}
            if r.rate_limit:
                rl = limits[r.rate_limit]
                per_filter[RATE_LIMIT_FILTER] = local_rate_limit(
                    rate_limit_stat_prefix(rl.name), rl.max_tokens, rl.tokens_per_fill,
                    rl.fill_interval_ms,
                )
            if r.fault:
                per_filter[FAULT_FILTER] = http_fault(faults[r.fault])
            if per_filter:
                entry["typed_per_filter_config"] = per_filter
            entries.append(entry)
        vhosts.append({"name": domain, "domains": [domain, f"{domain}:*"], "routes": entries})
    return {"@type": _ROUTE_CONFIG_T, "name": ROUTE_CONFIG_NAME, "virtual_hosts": vhosts}


def cds_document(res: MeshResources, version: str) -> dict[str, Any]:
    """The CDS DiscoveryResponse Envoy reads from its watched file."""
    return {"version_info": version, "resources": [envoy_cluster(c) for c in res.clusters]}


def rds_document(res: MeshResources, version: str) -> dict[str, Any]:
    """The RDS DiscoveryResponse Envoy reads from its watched file."""
    return {"version_info": version, "resources": [envoy_route_configuration(res)]}


# --------------------------------------------------------------------------- plain dicts


def resources_from_dict(d: Mapping[str, Any]) -> MeshResources:
    """Build resources from plain data (e.g. a scenario file); raises on wrong shapes."""

    def cluster(c: Mapping[str, Any]) -> Cluster:
        return Cluster(
            name=c["name"],
            endpoints=tuple(Endpoint(**e) for e in c.get("endpoints", ())),
            connect_timeout_ms=c.get("connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS),
            circuit_breakers=CircuitBreakers(**c.get("circuit_breakers", {})),
            outlier_detection=(
                OutlierDetection(**c["outlier_detection"])
                if c.get("outlier_detection") is not None
                else None
            ),
        )

    def route(r: Mapping[str, Any]) -> Route:
        return Route(
            name=r["name"],
            domain=r["domain"],
            targets=tuple(WeightedTarget(**t) for t in r["targets"]),
            prefix=r.get("prefix", "/"),
            rate_limit=r.get("rate_limit", ""),
            timeout_ms=r.get("timeout_ms", DEFAULT_ROUTE_TIMEOUT_MS),
            fault=r.get("fault", ""),
        )

    return MeshResources(
        clusters=tuple(cluster(c) for c in d.get("clusters", ())),
        routes=tuple(route(r) for r in d.get("routes", ())),
        rate_limits=tuple(RateLimit(**rl) for rl in d.get("rate_limits", ())),
        faults=tuple(Fault(**f) for f in d.get("faults", ())),
    )


def token_bucket_for_rate(name: str, rps: float, burst_s: float = 0.1) -> RateLimit:
    """A bucket admitting ``rps`` requests/s with about ``burst_s`` of burst.

    Envoy's fill interval cannot go below 50 ms and tokens are integers, so
    rates of 10/s and more refill every 100 ms (one fast window) and slower
    rates add one token every 1/rps s. A rate of 0 admits one request per hour
    (the bucket needs at least one token); use no RateLimit for unlimited.
    """
    if not math.isfinite(rps) or rps < 0:
        raise ValueError(f"rate limit {name}: rps must be finite and >= 0, got {rps}")
    if rps == 0:
        return RateLimit(name, 1, 1, 3_600_000)
    if rps >= 10:
        per_fill = max(1, round(rps * 0.1))
        return RateLimit(name, max(per_fill, round(rps * burst_s)), per_fill, 100)
    interval = max(MIN_FILL_INTERVAL_MS, round(1000.0 / rps))
    return RateLimit(name, 1, 1, interval)
