"""Allocation -> PlacementPlan: which node runs how much of each job, fenced by an epoch.

Packing itself is ``allocators.packing.pack`` (best fit, shares kept where they
were while they fit: fewest moves). This module adds what a plan needs on top:
the previous plan's shares on nodes that are gone or draining are not offered
as "keep" candidates (their replicas must move), each job share is cut into
replicas of at most ``replica_cpus`` (split as evenly as the 0.1-CPU quantum allows, so the
reservation on a node equals the plan's amount exactly), and every plan is
checked against node capacity before anyone enforces it.

Pure; both backends use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from allocators.packing import pack
from cluster_mgr.model import (
    CPU_QUANTUM,
    RESOURCE_KINDS,
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    PlacementPlan,
    ResourceVector,
)


class PlanError(ValueError):
    """A plan would put more on a node than it holds, or on a node that cannot take it."""


@dataclass(frozen=True, slots=True)
class PlanResult:
    plan: PlacementPlan
    moves: int  # job shares started on a node where the job had nothing before


#: NodeInfo labels that say a node has an emulated device (set by the Ray controller from
#: ``ManagerConfig.devices``): a DPU proxy (value: the preset) and a PIM device
#: (value: "<stacks>x<cores per stack>").
DPU_LABEL = "cluster_mgr/dpu"
PIM_LABEL = "cluster_mgr/pim"
DEVICE_KINDS = ("mesh", "pim_cores")


def device_nodes(nodes: Sequence[NodeInfo]) -> tuple[list[str], dict[str, tuple[int, int]]] | None:
    """(DPU nodes, PIM node -> (stacks, cores per stack)) from the nodes' labels; None when no
    node carries a device label (then plans are packed as before, every kind by ``pack``)."""
    mesh: list[str] = []
    pim: dict[str, tuple[int, int]] = {}
    for n in nodes:
        if not n.schedulable:
            continue
        labels = dict(n.labels)
        if labels.get(DPU_LABEL):
            mesh.append(n.node_id)
        shape = labels.get(PIM_LABEL)
        if shape:
            stacks, _, per = shape.partition("x")
            pim[n.node_id] = (int(stacks), int(per))
    return (mesh, pim) if (mesh or pim) else None


def make_plan(
    allocation: Allocation,
    jobs: Sequence[JobSpec],
    nodes: Sequence[NodeInfo],
    previous: PlacementPlan | None,
    epoch: int,
    round: int,
) -> PlanResult:
    """Pack, check against capacity; with device-labelled nodes (``device_nodes``) the CPU
    part is packed and checked, then ``place_devices.device_parts`` adds the mesh shares and
    the PIM cores and pages from the allocation's ``mesh`` and ``pim_cores`` amounts."""
    schedulable = {n.node_id for n in nodes if n.schedulable}
    keep = tuple(s for s in (previous.shares if previous else ()) if s.node_id in schedulable)
    devices = device_nodes(nodes)
    packed = allocation
    if devices is not None:  # Ray's capacity has no mesh or pim_cores: devices are placed apart
        packed = Allocation({j: _without_devices(v) for j, v in allocation.amounts.items()})
        keep = tuple(replace(s, resources=_without_devices(s.resources)) for s in keep)
    result = pack(packed, jobs, nodes, keep)
    plan = PlacementPlan(epoch=epoch, round=round, shares=result.shares)
    check_plan(plan, nodes)
    if devices is not None:
        from cluster_mgr.place_devices import PimNode, device_parts

        mesh_nodes, pim = devices
        plan = device_parts(allocation, plan, mesh_nodes=mesh_nodes, previous=previous,
                            pim_nodes={n: PimNode(*shape) for n, shape in pim.items()})  # fmt: skip
    return PlanResult(plan=plan, moves=result.moves)


def _without_devices(v: ResourceVector) -> ResourceVector:
    d = v.as_dict()
    for k in DEVICE_KINDS:
        d[k] = 0.0
    return ResourceVector.from_dict(d)


def check_plan(plan: PlacementPlan, nodes: Sequence[NodeInfo]) -> None:
    """Raise PlanError unless every share sits on a schedulable node within its capacity.

    Summed per node as one (nodes, kinds) array (10,000 nodes in milliseconds); only a plan
    that array flags goes through the exact per-node ``ResourceVector`` check, which names the
    first offending node as before."""
    if not _may_fail(plan, nodes):
        return
    _check_plan_exact(plan, nodes)


