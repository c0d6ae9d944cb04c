"""A PlacementPlan's mesh part -> the resources each node's mesh agent serves.

Pure. Each MeshShare(node, job, rate_limit_rps, weights) becomes, on that
node's proxy, a route for Host = job whose weighted clusters are the job's
replicas per upstream node (one Envoy cluster ``<job>--<node>`` per node),
weighted as the plan says, behind a token bucket admitting rate_limit_rps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from cluster_mgr.model import MeshShare
from dpu_agent import config as cfg

WEIGHT_SCALE = 10_000  # Envoy weights are integers: plan weights are scaled to this total

Endpoints = Mapping[str, Mapping[str, Sequence[tuple[str, int]]]]  # job -> node -> [(host, port)]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def cluster_name(job: str, node_id: str) -> str:
    return f"{safe_name(job)}--{safe_name(node_id)}"


def _int_weights(weights: Sequence[tuple[str, float]]) -> list[tuple[str, int]]:
    """Plan weights (any non-negative scale) -> integers summing to about WEIGHT_SCALE,
    keeping a node with a positive weight at >= 1 so it is never dropped by rounding."""
    total = sum(w for _, w in weights)
    if not math.isfinite(total) or total <= 0:
        raise ValueError(f"mesh weights must be finite with a positive sum, got {weights}")
    out = []
    for node, w in weights:
        if w < 0 or not math.isfinite(w):
            raise ValueError(f"mesh weight for {node} must be finite and >= 0, got {w}")
        out.append((node, max(1, round(w / total * WEIGHT_SCALE)) if w > 0 else 0))
    return out


def mesh_configs(
    plan_mesh_shares: Iterable[MeshShare],
    endpoints: Endpoints,
    *,
    outlier_detection: cfg.OutlierDetection | None = None,
    circuit_breakers: cfg.CircuitBreakers | None = None,
) -> dict[str, cfg.MeshResources]:
    """Per node id, the complete MeshResources its agent should serve.

    ``endpoints[job][node]`` lists where the job's replicas on that node listen.
    A share without weights spreads over every node that has replicas of the
    job, weighted by replica count. A share with an infinite rate has no limit.
    """
    per_node: dict[str, tuple[dict[str, cfg.Cluster], list[cfg.Route], list[cfg.RateLimit]]] = {}
    for share in plan_mesh_shares:
        job_eps = endpoints.get(share.job, {})
        weights = list(share.weights) or [(n, float(len(eps))) for n, eps in sorted(job_eps.items())]
        if not weights:
            raise ValueError(f"job {share.job}: no endpoints and no weights for node {share.node_id}")
        clusters, routes, limits = per_node.setdefault(share.node_id, ({}, [], []))
        targets = []
        for upstream, w in _int_weights(weights):
            name = cluster_name(share.job, upstream)
            clusters[name] = cfg.Cluster(
                name,
                tuple(cfg.Endpoint(h, p) for h, p in job_eps.get(upstream, ())),
                circuit_breakers=circuit_breakers or cfg.CircuitBreakers(),
                outlier_detection=outlier_detection,
            )
            targets.append(cfg.WeightedTarget(name, w))
        limit = ""
        if math.isfinite(share.rate_limit_rps):
            limit = safe_name(share.job)
            limits.append(cfg.token_bucket_for_rate(limit, share.rate_limit_rps))
        routes.append(cfg.Route(safe_name(share.job), share.job, tuple(targets), rate_limit=limit))
    return {
        node: cfg.MeshResources(tuple(c.values()), tuple(r), tuple(rl))
        for node, (c, r, rl) in sorted(per_node.items())
    }


def with_faults(res: cfg.MeshResources, faults: Mapping[str, tuple[float, float]]) -> cfg.MeshResources:
    """``res`` with a fixed delay on each job's route: ``faults[job] = (delay_ms, percent)``
    becomes a Fault named like the job's route, named by that route. A job without a route
    here is left out (its traffic does not pass this node's proxy); an emulated network
    condition is workload, not plan, so it rides on whatever shares are in force."""
    if not faults:
        return res
    by_route = {safe_name(job): (float(ms), float(pct)) for job, (ms, pct) in faults.items()}
    made: list[cfg.Fault] = []
    routes = []
    for r in res.routes:
        f = by_route.get(r.name)
        if f is None:
            routes.append(r)
            continue
        made.append(cfg.Fault(r.name, round(f[0]), f[1]))  # a bad delay is NACKed, not clamped
        routes.append(replace(r, fault=r.name))
    return replace(res, routes=tuple(routes), faults=tuple(made))
