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
from dataclasses import dataclass

from allocators.packing import pack
from cluster_mgr.model import (
    CPU_QUANTUM,
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    PlacementPlan,
)


class PlanError(ValueError):
    """A plan would put more on a node than it holds, or on a node that cannot take it."""


@dataclass(frozen=True, slots=True)
class PlanResult:
    plan: PlacementPlan
    moves: int  # job shares started on a node where the job had nothing before


def make_plan(
    allocation: Allocation,
    jobs: Sequence[JobSpec],
    nodes: Sequence[NodeInfo],
    previous: PlacementPlan | None,
    epoch: int,
    round: int,
) -> PlanResult:
    schedulable = {n.node_id for n in nodes if n.schedulable}
    keep = tuple(s for s in (previous.shares if previous else ()) if s.node_id in schedulable)
    result = pack(allocation, jobs, nodes, keep)
    plan = PlacementPlan(epoch=epoch, round=round, shares=result.shares)
    check_plan(plan, nodes)
    return PlanResult(plan=plan, moves=result.moves)


def check_plan(plan: PlacementPlan, nodes: Sequence[NodeInfo]) -> None:
    """Raise PlanError unless every share sits on a schedulable node within its capacity."""
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