def _may_fail(plan: PlacementPlan, nodes: Sequence[NodeInfo]) -> bool:
    """False when every share is on a schedulable node and no node is over capacity by more
    than half the tolerance (a plan near the edge is left to the exact check)."""
    if not plan.shares:
        return False
    index: dict[str, int] = {}
    for n in nodes:
        index.setdefault(n.node_id, len(index))
    by_id = {n.node_id: n for n in nodes}  # the last NodeInfo of an id wins, as in the exact check
    ok = {nid for nid, n in by_id.items() if n.schedulable}
    rows = []
    customs: dict[str, int] = {}
    for s in plan.shares:
        if s.node_id not in ok:
            return True
        rows.append(index[s.node_id])
        for k, _ in s.resources.custom:
            customs.setdefault(k, len(customs))
    kinds = (*RESOURCE_KINDS, *customs)
    used = np.zeros((len(index), len(kinds)))
    amounts = np.array(
        [
            [getattr(r, k) for k in RESOURCE_KINDS] + [dict(r.custom).get(k, 0.0) for k in customs]
            if r.custom
            else [getattr(r, k) for k in RESOURCE_KINDS] + [0.0] * len(customs)
            for r in (s.resources for s in plan.shares)
        ],
        dtype=float,
    ).reshape(len(plan.shares), len(kinds))
    np.add.at(used, np.asarray(rows, dtype=np.intp), amounts)
    cap = np.zeros_like(used)
    for nid, n in by_id.items():
        c = n.capacity
        cap[index[nid], : len(RESOURCE_KINDS)] = [getattr(c, k) for k in RESOURCE_KINDS]
        if customs and c.custom:
            cc = dict(c.custom)
            cap[index[nid], len(RESOURCE_KINDS) :] = [cc.get(k, 0.0) for k in customs]
    return bool(np.any(used > cap + 0.5e-6))


def _check_plan_exact(plan: PlacementPlan, nodes: Sequence[NodeInfo]) -> None:
    by_id = {n.node_id: n for n in nodes}
    for node_id, used in plan.node_usage().items():
        node = by_id.get(node_id)
        if node is None or not node.schedulable:
            raise PlanError(f"plan epoch {plan.epoch}: node {node_id} is not schedulable")
        over = used.over(node.capacity, tol=1e-6)
        if over:
            raise PlanError(f"plan epoch {plan.epoch}: node {node_id} over capacity on {over}")


def replica_sizes(share: NodeShare, replica_cpus: float) -> tuple[float, ...]:
    """CPUs of each replica of a node share: at most ``replica_cpus`` each, split evenly.

    Even sizes let a load balancer spread requests evenly. The sizes sum to the share's CPU exactly (in 0.1-CPU quanta), so reserving
    one placement-group bundle per replica reserves what the plan says and no
    more; a node the plan keeps within capacity stays within capacity in Ray.
    """
    quanta = round(share.resources.cpu / CPU_QUANTUM)
    per = max(1, round(replica_cpus / CPU_QUANTUM))
    if quanta <= 0:
        return ()
    n = max(share.replicas, math.ceil(quanta / per))
    n = min(n, quanta)  # never a replica smaller than one quantum
    full, rest = divmod(quanta, n)
    # as even as the quantum allows: rest replicas get one quantum more
    sizes = [(full + (1 if i < rest else 0)) * CPU_QUANTUM for i in range(n)]
    return tuple(round(s, 6) for s in sizes)


def plan_diff(old: PlacementPlan | None, new: PlacementPlan) -> dict[str, dict[str, int]]:
    """Per node: replicas to start (+) or stop (-) per job, to go from ``old`` to ``new``."""
    before: dict[tuple[str, str], int] = {}
    for s in old.shares if old else ():
        before[(s.node_id, s.job)] = s.replicas
    after = {(s.node_id, s.job): s.replicas for s in new.shares}
    out: dict[str, dict[str, int]] = {}
    for key in before.keys() | after.keys():
        d = after.get(key, 0) - before.get(key, 0)
        if d:
            out.setdefault(key[0], {})[key[1]] = d
    return out
