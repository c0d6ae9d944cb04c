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
from heapq import heappop, heappush
from operator import attrgetter, itemgetter

import numpy as np

from cluster_mgr.model import (
    CPU_QUANTUM,
    RESOURCE_KINDS,
    RV_SETTERS,
    SHARE_SETTERS,
    ZERO,
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    ResourceVector,
    unchecked_share,
    unchecked_vector,
)

_FIRST = itemgetter(0)
_WHOLE = 1.0 - 1e-9  # the need of a whole job (left = 1.0)
_SECOND = itemgetter(1)
_PINS = attrgetter("pins")
_CPU = attrgetter("cpu")
_NOT_CPU = attrgetter("memory", "gpu", "pim_cores", "mesh", "custom")
_JOB = attrgetter("job")


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
                    raise _no_room(
                        name, amount, left, usable[node].node_id, _vector(kinds, free[:, node])
                    )
            if placed.get((name, node), 0.0) == 0.0 and prev.get(node, 0.0) == 0.0:
                moves += 1
            left = _put(name, node, take, vec, free, placed, left)
            if order is not None:
                order.sync(node)

    amounts = {t[2]: t[3] for t in todo}
    return PackResult(shares=_shares(placed, amounts, spec, usable), moves=moves)


def _pack_cpu_fresh(
    allocation: Allocation, spec: Mapping[str, JobSpec], usable: Sequence[NodeInfo]
) -> PackResult | None:
    """The common round, in plain Python floats: every amount CPU-only, no job pinned, nothing
    placed before. The same best-fit decisions as the general path below (same order, same
    ties, same float arithmetic), without its per-job array work (most of a 1,000-job pack).
    None when the allocation is not of that kind."""
    # The checks as C-level passes over all jobs (a Python loop of them per job was a tenth
    # of the pack); any failing one sends the allocation down the general path.
    amounts = allocation.amounts
    if not amounts.keys() <= spec.keys():
        return None  # an unknown job: the general path names it
    names = list(amounts)
    vectors = list(amounts.values())
    jobs = list(map(spec.__getitem__, names))
    distinct = list(dict(zip(map(id, vectors), vectors, strict=True)).values())  # shared vectors
    if any(map(_PINS, jobs)) or any(map(any, map(_NOT_CPU, distinct))):
        return None  # pinned, or an amount of another kind (amounts are floats: truth is != 0)
    cpus = list(map(_CPU, vectors))
    if (np.array(cpus, dtype=float) < -1e-9).any():
        return None  # a negative amount: the general path names the error
    todo = [t for t in zip([-c for c in cpus], names, vectors, jobs, strict=True) if t[0] < -1e-9]
    # biggest first, then by name: two stable sorts on plain keys (names are unique)
    todo.sort(key=_SECOND)
    todo.sort(key=_FIRST)
    ids = [n.node_id for n in usable]
    if len(set(ids)) != len(ids):
        return None  # repeated node ids: the general path orders their shares
    size = len(usable)
    # the distinct free CPU values ascending, and each value's nodes (see _free_groups)
    frees, groups = _free_groups([n.capacity.cpu for n in usable])
    # Every share and split vector is built here: slot setters, no calls in between
    new_object = object.__new__
    set_cpu, set_memory, set_gpu, set_pim, set_mesh, set_custom = RV_SETTERS
    set_node, set_job, set_replicas, set_resources = SHARE_SETTERS
    buckets: list[list[NodeShare] | None] = [None] * size  # node -> its shares
    # (amount id, fraction) -> piece; the amounts live in ``allocation`` meanwhile
    scaled: dict[tuple[int, float], ResourceVector] = {}
    ceil = math.ceil
    for neg, name, amount, job in todo:
        cpu = -neg
        # Most jobs go whole to one node: that first search (left = 1.0) before the piece by
        # piece loop, which repeats it for the others (same search, same answer).
        k = bisect_left(frees, _WHOLE * cpu)
        end = len(frees)
        while k < end and (0.0 if frees[k] < 0.0 else frees[k]) / cpu < _WHOLE:
            k += 1
        if k < end:
            node = _take(frees, groups, k, frees[k] - cpu)  # cpu * 1.0
            pieces: Sequence[tuple[int, float]] = ((node, 1.0),)
        else:
            pieces = _pieces(cpu, frees, groups)
            if pieces is None:
                return None  # does not fit: the general path raises the detailed PackingError
        replica_cpus = job.replica_cpus
        for node, frac in pieces:
            if frac >= 1.0 - 1e-12:
                res = amount
                share_cpu = cpu
            else:
                share_cpu = cpu * frac
                # Equal pieces of one amount (object) share one vector: pieces repeat (the
                # same sizes split the same way), and vectors are immutable.
                res = scaled.get((id(amount), frac))
                if res is None:
                    # _scaled(amount, frac) inlined: the other kinds are +-0.0, which a
                    # positive frac leaves as they are
                    res = scaled[(id(amount), frac)] = new_object(ResourceVector)
                    set_cpu(res, share_cpu)
                    set_memory(res, amount.memory)
                    set_gpu(res, amount.gpu)
                    set_pim(res, amount.pim_cores)
                    set_mesh(res, amount.mesh)
                    set_custom(res, ())
            # replica_count(share_cpu, replica_cpus) or 1, inlined (a call per share)
            if share_cpu <= 1e-9:
                replicas = 1
            else:
                replicas = ceil(share_cpu / replica_cpus - 1e-9)
                if replicas < 1:
                    replicas = 1
            # unchecked_share inlined (NodeShare by its slot setters)
            share = new_object(NodeShare)
            set_node(share, ids[node])
            set_job(share, name)
            set_replicas(share, replicas)
            set_resources(share, res)
            bucket = buckets[node]
            if bucket is None:
                buckets[node] = [share]
            else:
                bucket.append(share)
    # (node id, job) order, as _shares gives: nodes by id, then each node's few jobs by name
    shares: list[NodeShare] = []
    for node in sorted(range(size), key=ids.__getitem__):
        bucket = buckets[node]
        if bucket is not None:
            if len(bucket) > 1:
                bucket.sort(key=_JOB)  # one share per (job, node): no ties
            shares.extend(bucket)
    # fresh: every share is on a node where its job had no replica before, a move each
    return PackResult(shares=tuple(shares), moves=len(shares))


