"""Packing an Allocation onto nodes: a share of each job per node, fewest moves.

Pure. A job's amount may be split over several nodes (its replicas are
independent; each node share becomes ``ceil(cpu / replica_cpus)`` replicas
that divide the share evenly; PIM cores are split in whole cores). Shares the job already had stay where they were
while they fit (fewest moves). The rest goes, most constrained job first, to
the node that takes it whole with the least room left (best fit), else to the
node with the most room, in pieces of at least one CPU quantum. An allocation
that fits in aggregate but cannot be packed raises PackingError: it is an
error, not a plan.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cluster_mgr.model import (
    CPU_QUANTUM,
    RESOURCE_KINDS,
    ZERO,
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    ResourceVector,
)


class PackingError(ValueError):
    """The allocation cannot be placed on the nodes there are; ``job`` names the job that did
    not fit (None when the allocation itself is malformed)."""

    def __init__(self, message: str, job: str | None = None) -> None:
        super().__init__(message)
        self.job = job


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
    if not previous:
        fast = _pack_cpu_fresh(allocation, spec, usable)
        if fast is not None:
            return fast
    index = {n.node_id: i for i, n in enumerate(usable)}
    vectors = [n.capacity for n in usable] + list(allocation.amounts.values())
    kinds = sorted(
        {k for k in RESOURCE_KINDS if any(getattr(v, k) != 0.0 for v in vectors)}
        | {k for v in vectors if v.custom for k, x in v.custom if x != 0.0}
    )
    kpos = {k: i for i, k in enumerate(kinds)}
    # Free capacity as one (nodes, kinds) array: 1,000 jobs x 1,000 nodes stays in milliseconds.
    # Kinds as rows, so one kind's free capacity over all nodes is a contiguous array.
    free = np.array([[n.capacity.get(k) for n in usable] for k in kinds], dtype=float).reshape(
        len(kinds), len(usable)
    )
    before: dict[str, dict[int, float]] = {}
    for s in previous:
        if s.node_id in index:
            before.setdefault(s.job, {})[index[s.node_id]] = s.resources.cpu

    every = np.arange(len(usable))
    todo = []
    for name, amount in allocation.amounts.items():
        if name not in spec:
            raise PackingError(f"allocation names unknown job {name!r}")
        d = amount.as_dict(nonzero=True)
        if any(v < -1e-9 for v in d.values()):
            raise PackingError(f"job {name!r}: negative amount {d}")
        if all(v <= 1e-9 for v in d.values()):
            continue
        job = spec[name]
        if job.pins:
            allowed = np.array(sorted(index[p] for p in set(job.pins) if p in index), dtype=int)
        else:
            allowed = every
        if allowed.size == 0:
            raise PackingError(
                f"job {name!r}: no schedulable node among its pins {list(job.pins)}", name
            )
        vec = np.zeros(len(kinds))
        for k, v in d.items():
            vec[kpos[k]] = max(v, 0.0)
        todo.append((allowed.size, -amount.cpu, name, amount, allowed, vec))
    todo.sort(key=lambda t: t[:3])  # most constrained first, then biggest, then by name

    placed: dict[tuple[str, int], float] = {}  # (job, node index) -> fraction of the job's amount
    moves = 0
    # CPU-only, unpinned jobs with nothing placed before (the common case) take the best fit
    # from the nodes ordered by free CPU: a bisection instead of a pass over every node.
    ci = kpos.get("cpu")
    order = _FreeOrder(free[ci]) if ci is not None else None
    for _, _, name, amount, allowed, vec in todo:
        need = vec > 1e-12
        left = 1.0
        if (
            order is not None
            and allowed is every
            and name not in before
            and need[ci]
            and int(need.sum()) == 1
        ):
            moves += order.place(name, float(vec[ci]), amount, free, placed, usable, kinds)
            continue
        # 1) keep what was there (fewest moves)
        prev = before.get(name, {})
        if prev and allowed is not every:
            allowed_set = set(allowed.tolist())
            kept = sorted(n for n in prev if prev[n] > 0 and n in allowed_set)
        else:
            kept = sorted(n for n in prev if prev[n] > 0)
        cpu_only = ci is not None and need[ci] and int(need.sum()) == 1
        for node in kept:
            want = min(left, prev[node] / amount.cpu) if amount.cpu > 0 else left
            if cpu_only:  # one kind: the room is a scalar division, no array pass
                room = max(float(free[ci, node]), 0.0) / float(vec[ci])
            else:
                room = float(_rooms(free[:, node : node + 1], vec, need)[0])
            take = _quantized(min(want, room), amount, left)
            if take > 0:
                left = _put(name, node, take, vec, free, placed, left)
                if order is not None:
                    order.sync(node)
        if left > 1e-9 and order is not None and allowed is every and cpu_only:
            # the rest of an unpinned CPU-only job: best fit by bisection on sorted free CPU
            moves += order.place(
                name, float(vec[ci]), amount, free, placed, usable, kinds, left=left, prev=prev
            )
            continue
        # 2) the rest: best fit for the whole remainder, else the roomiest node, piece by piece
        while left > 1e-9:
            rooms = _rooms(free if allowed is every else free[:, allowed], vec, need)
            whole = np.flatnonzero(rooms >= left - 1e-9)
            if whole.size:
                pos = int(whole[np.argmin(rooms[whole])])  # first of the tightest fits
                node, take = int(allowed[pos]), left
            else:
                pos = int(np.argmax(rooms))  # first of the roomiest
                node = int(allowed[pos])
                take = _quantized(float(rooms[pos]), amount, left)
                if take <= 0:
                    raise _no_room(name, amount, left, usable[node].node_id, _vector(kinds, free[:, node]))
            if placed.get((name, node), 0.0) == 0.0 and prev.get(node, 0.0) == 0.0:
                moves += 1
            left = _put(name, node, take, vec, free, placed, left)
            if order is not None:
                order.sync(node)

    amounts = {t[2]: t[3] for t in todo}
    return PackResult(shares=_shares(placed, amounts, spec, usable), moves=moves)


def _cpu_only(v: ResourceVector) -> bool:
    return (
        v.memory == 0.0 and v.gpu == 0.0 and v.pim_cores == 0.0 and v.mesh == 0.0 and not v.custom
    )


def _pack_cpu_fresh(
    allocation: Allocation, spec: Mapping[str, JobSpec], usable: Sequence[NodeInfo]
) -> PackResult | None:
    """The common round, in plain Python floats: every amount CPU-only, no job pinned, nothing
    placed before. The same best-fit decisions as the general path below (same order, same
    ties, same float arithmetic), without its per-job array work (most of a 1,000-job pack).
    None when the allocation is not of that kind."""
    todo = []
    for name, amount in allocation.amounts.items():
        job = spec.get(name)
        if job is None or job.pins or not _cpu_only(amount):
            return None
        cpu = amount.cpu
        if cpu < -1e-9:
            return None  # the general path names the error
        if cpu > 1e-9:
            todo.append((-cpu, name, amount))
    todo.sort(key=lambda t: (t[0], t[1]))  # biggest first, then by name
    free = [n.capacity.cpu for n in usable]
    items = sorted(zip(free, range(len(free)), strict=True))
    placed: dict[tuple[str, int], float] = {}
    moves = 0
    for neg, name, amount in todo:
        cpu = -neg
        left = 1.0
        while left > 1e-9:
            node, take = _best_fit(items, cpu, amount, left)
            if take <= 0:
                return None  # the general path raises the detailed PackingError
            if (name, node) not in placed:
                moves += 1
                placed[(name, node)] = take
            else:
                placed[(name, node)] += take
            old = free[node]
            new = old - cpu * take
            free[node] = new
            left = max(left - take, 0.0)
            if old != new:
                del items[bisect_left(items, (old, node))]
                insort(items, (new, node))
    return PackResult(shares=_shares(placed, allocation.amounts, spec, usable), moves=moves)


def _shares(
    placed: Mapping[tuple[str, int], float],
    amounts: Mapping[str, ResourceVector],
    spec: Mapping[str, JobSpec],
    usable: Sequence[NodeInfo],
) -> tuple[NodeShare, ...]:
    shares = []
    pieces: dict[tuple[str, float], ResourceVector] = {}  # a job's equal pieces share one vector
    ids = [n.node_id for n in usable]
    for (name, node), frac in sorted(placed.items(), key=lambda kv: (ids[kv[0][1]], kv[0][0])):
        if frac >= 1.0 - 1e-12:
            res = amounts[name]
        else:
            res = pieces.get((name, frac))
            if res is None:
                res = pieces[(name, frac)] = _scaled(amounts[name], frac)
        shares.append(
            NodeShare(ids[node], name, replica_count(res.cpu, spec[name].replica_cpus) or 1, res)
        )
    return tuple(shares)


class _FreeOrder:
    """Nodes sorted by free CPU, kept in step with ``free`` (best fit by bisection)."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row  # a view of free[cpu]: updated in place by _put
        self.items = sorted(zip(row.tolist(), range(len(row)), strict=True))
        self.cur = row.tolist()

    def sync(self, node: int) -> None:
        old, new = self.cur[node], float(self.row[node])
        if old != new:
            del self.items[bisect_left(self.items, (old, node))]
            insort(self.items, (new, node))
            self.cur[node] = new

    def place(
        self,
        name: str,
        cpu: float,
        amount: ResourceVector,
        free: np.ndarray,
        placed: dict[tuple[str, int], float],
        usable: Sequence[NodeInfo],
        kinds: Sequence[str],
        left: float = 1.0,
        prev: Mapping[int, float] | None = None,
    ) -> int:
        """Place ``left`` (a fraction) of a CPU-only job of ``cpu``; returns the moves (nodes new
        to the job, ``prev`` being where it ran before) it took."""
        moves = 0
        prev = prev or {}
        vec = np.zeros(free.shape[0])
        vec[kinds.index("cpu")] = cpu
        while left > 1e-9:
            items = self.items
            node, take = _best_fit(items, cpu, amount, left)
            if take <= 0:
                raise _no_room(name, amount, left, usable[node].node_id, _vector(kinds, free[:, node]))
            if placed.get((name, node), 0.0) == 0.0 and prev.get(node, 0.0) == 0.0:
                moves += 1
            left = _put(name, node, take, vec, free, placed, left)
            self.sync(node)
        return moves


