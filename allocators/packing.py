"""Packing an Allocation onto nodes: a share of each job per node, fewest moves.

Pure. A job's amount may be split over several nodes (its replicas are
independent; each node share becomes ``ceil(cpu / replica_cpus)`` replicas
that divide the share evenly). Shares the job already had stay where they were
while they fit (fewest moves). The rest goes, most constrained job first, to
the node that takes it whole with the least room left (best fit), else to the
node with the most room, in pieces of at least one CPU quantum. An allocation
that fits in aggregate but cannot be packed raises PackingError: it is an
error, not a plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cluster_mgr.model import (
    CPU_QUANTUM,
    ZERO,
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    ResourceVector,
)


class PackingError(ValueError):
    """The allocation cannot be placed on the nodes there are."""


@dataclass(frozen=True, slots=True)
class PackResult:
    shares: tuple[NodeShare, ...]
    moves: int  # replicas started on a node where the job had none of them before


def replica_count(cpu: float, replica_cpus: float) -> int:
    if cpu <= 1e-9:
        return 0
    return max(1, math.ceil(cpu / replica_cpus - 1e-9))


def pack(
    allocation: Allocation,
    jobs: Sequence[JobSpec],
    nodes: Sequence[NodeInfo],
    previous: Sequence[NodeShare] = (),
) -> PackResult:
    spec = {j.name: j for j in jobs}
    usable = [n for n in nodes if n.schedulable]
    free: dict[str, ResourceVector] = {n.node_id: n.capacity for n in usable}
    order = {n.node_id: i for i, n in enumerate(usable)}
    before: dict[str, dict[str, float]] = {}
    for s in previous:
        before.setdefault(s.job, {})[s.node_id] = s.resources.cpu

    todo = []
    for name, amount in allocation.amounts.items():
        if name not in spec:
            raise PackingError(f"allocation names unknown job {name!r}")
        if any(v < -1e-9 for v in amount.as_dict().values()):
            raise PackingError(f"job {name!r}: negative amount {amount.as_dict(nonzero=True)}")
        if all(v <= 1e-9 for v in amount.as_dict().values()):
            continue
        job = spec[name]
        allowed = [n.node_id for n in usable if not job.pins or n.node_id in job.pins]
        if not allowed:
            raise PackingError(f"job {name!r}: no schedulable node among its pins {list(job.pins)}")
        todo.append((len(allowed), -amount.cpu, name, amount, allowed))
    todo.sort(key=lambda t: t[:3])  # most constrained first, then biggest, then by name

    placed: dict[tuple[str, str], float] = {}  # (job, node) -> fraction of the job's amount
    moves = 0
    for _, _, name, amount, allowed in todo:
        left = 1.0
        # 1) keep what was there (fewest moves)
        prev = before.get(name, {})
        for node_id in sorted((n for n in allowed if prev.get(n, 0) > 0), key=lambda n: order[n]):
            want = min(left, prev[node_id] / amount.cpu) if amount.cpu > 0 else left
            take = _quantized(min(want, _room(free[node_id], amount)), amount, left)
            if take > 0:
                left = _put(name, node_id, take, amount, free, placed, left)
        # 2) the rest: best fit for the whole remainder, else the roomiest node, piece by piece
        while left > 1e-9:
            whole = [n for n in allowed if _room(free[n], amount) >= left - 1e-9]
            if whole:
                node_id = min(whole, key=lambda n: (_room(free[n], amount), order[n]))
                take = left
            else:
                node_id = max(allowed, key=lambda n: (_room(free[n], amount), -order[n]))
                take = _quantized(_room(free[node_id], amount), amount, left)
                if take <= 0:
                    need = amount.scale(left)
                    raise PackingError(
                        f"job {name!r}: {_fmt(need)} of its {_fmt(amount)} fits on no allowed node "
                        f"(most room: {node_id} with {_fmt(free[node_id])})"
                    )
            if placed.get((name, node_id), 0.0) == 0.0 and prev.get(node_id, 0.0) == 0.0:
                moves += 1
            left = _put(name, node_id, take, amount, free, placed, left)

    amounts = {name: amount for _, _, name, amount, _ in todo}
    shares = []
    for (name, node_id), frac in sorted(placed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        res = amounts[name].scale(frac)
        shares.append(
            NodeShare(node_id, name, replica_count(res.cpu, spec[name].replica_cpus) or 1, res)
        )
    return PackResult(shares=tuple(shares), moves=moves)


def _room(free: ResourceVector, amount: ResourceVector) -> float:
    """The largest fraction of ``amount`` that fits in ``free`` (on every kind)."""
    fr = free.as_dict()
    ratios = [max(fr.get(k, 0.0), 0.0) / v for k, v in amount.as_dict().items() if v > 1e-12]
    return min(ratios) if ratios else float("inf")


def _quantized(frac: float, amount: ResourceVector, left: float) -> float:
    """A piece of at most ``frac``, whole or a multiple of the CPU quantum (never a sliver)."""
    if frac >= left - 1e-9:
        return left
    if amount.cpu <= 0:
        return frac
    cpu = math.floor(frac * amount.cpu / CPU_QUANTUM + 1e-9) * CPU_QUANTUM
    return cpu / amount.cpu if cpu > 0 else 0.0


def _put(
    name: str,
    node_id: str,
    frac: float,
    amount: ResourceVector,
    free: dict[str, ResourceVector],
    placed: dict[tuple[str, str], float],
    left: float,
) -> float:
    free[node_id] = free[node_id] - amount.scale(frac)
    placed[(name, node_id)] = placed.get((name, node_id), 0.0) + frac
    return max(left - frac, 0.0)


def node_usage(shares: Sequence[NodeShare]) -> Mapping[str, ResourceVector]:
    usage: dict[str, ResourceVector] = {}
    for s in shares:
        usage[s.node_id] = usage.get(s.node_id, ZERO) + s.resources
    return usage


def _fmt(v: ResourceVector) -> str:
    return ", ".join(f"{k}={x:.3g}" for k, x in v.as_dict(nonzero=True).items()) or "nothing"


def _fmt_over(over: Mapping[str, float]) -> str:
    return ", ".join(f"{k} by {x:.3g}" for k, x in sorted(over.items()))
