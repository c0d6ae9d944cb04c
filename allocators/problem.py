"""The one-resource allocation problem every model-driven policy solves, and its bound queries.

``CpuProblem`` is the snapshot reduced to arrays (jobs sorted by name): weights,
per-job [lo, hi] bounds on the divided kind and the capacity to divide.
``UtilityGrid`` is the single bound-query path that our solvers, the
evolutionary baselines and the oracles share: per job, utilities on an affine
grid ``x = a + b * T`` (T a common unit grid), queried once per job through
``PerformanceModel.bounds`` and interpolated linearly for any allocation batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from allocators.base import PolicyError, Snapshot, check_feasible
from allocators.waterfill import waterfill
from cluster_mgr.model import JobSpec, PerformanceModel, utility_from_reward

Side = Literal["lower", "mean", "upper"]
SIDE_INDEX: dict[str, int] = {"lower": 0, "mean": 1, "upper": 2}

#: Coarse unit grid: 0 then log-spaced from 1e-4 to 1 (7.5 % steps), so that a job that
#: needs 0.1 CPU and one that needs 1,000 are both resolved on the same 128 points.
COARSE_T: np.ndarray = np.concatenate(([0.0], np.geomspace(1e-4, 1.0, 127)))
#: Fine unit grid for the zoom pass around a coarse solution.
FINE_T: np.ndarray = np.linspace(0.0, 1.0, 33)

JobUtility = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (reward, alloc) -> utility


@dataclass(frozen=True)
class CpuProblem:
    jobs: tuple[JobSpec, ...]
    names: tuple[str, ...]
    weights: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    capacity: float
    loads: np.ndarray
    kind: str = "cpu"

    @property
    def n(self) -> int:
        return len(self.jobs)

    @property
    def budget(self) -> float:
        return self.capacity - float(self.lo.sum())

    def fair_share(self) -> np.ndarray:
        """Weighted water-filling of the capacity within [lo, hi]."""
        if self.n == 0:
            return np.zeros(0)
        return waterfill(self.capacity, self.weights, self.lo, self.hi)


def cpu_problem(snapshot: Snapshot, kind: str = "cpu") -> CpuProblem:
    """Reduce a snapshot to arrays; raises InfeasibleError when minimums exceed capacity."""
    check_feasible(snapshot)
    jobs = tuple(sorted(snapshot.jobs, key=lambda j: j.name))
    names = tuple(j.name for j in jobs)
    if len(set(names)) != len(names):
        raise PolicyError(f"duplicate job names in snapshot: {sorted(names)}")
    cap = snapshot.capacity.get(kind)
    lo = np.array([j.minimum.get(kind) for j in jobs], dtype=float)
    # A job can never hold more than its maximum, nor more than its pinned nodes hold,
    # nor more than is left once every other job has its minimum.
    pinned = any(j.pins for j in jobs)
    node_cap = (
        {n.node_id: n.capacity.get(kind) for n in snapshot.nodes if n.schedulable} if pinned else {}
    )
    hi = np.empty(len(jobs))
    rest = cap - lo.sum()
    for i, j in enumerate(jobs):
        reach = sum(node_cap.get(nid, 0.0) for nid in set(j.pins)) if j.pins else cap
        hi[i] = max(lo[i], min(j.bound_max(kind), reach, rest + lo[i]))
    w = np.array([j.weight for j in jobs], dtype=float)
    loads = np.array([_load(snapshot, j.name) for j in jobs], dtype=float)
    return CpuProblem(jobs, names, w, lo, hi, float(cap), loads, kind)


def _load(snapshot: Snapshot, job: str) -> float:
    if job in snapshot.loads:
        return float(snapshot.loads[job])
    sig = snapshot.signals.get(job, {})
    return float(sig.get("load", 1.0))


def job_utility_fn(job: JobSpec) -> JobUtility:
    """reward -> utility for one job: its plug-in objective if named, else Cilantro's scaling."""
    if job.utility.objective:
        from allocators.registry import get_objective  # late: the registry imports policies

        obj = get_objective(job.utility.objective)
        if not obj.separable:
            raise PolicyError(f"job {job.name}: per-job objective {obj.name!r} must be separable")
        return obj.values
    thr, scaling = job.reward_threshold, job.utility.scaling
    return lambda reward, alloc: utility_from_reward(reward, thr, scaling)