def _best_fit(
    items: list[tuple[float, int]], cpu: float, amount: ResourceVector, left: float
) -> tuple[int, float]:
    """(node, fraction of the job) for the next piece of a CPU-only job, from ``items``
    (free CPU, node) sorted ascending: the tightest node that takes the whole ``left``, else
    the roomiest node's whole-replica share of it (0 when not even one replica fits)."""
    # rooms are free/cpu: the tightest whole fit is the first item at or above the need
    k = bisect_left(items, ((left - 1e-9) * cpu, -1))
    while k < len(items) and max(items[k][0], 0.0) / cpu < left - 1e-9:
        k += 1
    if k < len(items):
        return items[k][1], left
    top = max(items[-1][0], 0.0) if items else 0.0
    node = items[bisect_left(items, (items[-1][0], -1))][1] if items else 0
    return node, _quantized(top / cpu, amount, left)


def _scaled(v: ResourceVector, frac: float) -> ResourceVector:
    """``v.scale(frac)`` without re-validating: ``v`` is valid and ``0 <= frac <= 1`` keeps every
    amount finite (packing builds one per split share: thousands at 10,000 nodes)."""
    out = object.__new__(ResourceVector)
    for k in RESOURCE_KINDS:
        object.__setattr__(out, k, getattr(v, k) * frac)
    object.__setattr__(out, "custom", tuple((k, x * frac) for k, x in v.custom))
    return out


