"""Allocation -> the device parts of a PlacementPlan: mesh shares, PIM cores and pages.

``make_plan`` (cluster_mgr.place) places CPU replicas. This module adds what the
device agents enforce, from the Allocation's ``mesh`` and ``pim_cores`` amounts:

- **mesh**: a job with ``mesh > 0`` req/s gets one MeshShare on every node that
  has a DPU proxy (its callers may sit anywhere, and each node's proxy is where
  their requests enter). The admitted rate is split evenly over those proxies.
  The routing weights are the job's replicas per node in the plan (a node with
  more of the job's replicas takes more of its traffic); a job without replicas
  in the plan gets no weights (the mesh agent then spreads by endpoints).
- **pim_cores / pages**: a job with ``pim_cores > 0`` gets its cores on a node
  with a PIM device: the node where it already had pages in the previous plan
  while they still fit, else the one where it has most CPU, else the one with
  most free PIM cores; a job larger than one node is split greedily. On a node,
  cores fill the stacks with most free cores first, so a job sits on as few
  stacks as possible, and its pages follow its cores (page fraction per stack =
  its cores there / its cores on the node; PIMCloud: pages local to the cores).
  The cores are carried as ``pim_cores`` in the job's NodeShare on that node (a
  share with 0 replicas when the job has no CPU there), which is where
  ``pim_agent.placement.plan_for_node`` reads them.

Pure: no Ray, no gRPC, no clock. ``check_plan`` compares shares with Ray's
capacity, which has no ``pim_cores``; call it on the CPU plan, before this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from cluster_mgr.model import (
    Allocation,
    MeshShare,
    NodeShare,
    PagePlacement,
    PlacementPlan,
    ResourceVector,
)
from cluster_mgr.place import PlanError


@dataclass(frozen=True, slots=True)
class PimNode:
    """A node's PIM device as placement sees it (from its preset)."""

    n_stacks: int
    pim_cores_per_stack: int


def _mesh_part(
    allocation: Allocation, plan: PlacementPlan, mesh_nodes: Sequence[str]
) -> tuple[MeshShare, ...]:
    out: list[MeshShare] = []
    nodes = sorted(set(mesh_nodes))
    for job in allocation.jobs():
        rps = allocation.get(job).mesh
        if rps <= 0:
            continue
        if not nodes:
            raise PlanError(f"job {job}: {rps:g} req/s of mesh allocated but no node has a DPU proxy")
        replicas: dict[str, int] = {}
        for s in plan.for_job(job):
            if s.replicas > 0:
                replicas[s.node_id] = replicas.get(s.node_id, 0) + s.replicas
        weights = tuple((n, float(k)) for n, k in sorted(replicas.items()))
        per = rps / len(nodes)
        out.extend(MeshShare(n, job, per, weights) for n in nodes)
    return tuple(out)


def _fill_stacks(free: list[int], k: int) -> list[int]:
    """Take ``k`` cores from ``free`` (per stack), stacks with most free first; returns the take."""
    take = [0] * len(free)
    for s in sorted(range(len(free)), key=lambda s: (-free[s], s)):
        t = min(k, free[s])
        take[s] += t
        free[s] -= t
        k -= t
        if k == 0:
            break
    return take


def _pim_part(
    allocation: Allocation,
    plan: PlacementPlan,
    pim_nodes: Mapping[str, PimNode],
    previous: PlacementPlan | None,
) -> tuple[dict[tuple[str, str], int], tuple[PagePlacement, ...]]:
    free = {n: [d.pim_cores_per_stack] * d.n_stacks for n, d in pim_nodes.items()}
    prev_node = {p.job: p.node_id for p in (previous.pages if previous else ())}
    cpu_on = {(s.node_id, s.job): s.resources.cpu for s in plan.shares}
    wants = []
    for job in allocation.jobs():
        k = allocation.get(job).pim_cores
        if k <= 0:
            continue
        if abs(k - round(k)) > 1e-9:
            raise PlanError(f"job {job}: pim_cores must be integral, got {k:g}")
        wants.append((job, int(round(k))))
    total_free = sum(sum(f) for f in free.values())
    if sum(k for _, k in wants) > total_free:
        raise PlanError(
            f"{sum(k for _, k in wants)} PIM cores allocated, {total_free} exist on PIM nodes"
        )
    cores: dict[tuple[str, str], int] = {}
    pages: list[PagePlacement] = []
    # biggest first, so the large jobs get whole stacks; ties by name (deterministic)
    for job, k in sorted(wants, key=lambda w: (-w[1], w[0])):
        order = sorted(
            free,
            key=lambda n: (
                n != prev_node.get(job) or sum(free[n]) < k,  # stay where the pages are if it fits
                -cpu_on.get((n, job), 0.0),
                -sum(free[n]),
                n,
            ),
        )
        left = k
        for node in order:
            if left == 0:
                break
            here = min(left, sum(free[node]))
            if here == 0:
                continue
            take = _fill_stacks(free[node], here)
            cores[(node, job)] = here
            pages.append(PagePlacement(node, job, tuple(t / here for t in take)))
            left -= here
    return cores, tuple(sorted(pages, key=lambda p: (p.node_id, p.job)))


def device_parts(
    allocation: Allocation,
    plan: PlacementPlan,
    *,
    mesh_nodes: Sequence[str] = (),
    pim_nodes: Mapping[str, PimNode] | None = None,
    previous: PlacementPlan | None = None,
) -> PlacementPlan:
    """``plan`` (from make_plan) with its mesh and page parts filled from ``allocation``.

    ``mesh_nodes``: the nodes with a DPU proxy. ``pim_nodes``: the nodes with a PIM
    device and its shape. ``previous``: the plan in force (jobs keep their PIM node
    while it fits). Raises PlanError when the amounts cannot be placed."""
    mesh = _mesh_part(allocation, plan, mesh_nodes)
    cores, pages = _pim_part(allocation, plan, dict(pim_nodes or {}), previous)
    shares: list[NodeShare] = []
    for s in plan.shares:
        k = cores.pop((s.node_id, s.job), 0)
        shares.append(replace(s, resources=s.resources.with_amount("pim_cores", float(k))))
    for (node, job), k in sorted(cores.items()):
        shares.append(NodeShare(node, job, 0, ResourceVector(pim_cores=float(k))))
    for m in mesh:
        if not math.isfinite(m.rate_limit_rps) or m.rate_limit_rps < 0:
            raise PlanError(f"job {m.job}: mesh rate must be finite and >= 0")
    return replace(plan, shares=tuple(shares), pages=pages, mesh=mesh)