def _free_groups(caps: Sequence[float]) -> tuple[list[float], dict[float, list[int]]]:
    """The nodes by (free CPU, node) ascending, grouped by free CPU: the distinct values
    ascending, and for each value the heap of its nodes (the lowest first, as ties go).

    Best fit takes the first node of a value, and a node it fills moves to a lower value. In one
    sorted list of every node that move was an insert of O(nodes) (most of a pack on 10,000
    nodes); grouped, it is a heap push. Values are few: nodes come in a few sizes, and the
    nodes filled by pieces of one size are left with equal free CPU."""
    groups: dict[float, list[int]] = {}
    for node, cap in enumerate(caps):  # by node: each list is sorted, so a heap
        group = groups.get(cap)
        if group is None:
            groups[cap] = [node]
        else:
            group.append(node)
    return sorted(groups), groups


def _take(frees: list[float], groups: dict[float, list[int]], k: int, new: float) -> int:
    """The first node of value ``frees[k]`` takes a piece and has ``new`` <= ``frees[k]`` free
    CPU left: it moves to the group of ``new`` (a new value goes in below k). Returns the node."""
    old = frees[k]
    group = groups[old]
    if new == old:  # too small a piece to change the float: the node stays
        return group[0]
    node = heappop(group)
    if not group:
        del groups[old]
        del frees[k]
    group = groups.get(new)  # -0.0 and 0.0 are one value, as they were one tie
    if group is None:
        groups[new] = [node]
        frees.insert(bisect_left(frees, new, 0, k), new)
    else:
        heappush(group, node)
    return node


def _pieces(
    cpu: float, frees: list[float], groups: dict[float, list[int]]
) -> list[tuple[int, float]] | None:
    """(node, fraction) pieces of a CPU-only job of ``cpu`` > 0, from ``frees`` and ``groups``
    (see ``_free_groups``), both updated in place; a node's pieces added up. The same best fit
    as ``_best_fit``: the tightest node that takes the rest whole, else the roomiest node's
    whole CPU quanta. None when a piece does not fit."""
    left = 1.0
    pieces: list[tuple[int, float]] = []  # as placed
    while left > 1e-9:
        # _best_fit, inlined: rooms are free/cpu, the tightest whole fit is the first value at
        # or above the need (max(f, 0.0) written out)
        need = left - 1e-9
        end = len(frees)
        k = bisect_left(frees, need * cpu)
        while k < end and (0.0 if frees[k] < 0.0 else frees[k]) / cpu < need:
            k += 1
        if k < end:
            take = left
        else:
            if not end:
                return None
            k = end - 1  # the roomiest
            top = frees[k]
            take = _quantized_cpu((0.0 if top < 0.0 else top) / cpu, cpu, left)
            if take <= 0:
                return None
        old = frees[k]
        new = old - cpu * take
        left -= take
        if left < 0.0:  # max(left, 0.0) without the call (-0.0 stays, as there)
            left = 0.0
        node = _take(frees, groups, k, new)
        pieces.append((node, take))
    if len(pieces) > 1:  # a node's pieces of one job add up, in the order placed
        parts: dict[int, float] = {}
        for node, take in pieces:
            parts[node] = parts.get(node, 0.0) + take  # 0.0 + take is take exactly
        pieces = list(parts.items())
    return pieces