@dataclass(frozen=True)
class UtilityGrid:
    """Utilities U[j, g] at x[j, g] = a[j] + b[j] * T[g]; non-decreasing along g when ``monotone``."""

    a: np.ndarray
    b: np.ndarray
    T: np.ndarray
    U: np.ndarray

    @property
    def X(self) -> np.ndarray:
        return self.a[:, None] + self.b[:, None] * self.T[None, :]

    def value(self, x: np.ndarray) -> np.ndarray:
        """Utilities at allocations ``x`` of shape (n,) or (batch, n), by linear interpolation."""
        x = np.asarray(x, dtype=float)
        safe_b = np.where(self.b > 0, self.b, 1.0)
        t = np.clip((x - self.a) / safe_b, 0.0, 1.0)
        t = np.where(self.b > 0, t, 0.0)
        g = np.clip(np.searchsorted(self.T, t, side="right"), 1, len(self.T) - 1)
        t0, t1 = self.T[g - 1], self.T[g]
        frac = (t - t0) / (t1 - t0)
        rows = np.arange(self.U.shape[0])
        if x.ndim == 2:
            rows = np.broadcast_to(rows, x.shape)
        u0, u1 = self.U[rows, g - 1], self.U[rows, g]
        return u0 + frac * (u1 - u0)


class GridBuilder:
    """Queries every job's model once per grid and turns rewards into utilities.

    ``side`` picks the confidence bound (upper where exploring pays, lower where
    an SLO must hold). Jobs without a model get a neutral prior: utility rises
    linearly to 1 at their weighted fair share, so they are neither starved nor
    favoured until a learner knows them.
    """

    def __init__(
        self,
        problem: CpuProblem,
        models: Mapping[str, PerformanceModel],
        side: Side,
        transform: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        monotone: bool = True,
    ) -> None:
        self.p = problem
        self.models = models
        self.side = SIDE_INDEX[side]
        self.transform = transform
        self.monotone = monotone
        self._fns = [job_utility_fn(j) for j in problem.jobs]
        self._fair = problem.fair_share() if any(n not in models for n in problem.names) else None

    def utilities(self, i: int, x: np.ndarray) -> np.ndarray:
        """Job i's utility at allocations x (1-D), after the policy's transform."""
        name = self.p.names[i]
        model = self.models.get(name)
        if model is None:
            assert self._fair is not None
            u = np.clip(x / max(float(self._fair[i]), 1e-9), 0.0, 1.0)
        else:
            reward = model.bounds(x, float(self.p.loads[i]))[self.side]
            reward = np.asarray(reward, dtype=float)
            if reward.shape != x.shape:
                raise PolicyError(
                    f"job {name}: model bounds returned shape {reward.shape} for {x.shape} allocations"
                )
            u = self._fns[i](reward, x)
        return self.transform(u, x) if self.transform is not None else u

    def grid(self, a: np.ndarray, b: np.ndarray, T: np.ndarray = FINE_T) -> UtilityGrid:
        X = a[:, None] + b[:, None] * T[None, :]
        U = np.empty_like(X)
        for i in range(self.p.n):
            U[i] = self.utilities(i, X[i])
        bad = ~np.isfinite(U).all(axis=1)
        if bad.any():  # checked once for all jobs: a per-job check costs more than the query
            raise PolicyError(
                f"job {self.p.names[int(np.argmax(bad))]}: model bounds returned non-finite values"
            )
        if self.monotone:
            # Free disposal: a job can leave resources idle, so its utility never falls with more.
            U = np.maximum.accumulate(U, axis=1)
        return UtilityGrid(a, b, T, U)

    def coarse(self) -> UtilityGrid:
        return self.grid(self.p.lo.copy(), self.p.hi - self.p.lo, COARSE_T)

    def exact(self, x: np.ndarray, jobs: np.ndarray | None = None) -> np.ndarray:
        """Utilities at one allocation vector straight from the models, for ``jobs`` (default all)."""
        idx = range(self.p.n) if jobs is None else jobs
        return np.array([self.utilities(int(i), x[i : i + 1])[0] for i in idx])