def _rooms(free: np.ndarray, vec: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Per node, the largest fraction of ``vec`` that fits in ``free`` (kinds x nodes), on every kind."""
    out: np.ndarray | None = None
    for k in np.flatnonzero(need):
        r = np.maximum(free[k], 0.0) / vec[k]
        out = r if out is None else np.minimum(out, r)
    return out if out is not None else np.full(free.shape[1], np.inf)


def _vector(kinds: Sequence[str], values: np.ndarray) -> ResourceVector:
    return ResourceVector.from_dict(dict(zip(kinds, (float(v) for v in values), strict=True)))


def _no_room(name: str, amount: ResourceVector, left: float, node_id: str, free: ResourceVector) -> PackingError:
    return PackingError(
        f"job {name!r}: {_fmt(amount.scale(left))} of its {_fmt(amount)} fits on "
        f"no allowed node (most room: {node_id} with {_fmt(free)})",
        name,
    )


def _quantized(frac: float, amount: ResourceVector, left: float) -> float:
    """A piece of at most ``frac``: whole, else whole PIM cores, else CPU quanta (never a sliver)."""
    if frac >= left - 1e-9:
        return left
    if amount.pim_cores > 0:  # PIM cores are integral per node (they sit on its stacks)
        return math.floor(frac * amount.pim_cores + 1e-9) / amount.pim_cores
    if amount.cpu <= 0:
        return frac
    cpu = math.floor(frac * amount.cpu / CPU_QUANTUM + 1e-9) * CPU_QUANTUM
    return cpu / amount.cpu if cpu > 0 else 0.0


def _put(
    name: str,
    node: int,
    frac: float,
    vec: np.ndarray,
    free: np.ndarray,
    placed: dict[tuple[str, int], float],
    left: float,
) -> float:
    free[:, node] -= vec * frac
    placed[(name, node)] = placed.get((name, node), 0.0) + frac
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