def _replicas(cpu: float, replica_cpus: float) -> int:
    """``replica_count(cpu, replica_cpus) or 1``: a share always holds a replica."""
    if cpu <= 1e-9:
        return 1
    return max(1, math.ceil(cpu / replica_cpus - 1e-9))


def _quantized_cpu(frac: float, cpu: float, left: float) -> float:
    """``_quantized`` for a CPU-only amount of ``cpu`` > 0 (no PIM cores): CPU quanta."""
    if frac >= left - 1e-9:
        return left
    quanta = math.floor(frac * cpu / CPU_QUANTUM + 1e-9) * CPU_QUANTUM
    return quanta / cpu if quanta > 0 else 0.0


def _shares(
    placed: Mapping[tuple[str, int], float],
    amounts: Mapping[str, ResourceVector],
    spec: Mapping[str, JobSpec],
    usable: Sequence[NodeInfo],
) -> tuple[NodeShare, ...]:
    """The shares in (node id, job) order; a job's equal pieces share one vector."""
    ids = [n.node_id for n in usable]
    if len(set(ids)) == len(ids):
        # Unique ids: bucket the pieces by node and sort the nodes by id, then each node's few
        # jobs by name: the same order as one sort of every piece, at a fraction of its cost.
        by_node: dict[int, list[tuple[str, float]]] = {}
        for (name, node), frac in placed.items():
            bucket = by_node.get(node)
            if bucket is None:
                by_node[node] = [(name, frac)]
            else:
                bucket.append((name, frac))
        ordered: list[tuple[int, str, float]] = []
        for node in sorted(by_node, key=ids.__getitem__):
            bucket = by_node[node]
            if len(bucket) > 1:
                bucket.sort(key=_FIRST)  # (job, node) keys are unique: no ties
            ordered.extend((node, name, frac) for name, frac in bucket)
    else:  # a repeated node id: one sort (stable, as placed) keeps the old order exactly
        ordered = [
            (node, name, frac)
            for (name, node), frac in sorted(
                placed.items(), key=lambda kv: (ids[kv[0][1]], kv[0][0])
            )
        ]
    shares = []
    pieces: dict[tuple[str, float], ResourceVector] = {}  # a job's equal pieces share one vector
    for node, name, frac in ordered:
        if frac >= 1.0 - 1e-12:
            res = amounts[name]
        else:
            res = pieces.get((name, frac))
            if res is None:
                res = pieces[(name, frac)] = _scaled(amounts[name], frac)
        shares.append(
            unchecked_share(ids[node], name, _replicas(res.cpu, spec[name].replica_cpus), res)
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
                raise _no_room(
                    name, amount, left, usable[node].node_id, _vector(kinds, free[:, node])
                )
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
    return unchecked_vector(
        v.cpu * frac,
        v.memory * frac,
        v.gpu * frac,
        v.pim_cores * frac,
        v.mesh * frac,
        tuple((k, x * frac) for k, x in v.custom) if v.custom else (),
    )


def _rooms(free: np.ndarray, vec: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Per node, the largest fraction of ``vec`` that fits in ``free`` (kinds x nodes), on every kind."""
    out: np.ndarray | None = None
    for k in np.flatnonzero(need):
        r = np.maximum(free[k], 0.0) / vec[k]
        out = r if out is None else np.minimum(out, r)
    return out if out is not None else np.full(free.shape[1], np.inf)


def _vector(kinds: Sequence[str], values: np.ndarray) -> ResourceVector:
    return ResourceVector.from_dict(dict(zip(kinds, (float(v) for v in values), strict=True)))


def _no_room(
    name: str, amount: ResourceVector, left: float, node_id: str, free: ResourceVector
) -> PackingError:
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
