"""Sidecar mode, for comparison with DPU mode: one Envoy per replica on the host.

The same routes as the node proxy serve in DPU mode run in each caller's
outbound sidecar, except that every endpoint is replaced by the inbound
sidecar of that replica; each inbound sidecar forwards its service's Host to
its one local replica. A request thus crosses two proxies (caller's sidecar,
callee's sidecar) instead of one (the node's DPU proxy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from dpu_agent import config as cfg

Addr = tuple[str, int]


def outbound_resources(node_res: cfg.MeshResources, sidecar_of: Mapping[Addr, Addr]) -> cfg.MeshResources:
    """The node proxy's resources with each replica endpoint swapped for its inbound sidecar."""
    clusters = []
    for c in node_res.clusters:
        eps = []
        for ep in c.endpoints:
            host, port = sidecar_of[(ep.host, ep.port)]
            eps.append(cfg.Endpoint(host, port, ep.weight))
        clusters.append(replace(c, endpoints=tuple(eps)))
    return replace(node_res, clusters=tuple(clusters))


def inbound_resources(service: str, replica: Addr) -> cfg.MeshResources:
    """An inbound sidecar: Host = service goes to the one local replica."""
    local = cfg.Cluster("local", (cfg.Endpoint(replica[0], replica[1]),))
    return cfg.MeshResources(
        clusters=(local,), routes=(cfg.Route("inbound", service, (cfg.WeightedTarget("local", 1),)),)
    )
