"""The fast plumbing of a decision (to_allocation, the fresh CPU-only pack, the unchecked
constructors) decides exactly what a plain reference does: same values (signs of zero
included), same order, same moves, same errors."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Sequence

import numpy as np
import pytest

from allocators.base import PolicyError, Snapshot
from allocators.packing import PackingError, PackResult, pack, replica_count
from allocators.policies.engine import to_allocation
from allocators.problem import cpu_problem
from cluster_mgr.model import (
    CPU_QUANTUM,
    ZERO,
    Allocation,
    JobSpec,
    ModelError,
    NodeInfo,
    NodeShare,
    ResourceVector,
    unchecked_share,
    unchecked_vector,
)

CASES = 200


# --------------------------------------------------------------------------- references


def _ref_to_allocation(snapshot: Snapshot, x: np.ndarray, name: str, kind: str) -> Allocation:
    """One validated vector per job, wrapped for every job of the snapshot."""
    problem = cpu_problem(snapshot, kind)
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).all():
        raise PolicyError(
            f"{name}: non-finite amount for {problem.names[int(np.argmin(np.isfinite(x)))]}"
        )
    amounts = {
        job.name: job.minimum.with_amount(kind, v)
        for job, v in zip(problem.jobs, np.round(x, 9).tolist(), strict=True)
    }
    full = {j.name: amounts.get(j.name, ZERO) for j in snapshot.jobs}
    return Allocation(
        full, round=snapshot.round, epoch=snapshot.epoch, time=snapshot.time, policy=name
    )


def _ref_pack_fresh(
    allocation: Allocation, jobs: Sequence[JobSpec], nodes: Sequence[NodeInfo]
) -> PackResult | None:
    """Best fit as the packing module states it, step by step: biggest job first (then by
    name), the tightest node that takes the rest whole, else the roomiest node's whole CPU
    quanta; shares in (node id, job) order. None when the allocation is not a fresh CPU-only
    one (or does not fit): ``pack`` then takes its general path."""
    spec = {j.name: j for j in jobs}
    usable = [n for n in nodes if n.schedulable]
    ids = [n.node_id for n in usable]
    if len(set(ids)) != len(ids):
        return None
    todo = []
    for name, amount in allocation.amounts.items():
        job = spec.get(name)
        if job is None or job.pins or set(amount.as_dict(nonzero=True)) - {"cpu"}:
            return None
        if amount.cpu < -1e-9:
            return None
        if amount.cpu > 1e-9:
            todo.append((-amount.cpu, name, amount))
    todo.sort(key=lambda t: (t[0], t[1]))
    free = [n.capacity.cpu for n in usable]
    items = sorted((f, i) for i, f in enumerate(free))
    placed: dict[tuple[str, int], float] = {}
    for _, name, amount in todo:
        cpu = amount.cpu
        left = 1.0
        while left > 1e-9:
            fits = [(f, i) for f, i in items if max(f, 0.0) / cpu >= left - 1e-9]
            if fits:
                node, take = fits[0][1], left
            else:
                if not items:
                    return None
                top = items[-1][0]
                node = next(i for f, i in items if f == top)
                room = max(top, 0.0) / cpu
                take = _ref_quantized(room, cpu, left)
                if take <= 0:
                    return None
            placed[(name, node)] = placed.get((name, node), 0.0) + take
            old = free[node]
            free[node] = old - cpu * take
            left = max(left - take, 0.0)
            if free[node] != old:
                del items[bisect_left(items, (old, node))]
                insort(items, (free[node], node))
    shares = []
    for (name, node), frac in sorted(placed.items(), key=lambda kv: (ids[kv[0][1]], kv[0][0])):
        amount = allocation.amounts[name]
        res = amount if frac >= 1.0 - 1e-12 else amount.scale(frac)
        replicas = replica_count(res.cpu, spec[name].replica_cpus) or 1
        shares.append(NodeShare(ids[node], name, replicas, res))
    return PackResult(tuple(shares), len(placed))


def _ref_quantized(frac: float, cpu: float, left: float) -> float:
    if frac >= left - 1e-9:
        return left
    quanta = math.floor(frac * cpu / CPU_QUANTUM + 1e-9) * CPU_QUANTUM
    return quanta / cpu if quanta > 0 else 0.0


def _general(allocation: Allocation, jobs: list[JobSpec], nodes: list[NodeInfo]) -> object:
    """The general path (a previous share of a job not in the allocation sends it there)."""
    ghost = JobSpec("ghost-job")
    target = nodes[0].node_id if nodes else "none"
    previous = (NodeShare(target, ghost.name, 1, ResourceVector(cpu=0.1)),)
    return _outcome(lambda: pack(allocation, [*jobs, ghost], nodes, previous))


def _outcome(run: object) -> object:
    try:
        result = run()  # type: ignore[operator]
    except PackingError as exc:
        return ("error", str(exc), exc.job)
    return ("ok", _exact(result.shares), result.moves)


def _exact(shares: Sequence[NodeShare]) -> list[str]:
    # repr shows every field and the sign of a zero, which == does not tell apart
    return [repr(s) for s in shares]


# --------------------------------------------------------------------------- random cases


def _random_cluster(
    rng: np.random.Generator,
) -> tuple[list[JobSpec], list[NodeInfo], Allocation]:
    n_nodes = int(rng.integers(0, 40))
    caps = rng.choice([0.5, 1.0, 2.0, 4.0, 5.3, 8.0, 16.0], size=n_nodes)
    ids = [f"n{k}" for k in rng.permutation(n_nodes)]  # id order is not index order
    nodes = [
        NodeInfo(
            ids[k],
            ResourceVector(cpu=float(caps[k]), memory=64.0),
            alive=bool(rng.random() > 0.05),
            draining=bool(rng.random() < 0.05),
        )
        for k in range(n_nodes)
    ]
    if n_nodes > 1 and rng.random() < 0.05:
        nodes[1] = NodeInfo(nodes[0].node_id, nodes[1].capacity)  # a repeated node id
    n_jobs = int(rng.integers(0, 60))
    jobs = [
        JobSpec(f"j{i:03d}", replica_cpus=float(rng.choice([0.3, 0.5, 1.0, 2.0])))
        for i in rng.permutation(n_jobs)
    ]
    cap = sum(n.capacity.cpu for n in nodes if n.schedulable)
    fill = rng.uniform(0.3, 1.1)  # above 1: some allocations do not fit
    x = rng.dirichlet(np.ones(max(n_jobs, 1)))[:n_jobs] * cap * fill
    mode = rng.integers(0, 3)
    if mode == 0:
        x = np.floor(x / CPU_QUANTUM) * CPU_QUANTUM  # quantized, as policies hand out
    elif mode == 1:
        x = np.round(x, 3)
    amounts: dict[str, ResourceVector] = {}
    for job, v in zip(jobs, x, strict=True):
        r = rng.random()
        if r < 0.05:
            v = 0.0
        elif r < 0.07:
            v = -0.0
        elif r < 0.08:
            v = -1e-10  # within tolerance of zero: skipped, not an error
        elif r < 0.085:
            v = -0.5  # a negative amount: the general path names it
        elif r < 0.1:
            v = 1e-10
        amounts[job.name] = ResourceVector(cpu=float(v))
    if jobs and rng.random() < 0.05:
        j = jobs[0].name
        amounts[j] = ResourceVector(cpu=amounts[j].cpu, memory=1.0)  # not CPU-only
    if jobs and rng.random() < 0.05:
        jobs[-1] = JobSpec(jobs[-1].name, pins=(nodes[0].node_id,) if nodes else ("x",))
    if rng.random() < 0.03:
        amounts["stranger"] = ResourceVector(cpu=1.0)  # unknown job
    return jobs, nodes, Allocation(amounts)


def _assert_pack_agrees(alloc: Allocation, jobs: list[JobSpec], nodes: list[NodeInfo]) -> None:
    """``pack`` gives what the reference fast path gives (when it applies) and, fresh or not,
    placed or not, what the general path decides (errors included)."""
    got = _outcome(lambda: pack(alloc, jobs, nodes))
    ref = _ref_pack_fresh(alloc, jobs, nodes)
    if ref is not None:
        assert got == ("ok", _exact(ref.shares), ref.moves)
    assert got == _general(alloc, jobs, nodes)


@pytest.mark.parametrize("seed", range(CASES))
def test_pack_matches_the_reference_and_the_general_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    jobs, nodes, alloc = _random_cluster(rng)
    _assert_pack_agrees(alloc, jobs, nodes)


def test_pack_fast_path_at_scale_matches_the_reference() -> None:
    rng = np.random.default_rng(7)
    nodes = [NodeInfo(f"n{k:04d}", ResourceVector(cpu=5.3, memory=64.0)) for k in range(300)]
    jobs = [JobSpec(f"j{i:04d}", replica_cpus=float(rng.choice([0.5, 1, 2]))) for i in range(300)]
    x = np.floor(rng.dirichlet(np.ones(300) * 0.3) * 5.3 * 300 * 0.95 * 10) / 10
    alloc = Allocation({j.name: ResourceVector(cpu=float(v)) for j, v in zip(jobs, x, strict=True)})
    ref = _ref_pack_fresh(alloc, jobs, nodes)
    assert ref is not None and len(ref.shares) > len(jobs) // 2
    got = pack(alloc, jobs, nodes)
    assert _exact(got.shares) == _exact(ref.shares) and got.moves == ref.moves


@pytest.mark.parametrize("seed", range(40))
def test_pack_fast_path_on_tied_and_signed_free_cpu_matches_the_reference(seed: int) -> None:
    # Nodes grouped by equal free CPU (few sizes, -0.0 beside 0.0, negative capacity) and ids
    # out of index order: ties go to the lowest node, as in one sorted list of every node.
    rng = np.random.default_rng(5000 + seed)
    n_nodes = int(rng.integers(1, 120))
    caps = rng.choice([-0.5, -0.0, 0.0, 0.3, 2.0, 5.3, 5.3, 16.0], size=n_nodes)
    ids = [f"n{k:03d}" for k in rng.permutation(n_nodes)]
    nodes = [NodeInfo(ids[k], ResourceVector(cpu=float(caps[k]))) for k in range(n_nodes)]
    n_jobs = int(rng.integers(1, 150))
    jobs = [JobSpec(f"j{i:03d}", replica_cpus=float(rng.choice([0.5, 1.0]))) for i in range(n_jobs)]
    cap = sum(max(n.capacity.cpu, 0.0) for n in nodes)
    x = np.floor(rng.dirichlet(np.ones(n_jobs)) * cap * rng.uniform(0.5, 1.05) * 10) / 10
    alloc = Allocation({j.name: ResourceVector(cpu=float(v)) for j, v in zip(jobs, x, strict=True)})
    _assert_pack_agrees(alloc, jobs, nodes)


def test_pack_fast_path_piece_too_small_to_change_free_cpu() -> None:
    # 1e9 - 2e-9 is 1e9: the node keeps its free CPU (and its place) and takes the next job too
    nodes = [NodeInfo("a", ResourceVector(cpu=1e9)), NodeInfo("b", ResourceVector(cpu=1e9))]
    jobs = [JobSpec(f"j{i}") for i in range(3)]
    alloc = Allocation({j.name: ResourceVector(cpu=2e-9) for j in jobs})
    got = _outcome(lambda: pack(alloc, jobs, nodes))
    ref = _ref_pack_fresh(alloc, jobs, nodes)
    assert ref is not None and got == ("ok", _exact(ref.shares), ref.moves)
    assert {s.node_id for s in ref.shares} == {"a"}
    assert got == _general(alloc, jobs, nodes)


def test_pack_fast_path_many_equal_nodes_matches_the_reference() -> None:
    # 1,000 nodes of one size, big jobs split over many of them: one large group of ties
    rng = np.random.default_rng(11)
    nodes = [NodeInfo(f"n{k:04d}", ResourceVector(cpu=16.0)) for k in rng.permutation(1000)]
    jobs = [JobSpec(f"j{i:03d}", replica_cpus=float(rng.choice([0.5, 1, 2]))) for i in range(100)]
    x = np.floor(rng.uniform(0.5, 2.0, 100) / 1.25 * 16.0 * 1000 * 0.9 / 100 * 10) / 10
    alloc = Allocation({j.name: ResourceVector(cpu=float(v)) for j, v in zip(jobs, x, strict=True)})
    ref = _ref_pack_fresh(alloc, jobs, nodes)
    assert ref is not None and len(ref.shares) > 5 * len(jobs)
    got = pack(alloc, jobs, nodes)
    assert _exact(got.shares) == _exact(ref.shares) and got.moves == ref.moves


# --------------------------------------------------------------------------- to_allocation


def _random_snapshot(rng: np.random.Generator) -> tuple[Snapshot, str]:
    kind = str(rng.choice(["cpu", "cpu", "memory", "gpu"]))
    shared = ResourceVector(cpu=0.1, memory=1.0)
    n = int(rng.integers(0, 40))
    jobs = []
    for i in rng.permutation(n):
        r = rng.random()
        if r < 0.5:
            minimum = shared  # one minimum object for many jobs (the usual case)
        elif r < 0.7:
            minimum = ResourceVector(cpu=0.1, memory=1.0)  # equal, another object
        elif r < 0.9:
            minimum = ZERO
        else:
            minimum = ResourceVector(cpu=0.2, custom=(("accel", 1.0),))
        jobs.append(JobSpec(f"j{i:03d}", minimum=minimum))
    nodes = (
        NodeInfo("n0", ResourceVector(cpu=1e6, memory=1e6, gpu=1e6, custom=(("accel", 1e6),))),
    )
    snap = Snapshot(
        time=float(rng.uniform(0, 100)),
        round=int(rng.integers(0, 9)),
        nodes=nodes,
        jobs=tuple(jobs),
        epoch=3,
    )
    return snap, kind


@pytest.mark.parametrize("seed", range(CASES))
def test_to_allocation_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    snap, kind = _random_snapshot(rng)
    problem = cpu_problem(snap, kind)
    n = problem.n
    x = rng.choice([0.0, 0.1, 0.3, 1.2, 2.5], size=n) + (rng.random(n) < 0.3) * rng.random(n)
    x = np.round(x, int(rng.integers(1, 12)))
    r = rng.random()
    if n and r < 0.1:
        x[rng.integers(0, n)] = -0.0
    elif n and r < 0.15:
        x[rng.integers(0, n)] = -1.5  # below zero: kept as it is, as before
    elif n and r < 0.2:
        x[rng.integers(0, n)] = float(rng.choice([np.nan, np.inf]))
    elif n and r < 0.25:
        x = x + 1e-10 * rng.random(n)  # amounts that rounding to 9 decimals moves
    try:
        want: object = _ref_to_allocation(snap, x, "p", kind)
    except PolicyError as exc:
        want = ("error", str(exc))
    try:
        got: object = to_allocation(snap, problem, x, "p")
    except PolicyError as exc:
        got = ("error", str(exc))
    if isinstance(want, Allocation):
        assert isinstance(got, Allocation)
        assert list(got.amounts) == list(want.amounts)
        assert repr(got) == repr(want)  # every field, signs of zero included
    else:
        assert got == want


def test_to_allocation_wrong_length_fails_as_before() -> None:
    jobs = tuple(JobSpec(f"j{i}") for i in range(3))
    snap = Snapshot(0.0, 0, (NodeInfo("n0", ResourceVector(cpu=8.0)),), jobs)
    problem = cpu_problem(snap)
    for x in (np.ones(2), np.ones(4)):
        with pytest.raises(ValueError, match="zip"):
            to_allocation(snap, problem, x, "p")


# --------------------------------------------------------------------------- constructors


def test_unchecked_constructors_equal_the_checked_ones() -> None:
    v = unchecked_vector(1.5, 2.0, 0.0, 3.0, 0.0, (("accel", 1.0),))
    w = ResourceVector(cpu=1.5, memory=2.0, pim_cores=3.0, custom=(("accel", 1.0),))
    assert type(v) is ResourceVector and v == w and hash(v) == hash(w) and repr(v) == repr(w)
    s = unchecked_share("n0", "j0", 2, v)
    assert type(s) is NodeShare and s == NodeShare("n0", "j0", 2, w)
    with pytest.raises(AttributeError):
        v.cpu = 2.0  # type: ignore[misc]  # still frozen


def test_user_facing_construction_still_validates() -> None:
    with pytest.raises(ModelError, match="finite"):
        ResourceVector(cpu=math.inf)
    with pytest.raises(ModelError, match="number"):
        ResourceVector(cpu="lots")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="shadows"):
        ResourceVector(custom=(("cpu", 1.0),))
    with pytest.raises(ModelError, match="finite"):
        ResourceVector.from_dict({"memory": math.nan})
    with pytest.raises(ModelError, match="finite"):
        Allocation.from_dict({"amounts": {"a": {"cpu": math.inf}}})
