"""Conformance kit for allocation policies: ours, baselines and plug-ins alike.

``check_policy(factory)`` runs every check on seeded random snapshots and
raises ``ConformanceError`` listing each violation; the individual checks are
public so a plug-in author can run one at a time. Checks:

- capacity: no kind over capacity in aggregate, nor on any node once packed
  (``allocators.packing.pack``: an allocation that cannot be packed fails);
- bounds: every job present, minimums, maximums, pins (through packing), CPU in
  0.1 quanta (or exactly at a bound) and whole PIM cores;
- work conservation: no CPU quantum idle while some job below its maximum
  would gain utility (upper bound) from it and could be given it and still pack,
  unless the policy states a reserve;
- determinism: the same snapshot and state give the same decision and state;
- edge cases: zero jobs, one job, jobs arriving and leaving;
- stillness: the same snapshot again (state carried) moves nothing;
- replay: the state survives a JSON round trip and the decision from it is the same;
- infeasible: minimums above capacity raise InfeasibleError and change no state.

Test doubles: ``SaturatingModel`` (reward = tanh(k * cpu / load)),
``BandModel`` (known lcb/ucb offsets around any model's mean) and ``MultiModel``
(reward from cpu, memory and PIM cores at once); ``random_multi_snapshot`` gives few
small nodes and such jobs, where an allocation that fits in aggregate often does not pack.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from allocators.base import InfeasibleError, Policy, PolicyState, Snapshot, check_feasible
from allocators.objectives import Objective
from allocators.packing import PackingError, pack
from cluster_mgr.model import (
    CPU_QUANTUM,
    SLO,
    Allocation,
    JobKind,
    JobSpec,
    NodeInfo,
    PerformanceModel,
    ResourceVector,
)

PolicyFactory = Callable[[], Policy]
TOL = 1e-6


class ConformanceError(AssertionError):
    """One or more conformance checks failed; the message lists them."""


# --------------------------------------------------------------------------- test doubles


@dataclass(frozen=True)
class SaturatingModel:
    """reward = tanh(k * cpu / load) (the shape of Cilantro's tanh family), exact bounds."""

    k: float = 1.0

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.asarray(alloc, dtype=float)
        a = a[:, 0] if a.ndim == 2 else a
        m = np.tanh(self.k * a / np.maximum(np.asarray(load, dtype=float), 1e-9))
        return m, m, m

    @classmethod
    def bounds_batch(
        cls, models: Sequence[SaturatingModel], alloc: np.ndarray, load: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many jobs at once: row i of ``alloc`` (k, m) for ``models[i]`` at ``load[i]``."""
        k = np.array([mod.k for mod in models], dtype=float)
        m = np.tanh(k[:, None] * alloc / np.maximum(np.asarray(load, dtype=float), 1e-9)[:, None])
        return m, m, m


@dataclass(frozen=True)
class BandModel:
    """Any model's mean, shifted by ``error``, with known confidence offsets: mean = base
    mean + error, lcb = mean - lower, ucb = mean + upper (all clipped to [0, 1]). With
    ``error`` within [-upper, lower] the band still holds the base's mean; a learner in
    mid-run offers such a band, its estimate off the truth by some part of its width."""

    base: PerformanceModel
    lower: float = 0.05
    upper: float = 0.05
    error: float = 0.0

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = np.asarray(self.base.bounds(alloc, load)[1], dtype=float)
        if self.error:
            m = np.clip(m + self.error, 0.0, 1.0)
        return np.clip(m - self.lower, 0.0, 1.0), m, np.clip(m + self.upper, 0.0, 1.0)

    @classmethod
    def bounds_batch(
        cls, models: Sequence[BandModel], alloc: np.ndarray, load: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many jobs at once: the bases through ``query_bounds`` (batched where they allow)."""
        return cls.prepare_batch(models, load)(alloc)

    @classmethod
    def prepare_batch(
        cls, models: Sequence[BandModel], load: np.ndarray
    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``bounds_batch`` bound to these models: bases prepared and offsets read once."""
        from allocators.problem import clip_unit, prepare_query

        base = prepare_query([mod.base for mod in models], np.asarray(load, dtype=float))
        lo = np.array([mod.lower for mod in models], dtype=float)[:, None]
        up = np.array([mod.upper for mod in models], dtype=float)[:, None]
        err = np.array([mod.error for mod in models], dtype=float)[:, None]
        shifted = bool(err.any())

        def query(alloc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            m = base(np.asarray(alloc, dtype=float))[1]
            if shifted:
                m = clip_unit(m + err)
            return clip_unit(m - lo), m, clip_unit(m + up)

        return query


@dataclass(frozen=True)
class MultiModel:
    """A multi-resource job: reward = tanh(sum_k gain_k * a_k / load) over the allocation's
    columns (cpu first, then ``kinds`` order of the policy); exact bounds, ``dim`` columns."""

    gains: tuple[float, ...] = (1.0, 0.1, 0.5)

    @property
    def dim(self) -> int:
        return len(self.gains)

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.asarray(alloc, dtype=float)
        a = a[:, None] if a.ndim == 1 else a
        g = np.zeros(a.shape[1])
        g[: min(len(self.gains), a.shape[1])] = self.gains[: a.shape[1]]
        m = np.tanh(a @ g / max(float(np.mean(load)), 1e-9))
        return m, m, m


def random_multi_snapshot(rng: np.random.Generator, n_jobs: int | None = None) -> Snapshot:
    """Few small nodes and jobs that gain from cpu, memory and PIM cores at once (MultiModel),
    with multi-kind minimums: allocations that fit in aggregate often cannot be packed."""
    n_jobs = int(rng.integers(2, 7)) if n_jobs is None else n_jobs
    nodes = tuple(
        NodeInfo(
            f"node-{k}",
            ResourceVector(
                cpu=float(rng.integers(1, 5)),
                memory=float(rng.integers(2, 9)),
                pim_cores=float(rng.choice([0.0, 2.0, 4.0, 8.0])),
            ),
        )
        for k in range(int(rng.integers(1, 4)))
    )
    jobs, mods, loads = [], {}, {}
    for i in range(n_jobs):
        name = f"job-{i:03d}"
        minimum = ResourceVector()
        if rng.random() < 0.5:
            minimum = ResourceVector(cpu=0.1 * int(rng.integers(0, 4)), memory=0.5)
        pins: tuple[str, ...] = ()
        if i == 0 and rng.random() < 0.3:  # one pinned job at most: the rest can reach every node
            pins = (nodes[int(rng.integers(0, len(nodes)))].node_id,)
            minimum = ResourceVector()
        jobs.append(
            JobSpec(
                name,
                weight=float(rng.integers(1, 4)),
                minimum=minimum,
                pins=pins,
                replica_cpus=float(rng.choice([0.5, 1.0])),
            )
        )
        mods[name] = MultiModel(
            (float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.0, 0.5)), float(rng.uniform(0, 1)))
        )
        loads[name] = float(rng.uniform(0.5, 3.0))
    snap = Snapshot(
        time=0.0,
        round=0,
        nodes=nodes,
        jobs=tuple(jobs),
        models=mods,
        loads=loads,
        seed=int(rng.integers(0, 2**31)),
    )
    try:
        check_feasible(snap)
    except InfeasibleError:  # minimums above a tiny cluster: drop them
        snap = replace(snap, jobs=tuple(replace(j, minimum=ResourceVector()) for j in jobs))
    return snap


def random_snapshot(
    rng: np.random.Generator,
    n_jobs: int | None = None,
    n_nodes: int | None = None,
    *,
    time: float = 0.0,
    round_: int = 0,
    models: Callable[[np.random.Generator, int], PerformanceModel] | None = None,
    constraints: bool = True,
) -> Snapshot:
    """A seeded random snapshot: models, loads, measured signals, minimums, maximums, pins."""
    n_jobs = int(rng.integers(0, 9)) if n_jobs is None else n_jobs
    n_nodes = int(rng.integers(1, 6)) if n_nodes is None else n_nodes
    nodes = tuple(
        NodeInfo(
            f"node-{k}",
            ResourceVector(
                cpu=float(rng.integers(2, 17)), memory=64.0, pim_cores=16.0, mesh=1000.0
            ),
        )
        for k in range(n_nodes)
    )
    cap = sum(n.capacity.cpu for n in nodes)
    jobs, mods, loads, signals = [], {}, {}, {}
    for i in range(n_jobs):
        name = f"job-{i:03d}"
        minimum = ResourceVector()
        maximum = None
        pins: tuple[str, ...] = ()
        if constraints and rng.random() < 0.3:
            minimum = ResourceVector(cpu=round(float(rng.uniform(0, cap / (2 * n_jobs))), 1))
        if constraints and rng.random() < 0.2:
            maximum = ResourceVector(
                cpu=minimum.cpu + round(float(rng.uniform(0.5, 4)), 1),
                memory=1e6,
                gpu=1e6,
                pim_cores=1e6,
                mesh=1e6,
            )
        if constraints and rng.random() < 0.15:
            pins = (f"node-{int(rng.integers(0, n_nodes))}",)
            minimum = ResourceVector()
        kind = JobKind.BEST_EFFORT if rng.random() < 0.1 else JobKind.LATENCY_CRITICAL
        jobs.append(
            JobSpec(
                name,
                kind=kind,
                slo=SLO(target=50.0, threshold=float(rng.choice([0.9, 0.95, 0.99]))),
                weight=float(rng.integers(1, 4)),
                priority=int(rng.integers(0, 3)),
                minimum=minimum,
                maximum=maximum,
                pins=pins,
                replica_cpus=float(rng.choice([0.5, 1.0, 2.0])),
            )
        )
        if models is not None:
            mods[name] = models(rng, i)
        elif rng.random() < 0.9:
            base = SaturatingModel(k=float(rng.uniform(0.2, 3.0)))
            mods[name] = BandModel(base, float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.2)))
        loads[name] = float(rng.uniform(0.5, 5.0))
        signals[name] = {
            "p99_ms": float(rng.uniform(10, 120)),
            "reward": float(rng.uniform(0.5, 1.0)),
            "queue_len": float(rng.integers(0, 20)),
            "queue_delay_ms": float(rng.choice([0.0, 0.5])),
            "utilization": float(rng.uniform(0.1, 1.0)),
            "load": loads[name],
        }
    return Snapshot(
        time=time,
        round=round_,
        nodes=nodes,
        jobs=tuple(jobs),
        models=mods,
        loads=loads,
        seed=int(rng.integers(0, 2**31)),
        signals=signals,
    )


# --------------------------------------------------------------------------- objectives


def check_objective(obj: Objective, seed: int = 0, samples: int = 2000) -> list[str]:
    """Check an objective's declared properties on random samples; returns the violations.

    Monotone: raising one job's utility never lowers the value. Concave: the value
    at a midpoint is at least the mean of the values at the ends. Separable: a
    job's value does not change when other jobs' utilities do.
    """
    rng = np.random.default_rng(seed)
    errs: list[str] = []
    n = 6
    w = rng.integers(1, 4, size=n).astype(float)
    a = rng.random((samples, n))
    b = rng.random((samples, n))
    x = rng.uniform(0, 10, size=(samples, n))

    def value(u: np.ndarray) -> np.ndarray:
        return obj.welfare(u, x, w)

    try:
        va, vb = value(a), value(b)
    except Exception as exc:
        return [f"objective {obj.name!r} fails on samples: {type(exc).__name__}: {exc}"]
    if not (np.all(np.isfinite(va)) and np.all(np.isfinite(vb))):
        errs.append(f"objective {obj.name!r}: non-finite values on utilities in [0, 1]")
    if obj.monotone:
        hi = np.maximum(a, b)
        if np.any(value(hi) < np.maximum(va, vb) - 1e-9):
            errs.append(f"objective {obj.name!r} is declared monotone but falls as utility rises")
    if obj.concave:
        mid = value(0.5 * (a + b))
        if np.any(mid < 0.5 * (va + vb) - 1e-9):
            errs.append(f"objective {obj.name!r} is declared concave but fails the midpoint test")
    if obj.separable:
        per = obj.values(a, x)
        other = a.copy()
        other[:, 1:] = b[:, 1:]
        if not np.allclose(obj.values(other, x)[:, 0], per[:, 0], atol=1e-12):
            errs.append(
                f"objective {obj.name!r} is declared separable but a job's value depends on others"
            )
    return errs


# --------------------------------------------------------------------------- checks


def check_allocation(
    snapshot: Snapshot, alloc: Allocation, policy: Policy | None = None
) -> list[str]:
    """Capacity (aggregate and packed per node), bounds, pins and integrality."""
    errs: list[str] = []
    names = {j.name for j in snapshot.jobs}
    if set(alloc.amounts) != names:
        errs.append(f"allocation jobs {sorted(alloc.amounts)} != snapshot jobs {sorted(names)}")
        return errs
    over = alloc.total().over(snapshot.capacity, tol=TOL)
    if over:
        errs.append(f"over capacity in aggregate: {over}")
    for j in snapshot.jobs:
        a = alloc.get(j.name)
        for k, v in a.as_dict().items():
            if v < -TOL:
                errs.append(f"{j.name}: negative {k} {v}")
            if v < j.minimum.get(k) - TOL:
                errs.append(f"{j.name}: {k} {v} below its minimum {j.minimum.get(k)}")
            if v > j.bound_max(k) + TOL:
                errs.append(f"{j.name}: {k} {v} above its maximum {j.bound_max(k)}")
        if abs(a.pim_cores - round(a.pim_cores)) > TOL:
            errs.append(f"{j.name}: fractional pim_cores {a.pim_cores}")
        q = a.cpu / CPU_QUANTUM
        at_bound = abs(a.cpu - j.minimum.cpu) < TOL or abs(a.cpu - j.bound_max("cpu")) < TOL
        if abs(q - round(q)) > 1e-6 and not at_bound:
            errs.append(f"{j.name}: cpu {a.cpu} is not a multiple of {CPU_QUANTUM}")
    if not over:
        try:
            plan = pack(alloc, snapshot.jobs, snapshot.nodes)
        except PackingError as exc:
            errs.append(f"fits in aggregate but cannot be packed: {exc}")
        else:
            cap = {n.node_id: n.capacity for n in snapshot.nodes}
            used: dict[str, ResourceVector] = {}
            for s in plan.shares:
                used[s.node_id] = used.get(s.node_id, ResourceVector()) + s.resources
                job = snapshot.job(s.job)
                if job.pins and s.node_id not in job.pins:
                    errs.append(f"{s.job}: placed on {s.node_id}, outside its pins {job.pins}")
            for nid, u in used.items():
                node_over = u.over(cap[nid], tol=TOL)
                if node_over:
                    errs.append(f"node {nid} over capacity once packed: {node_over}")
    return errs


def check_work_conserving(snapshot: Snapshot, alloc: Allocation, policy: Policy) -> list[str]:
    """No idle CPU quantum while a job below its maximum would gain from it (upper bound)."""
    if policy.reserve > 0 or "cpu" not in policy.resources:
        return []
    idle = snapshot.capacity.cpu - alloc.total().cpu
    if idle < CPU_QUANTUM - TOL:
        return []
    errs = []
    for j in snapshot.jobs:
        model = snapshot.models.get(j.name)
        x = alloc.get(j.name).cpu
        room = min(idle, j.bound_max("cpu") - x)
        if model is None or room < CPU_QUANTUM - TOL:
            continue
        load = float(snapshot.loads.get(j.name, 1.0))
        ucb = np.asarray(model.bounds(np.array([x, x + room]), load)[2], dtype=float)
        thr = j.reward_threshold
        gain = min(ucb[1], thr) - min(ucb[0], thr)  # utility saturates at the threshold
        if gain > 1e-4 and _packs_with_one_more(snapshot, alloc, j.name):
            errs.append(f"{idle:.2f} cpu idle while {j.name} would gain {gain:.3g} reward from it")
    return errs


def _packs_with_one_more(snapshot: Snapshot, alloc: Allocation, job: str) -> bool:
    """Whether ``job`` could be given one more CPU quantum and the allocation still pack: a
    quantum no job can take without breaking packing (its other kinds do not fit beside it on
    the node with the CPU) is not idle capacity."""
    a = alloc.get(job)
    more = replace(alloc, amounts={**alloc.amounts, job: a.with_amount("cpu", a.cpu + CPU_QUANTUM)})
    try:
        pack(more, snapshot.jobs, snapshot.nodes)
    except PackingError:
        return False
    return True


def _json_state(state: PolicyState, who: str) -> list[str]:
    try:
        back = json.loads(json.dumps(state))
    except (TypeError, ValueError) as exc:
        return [f"{who}: state is not JSON-able: {exc}"]
    if not isinstance(back, dict):
        return [f"{who}: state must be a dict"]
    return []


def _same(a: Allocation, b: Allocation) -> bool:
    if set(a.amounts) != set(b.amounts):
        return False
    return all(
        np.allclose(
            [a.get(n).get(k) for k in a.get(n).kinds()],
            [b.get(n).get(k) for k in a.get(n).kinds()],
            atol=1e-9,
        )
        for n in a.amounts
    )


def check_decision(
    factory: PolicyFactory, snapshot: Snapshot, state: PolicyState | None = None
) -> list[str]:
    """All per-snapshot checks for one decision."""
    policy = factory()
    state = policy.initial_state() if state is None else state
    before = copy.deepcopy(state)
    alloc, new_state = policy.decide(snapshot, state)
    errs = [f"{policy.name}: {e}" for e in check_allocation(snapshot, alloc, policy)]
    errs += [f"{policy.name}: {e}" for e in check_work_conserving(snapshot, alloc, policy)]
    errs += _json_state(new_state, policy.name)
    if state != before:
        errs.append(f"{policy.name}: decide mutated the state it was given")
    # determinism: a fresh instance, the same inputs
    alloc2, state2 = factory().decide(snapshot, copy.deepcopy(before))
    if not _same(alloc, alloc2) or json.dumps(state2, sort_keys=True, default=str) != json.dumps(
        new_state, sort_keys=True, default=str
    ):
        errs.append(f"{policy.name}: not deterministic on the same snapshot and state")
    # replay: the state after a JSON round trip leads to the same next decision
    if not errs:
        nxt = replace(snapshot, last=alloc)
        a_live, _ = factory().decide(nxt, new_state)
        a_replay, _ = factory().decide(nxt, json.loads(json.dumps(new_state)))
        if not _same(a_live, a_replay):
            errs.append(f"{policy.name}: a restarted controller (JSON state) decides differently")
        # stillness: the same snapshot again, state carried, moves nothing
        if not _same(a_live, alloc):
            errs.append(f"{policy.name}: the same snapshot twice moved the allocation")
    return errs


def check_infeasible(factory: PolicyFactory, snapshot: Snapshot) -> list[str]:
    """Minimums above capacity must raise InfeasibleError and leave the state unchanged."""
    cap = snapshot.capacity.cpu
    jobs = tuple(snapshot.jobs) + (
        JobSpec("infeasible-job", minimum=ResourceVector(cpu=cap + 1.0)),
    )
    bad = replace(snapshot, jobs=jobs)
    policy = factory()
    state = policy.initial_state()
    before = copy.deepcopy(state)
    try:
        policy.decide(bad, state)
    except InfeasibleError as exc:
        if "capacity" not in str(exc):
            return [f"{policy.name}: infeasible error does not say why: {exc}"]
        return [] if state == before else [f"{policy.name}: state changed on an infeasible request"]
    except Exception as exc:
        return [
            f"{policy.name}: infeasible request raised {type(exc).__name__}, not InfeasibleError"
        ]
    return [f"{policy.name}: minimums above capacity did not raise"]


def check_sequence(factory: PolicyFactory, snapshots: Sequence[Snapshot]) -> list[str]:
    """A run over snapshots (jobs arriving and leaving), each decision checked, last carried on."""
    policy = factory()
    state = policy.initial_state()
    last: Allocation | None = None
    errs: list[str] = []
    for snap in snapshots:
        jobs = {j.name for j in snap.jobs}
        if last is not None:  # the allocation in force, restricted to jobs still there
            last = replace(last, amounts={n: v for n, v in last.amounts.items() if n in jobs})
        snap = replace(snap, last=last)
        alloc, state = policy.decide(snap, state)
        errs += [f"{policy.name} t={snap.time}: {e}" for e in check_allocation(snap, alloc, policy)]
        last = alloc
    return errs


def churn(rng: np.random.Generator, steps: int = 6) -> list[Snapshot]:
    """Snapshots of one cluster over time with jobs arriving and leaving."""
    base = random_snapshot(rng, n_jobs=8, n_nodes=3)
    out = []
    alive = set(range(3))
    for t in range(steps):
        if t % 2 == 0:
            alive.add(int(rng.integers(0, 8)))
        else:
            alive.discard(int(rng.integers(0, 8)))
        jobs = tuple(j for i, j in enumerate(base.jobs) if i in alive)
        out.append(replace(base, time=1000.0 * t, round=t, jobs=jobs))
    return out


def check_policy(
    factory: PolicyFactory,
    seed: int = 0,
    n_snapshots: int = 12,
    extra: Iterable[Snapshot] = (),
    n_multi: int = 6,
) -> None:
    """Run the whole kit; raise ConformanceError with every violation found.

    ``n_multi`` snapshots of few small nodes with multi-resource jobs
    (``random_multi_snapshot``, drawn from their own generator) test that decisions pack
    on the nodes, not only in aggregate."""
    rng = np.random.default_rng(seed)
    errs: list[str] = []
    cases = [random_snapshot(rng, n_jobs=0), random_snapshot(rng, n_jobs=1)]
    cases += [random_snapshot(rng) for _ in range(n_snapshots)]
    multi = np.random.default_rng([seed, 1])
    cases += [random_multi_snapshot(multi) for _ in range(n_multi)]
    cases += list(extra)
    for snap in cases:
        errs += check_decision(factory, snap)
    errs += check_sequence(factory, churn(rng))
    errs += check_infeasible(factory, random_snapshot(rng, n_jobs=3))
    if errs:
        raise ConformanceError(
            "\n".join(errs[:40]) + (f"\n... {len(errs) - 40} more" if len(errs) > 40 else "")
        )


def summarize(errors: Mapping[str, list[str]]) -> str:
    return "\n".join(f"{k}: {len(v)} violation(s)" for k, v in errors.items() if v) or "all pass"


__all__ = [
    "BandModel",
    "ConformanceError",
    "MultiModel",
    "SaturatingModel",
    "check_allocation",
    "check_decision",
    "check_infeasible",
    "check_objective",
    "check_policy",
    "check_sequence",
    "check_work_conserving",
    "churn",
    "random_multi_snapshot",
    "random_snapshot",
]
