"""The one-resource allocation problem every model-driven policy solves, and its bound queries.

``CpuProblem`` is the snapshot reduced to arrays (jobs sorted by name): weights,
per-job [lo, hi] bounds on the divided kind and the capacity to divide.
``UtilityGrid`` is the single bound-query path that our solvers, the
evolutionary baselines and the oracles share: per job, utilities on an affine
grid ``x = a + b * T`` (T a common unit grid), queried once per job through
``PerformanceModel.bounds`` and interpolated linearly for any allocation batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import Literal

import numpy as np

from allocators.base import PolicyError, Snapshot, check_feasible
from allocators.waterfill import waterfill
from cluster_mgr.model import RESOURCE_KINDS, JobSpec, PerformanceModel, utility_from_reward

Side = Literal["lower", "mean", "upper"]
SIDE_INDEX: dict[str, int] = {"lower": 0, "mean": 1, "upper": 2}

#: Coarse unit grid: 0 then log-spaced from 1e-4 to 1 (10 % steps), so that a job that
#: needs 0.1 CPU and one that needs 1,000 are both resolved on the same 96 points. (128
#: points cost a third more for the same welfare: mean -1e-5 over 60 snapshots, with
#: single snapshots either way by up to 2e-3 where a logistic knee falls between points.)
COARSE_T: np.ndarray = np.concatenate(([0.0], np.geomspace(1e-4, 1.0, 95)))
#: The probe of ``coarse``: every PROBE_STEP-th point of COARSE_T and its last (t = 1).
PROBE_STEP = 8
PROBE_POINTS: np.ndarray = np.unique(np.r_[0 : len(COARSE_T) : PROBE_STEP, len(COARSE_T) - 1])
#: Fine unit grid for the zoom pass around a coarse solution.
FINE_T: np.ndarray = np.linspace(0.0, 1.0, 33)
#: One zoom pass: 9 points across a job's bracket (two steps of the grid before).
ZOOM_T: np.ndarray = np.linspace(0.0, 1.0, 9)

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
    if kind in RESOURCE_KINDS:  # an attribute read per job, not a method call
        amount_of = attrgetter(kind)
        lo = np.array([amount_of(j.minimum) for j in jobs], dtype=float)
    else:
        lo = np.array([j.minimum.get(kind) for j in jobs], dtype=float)
    # A job can never hold more than its maximum, nor more than its pinned nodes hold,
    # nor more than is left once every other job has its minimum.
    pinned = any(j.pins for j in jobs)
    node_cap = (
        {n.node_id: n.capacity.get(kind) for n in snapshot.nodes if n.schedulable} if pinned else {}
    )
    rest = cap - lo.sum()
    # As arrays: one Python pass reads each job's maximum and reach (a loop of min/max per
    # job was a millisecond of every 1,000-job decision).
    reach = np.array(
        [
            sum(node_cap.get(nid, 0.0) for nid in set(j.pins))
            if j.pins
            else (math.inf if j.maximum is None else j.maximum.get(kind))
            for j in jobs
        ],
        dtype=float,
    )
    if pinned:
        bound = np.array([j.bound_max(kind) for j in jobs], dtype=float)
        reach = np.minimum(reach, bound)
    hi = np.maximum(lo, np.minimum(np.minimum(reach, cap), rest + lo))
    w = np.array([j.weight for j in jobs], dtype=float)
    given = snapshot.loads
    loads = np.array(
        [given[n] if n in given else _signalled_load(snapshot, n) for n in names], dtype=float
    )
    return CpuProblem(jobs, names, w, lo, hi, float(cap), loads, kind)


def _signalled_load(snapshot: Snapshot, job: str) -> float:
    """A job's load when the snapshot states none: its measured signal, else 1."""
    return float(snapshot.signals.get(job, {}).get("load", 1.0))


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

    @cached_property
    def X(self) -> np.ndarray:
        # Cached (read-only, as the grid is frozen): the max-min bisection reads X at every level.
        X = self.a[:, None] + self.b[:, None] * self.T[None, :]
        X.setflags(write=False)
        return X

    def value(self, x: np.ndarray) -> np.ndarray:
        """Utilities at allocations ``x`` of shape (n,) or (batch, n), by linear interpolation."""
        x = np.asarray(x, dtype=float)
        inv_b, dT, dU, base_u, base_d = self._interp
        # np.clip with scalar bounds costs more than the arithmetic here (the solvers call
        # this hundreds of times per decision), so the clamps are minimum/maximum.
        t = np.minimum(np.maximum((x - self.a) * inv_b, 0.0), 1.0)
        m = len(self.T)
        g = np.minimum(np.maximum(np.searchsorted(self.T, t, side="right"), 1), m - 1) - 1
        frac = (t - self.T[g]) / dT[g]
        return self.U.ravel()[base_u + g] + frac * dU.ravel()[base_d + g]

    @cached_property
    def _interp(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What ``value`` needs, computed once per grid: 1/b (0 for rows of one point, which
        then read their first column), T's and U's steps, and each row's offset in U."""
        inv_b = np.where(self.b > 0, 1.0 / np.where(self.b > 0, self.b, 1.0), 0.0)
        dT = np.diff(self.T)
        dU = np.diff(self.U, axis=1)
        rows = np.arange(self.U.shape[0])
        return inv_b, dT, dU, rows * len(self.T), rows * (len(self.T) - 1)


Query = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def query_bounds(
    models: Sequence[PerformanceModel], X: np.ndarray, loads: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lcb, mean, ucb) of ``models[i]`` at allocations ``X[i]`` (shape (n, m)), each (n, m).

    The one bound-query path of every model-driven policy, baseline and oracle
    (``prepare_query`` once, then one call per batch).
    """
    return prepare_query(models, loads)(X)


def prepare_query(models: Sequence[PerformanceModel], loads: np.ndarray) -> Query:
    """The bound query of these models at these loads, as one function of the allocations.

    Models of a type that offers ``prepare_batch(models, load)`` (returning a
    function of alloc (k, m) to three (k, m) arrays) or ``bounds_batch(models,
    alloc, load)`` are served by one vectorized call per type, all jobs at once
    (a learner bank over one shared store, ground-truth curves); any other model
    by one ``bounds`` call per job. Preparing reads each model's parameters once,
    so a solver querying the same jobs many times per decision pays that once.
    A prepared query is for one decision: a learner that learns afterwards needs
    a new one.
    """
    n = len(models)
    models = models if isinstance(models, list) else list(models)
    loads = np.asarray(loads, dtype=float)
    first = type(models[0]) if n else None
    if n > 1 and len(set(map(type, models))) == 1:
        # One type for every job (the common case: one learner bank, or the truth): its
        # arrays are the answer, without a scatter into a fresh (3, n, m) buffer.
        prep = getattr(first, "prepare_batch", None)
        if prep is not None:
            fn = prep(models, loads)
            return lambda X: _checked(fn(X), np.shape(X))
        batch = getattr(first, "bounds_batch", None)
        if batch is not None:
            return lambda X: _checked(batch(models, X, loads), np.shape(X))
    by_type: dict[type, list[int]] = {}
    for i, model in enumerate(models):
        by_type.setdefault(type(model), []).append(i)
    parts: list[tuple[np.ndarray, Query]] = []
    singles: list[int] = []
    for idx in by_type.values():
        if len(idx) > 1 and (
            hasattr(type(models[idx[0]]), "prepare_batch")
            or hasattr(type(models[idx[0]]), "bounds_batch")
        ):
            ix = np.asarray(idx)
            parts.append((ix, prepare_query([models[i] for i in idx], loads[ix])))
        else:
            singles.extend(idx)

    def query(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float)
        m = X.shape[1]
        out = np.empty((3, n, m))
        for ix, fn in parts:
            res = fn(X[ix])
            for s in range(3):
                out[s, ix] = res[s]
        for i in singles:
            res = models[i].bounds(X[i], float(loads[i]))
            for s in range(3):
                r = np.asarray(res[s], dtype=float)
                if r.shape != (m,):
                    raise PolicyError(
                        f"model bounds returned shape {r.shape} for {(m,)} allocations"
                    )
                out[s, i] = r
        return out[0], out[1], out[2]

    return query


def _checked(
    res: tuple[np.ndarray, np.ndarray, np.ndarray], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = tuple(np.asarray(r, dtype=float) for r in res)
    for r in out:
        if r.shape != shape:
            raise PolicyError(
                f"model bounds_batch returned shape {r.shape} for {shape} allocations"
            )
    return out[0], out[1], out[2]


class GridBuilder:
    """Queries every job's model once per grid and turns rewards into utilities.

    ``side`` picks the confidence bound (upper where exploring pays, lower where
    an SLO must hold). Jobs without a model get a neutral prior: utility rises
    linearly to 1 at their weighted fair share, so they are neither starved nor
    favoured until a learner knows them. ``table`` is the query: utilities of
    every job at its own row of allocations, one vectorized bounds query per
    model type (``query_bounds``); it also keeps the other bounds of its last
    query (``last_mean``) for tie-breaks at no extra model call.
    """

    def __init__(
        self,
        problem: CpuProblem,
        models: Mapping[str, PerformanceModel],
        side: Side,
        transform: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        monotone: bool = True,
        tiebreak: float = 0.0,
        saturate: Side | None = None,
    ) -> None:
        self.p = problem
        self.tiebreak = tiebreak
        self.models = models
        self.side = SIDE_INDEX[side]
        # Which bound must reach a job's reward threshold before the upper bound may claim
        # it (utility 1, the SLO met); None: the side's own bound claims it.
        self.saturate = SIDE_INDEX[saturate] if saturate and side == "upper" else None
        self.transform = transform
        self.monotone = monotone
        self._fair = problem.fair_share() if any(n not in models for n in problem.names) else None
        self._with = np.array([n in models for n in problem.names], dtype=bool)
        # Per-job reward -> utility: Cilantro's scaling as arrays (thresholds per row), or a
        # job's own separable objective.
        self._thr = np.array([j.reward_threshold for j in problem.jobs], dtype=float)
        self._scaling = [j.utility.scaling for j in problem.jobs]
        self._custom = [
            (i, job_utility_fn(j)) for i, j in enumerate(problem.jobs) if j.utility.objective
        ]
        self.queries = 0
        self.last_mean: np.ndarray | None = None
        self._all = [models[n] for n in problem.names] if self._with.all() else None
        self._rows = np.arange(problem.n)
        self._prepared: Query | None = None

    def _bank_query(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every job's bounds at X (n, m), through a query prepared once per builder."""
        if self._prepared is None:
            assert self._all is not None
            self._prepared = prepare_query(self._all, self.p.loads)
        return self._prepared(X)

    def _models_of(self, rows: np.ndarray) -> list[PerformanceModel]:
        """The models of some jobs (the whole bank goes through ``_bank_query``)."""
        return [self.models[self.p.names[i]] for i in rows]

    def _claimed(
        self, b: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray
    ) -> np.ndarray:
        """The reward the solver sees: the side's bound, or with ``saturate``, the upper
        bound with its optimism kept for the gains below the threshold (``below_threshold``).
        Jobs with their own objective read the bound as it is."""
        if self.saturate is None:
            return b[self.side]
        R = below_threshold(b[self.side], b[self.saturate], self._thr[rows, None])
        if self._custom:
            own = np.isin(rows, [i for i, _ in self._custom])
            R[own] = b[self.side][own]
        return R

    def _utility(self, R: np.ndarray, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        u = clip_unit(R / self._thr[rows, None])
        for s in set(self._scaling):
            if s == "linear":
                continue
            sel = np.array([self._scaling[r] == s for r in rows], dtype=bool)
            u[sel] = _scale(u[sel], s)
        return u

    def table(self, X: np.ndarray, keep_mean: bool = False) -> np.ndarray:
        """Utilities (after the policy's transform) of job i at allocations X[i]; X of shape (n, m)."""
        self.queries += 1
        return self._rows_table(self._rows, np.asarray(X, dtype=float), keep_mean)

    def _rows_table(self, rows: np.ndarray, X: np.ndarray, keep_mean: bool) -> np.ndarray:
        """``table`` for the jobs ``rows`` only (X has one row per entry of ``rows``)."""
        keep_mean = keep_mean or self.tiebreak > 0
        has = self._with[rows]
        sel = np.flatnonzero(has)
        every = sel.size == len(rows)
        M: np.ndarray | None = None
        if every and sel.size:
            # Every job has a model: the query's arrays are used as they are (no copies).
            if self._all is not None and (rows is self._rows or _is_every(rows, self.p.n)):
                b = self._bank_query(X)
            else:
                b = query_bounds(self._models_of(rows), X, self.p.loads[rows])
            R = self._claimed(b, rows)
            M = b[1] if keep_mean else None
        else:
            R = np.zeros_like(X)
            M = np.zeros_like(X) if keep_mean else None
            if sel.size:
                src = rows[sel]
                b = query_bounds(self._models_of(src), X[sel], self.p.loads[src])
                R[sel] = self._claimed(b, src)
                if M is not None:
                    M[sel] = b[1]
        prior = None
        if sel.size < len(rows):
            assert self._fair is not None
            miss = np.flatnonzero(~has)
            fair = self._fair[rows[miss]]
            prior = (miss, np.clip(X[miss] / np.maximum(fair[:, None], 1e-9), 0.0, 1.0))
        U = self._finish(R, X, rows, prior)
        if M is not None:
            self.last_mean = self._finish(M, X, rows, prior)
            if self.tiebreak > 0 and self.side != 1:
                # Lexicographic in effect: the side's bound decides; where it is flat (a job
                # already at utility 1 on its upper bound, a logistic job below its knee)
                # the mean decides who the capacity helps most.
                U = U + self.tiebreak * self.last_mean
        return U

    def _finish(
        self,
        R: np.ndarray,
        X: np.ndarray,
        rows: np.ndarray,
        prior: tuple[np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        if not np.isfinite(R).all():  # checked once for all jobs
            bad = ~np.isfinite(R).all(axis=1)
            raise PolicyError(
                f"job {self.p.names[int(np.argmax(bad))]}: model bounds returned non-finite values"
            )
        U = self._utility(R, X, rows)
        if self._custom:
            pos = {int(r): k for k, r in enumerate(rows)}
            for i, fn in self._custom:
                if self._with[i] and i in pos:
                    U[pos[i]] = fn(R[pos[i]], X[pos[i]])
        if prior is not None:
            U[prior[0]] = prior[1]
        return self.transform(U, X) if self.transform is not None else U

    def utilities(self, i: int, x: np.ndarray) -> np.ndarray:
        """Job i's utility at allocations x (1-D), after the policy's transform."""
        name = self.p.names[i]
        model = self.models.get(name)
        if model is None:
            assert self._fair is not None
            u = np.clip(x / max(float(self._fair[i]), 1e-9), 0.0, 1.0)
        else:
            bounds = model.bounds(x, float(self.p.loads[i]))
            reward = np.asarray(bounds[self.side], dtype=float)
            if self.saturate is not None and not self.p.jobs[i].utility.objective:
                ref = np.asarray(bounds[self.saturate], dtype=float)
                reward = below_threshold(reward, ref, float(self._thr[i]))
            if reward.shape != x.shape:
                raise PolicyError(
                    f"job {name}: model bounds returned shape {reward.shape} for {x.shape} allocations"
                )
            u = job_utility_fn(self.p.jobs[i])(reward, x)
        return self.transform(u, x) if self.transform is not None else u

    def grid(
        self,
        a: np.ndarray,
        b: np.ndarray,
        T: np.ndarray = FINE_T,
        keep_mean: bool = False,
        rows: np.ndarray | None = None,
    ) -> UtilityGrid:
        """Every job's grid a + b T, or with ``rows``, those jobs' only (a, b per row given)."""
        X = a[:, None] + b[:, None] * T[None, :]
        if rows is None:
            U = self.table(X, keep_mean)
        else:
            self.queries += 1
            U = self._rows_table(np.asarray(rows, dtype=np.intp), X, keep_mean)
        if self.monotone:
            # Free disposal: a job can leave resources idle, so its utility never falls with more.
            U = np.maximum.accumulate(U, axis=1)
        return UtilityGrid(a, b, T, U)

    def coarse(self, keep_mean: bool = False) -> UtilityGrid:
        """Every job on ``COARSE_T`` from its minimum to its maximum; with monotone utilities,
        only up to the first point where every job has reached its highest utility.

        A job's maximum is usually far above what it can use (all the capacity the others'
        minimums leave), so most of the 96 points sit where its utility no longer rises. A
        probe of every ``PROBE_STEP``-th point (and the last) finds, per job, the first one at
        its highest probed utility; the grid stops at the latest of those over all jobs, rescaled
        so that it still ends at t = 1 (beyond it, ``value`` reads the last, highest point: free
        disposal). The grid's points are the same points of ``COARSE_T`` as before the cut.
        """
        a, span = self.p.lo.copy(), self.p.hi - self.p.lo
        if not self.monotone or self.p.n == 0:
            return self.grid(a, span, COARSE_T, keep_mean)
        probe = self.grid(a, span, COARSE_T[PROBE_POINTS])
        top = probe.U[:, -1:]
        first = np.argmax(top <= probe.U, axis=1)  # per job: the first probe at its highest
        # At least the second probe: a grid needs two points (and COARSE_T[0] is 0).
        cut = int(PROBE_POINTS[max(int(first.max()), 1)])
        if cut >= len(COARSE_T) - 1:
            return self.grid(a, span, COARSE_T, keep_mean)
        T = COARSE_T[: cut + 1] / COARSE_T[cut]
        return self.grid(a, span * COARSE_T[cut], T, keep_mean)

    def exact(self, x: np.ndarray, jobs: np.ndarray | None = None) -> np.ndarray:
        """Utilities at one allocation vector straight from the models, for ``jobs`` (default all)."""
        idx = np.arange(self.p.n) if jobs is None else np.asarray(jobs, dtype=int)
        return self._rows_table(idx, np.asarray(x, dtype=float)[idx][:, None], False)[:, 0]

    def welfare_at(self, P: np.ndarray) -> np.ndarray:
        """Per-job utilities of a batch of candidate allocations P (batch, n) -> (batch, n),
        by one bounds query at exactly those allocations (no grid, no interpolation)."""
        return self.table(np.ascontiguousarray(np.atleast_2d(P).T)).T


def below_threshold(upper: np.ndarray, ref: np.ndarray, thr: np.ndarray | float) -> np.ndarray:
    """The upper bound's optimism, kept for the gains below a job's reward threshold.

    With bonus = upper - ref, the reward claimed is ref + bonus * (thr - ref) /
    (thr + bonus) (= thr * upper / (thr + bonus) below the threshold): the
    bonus shrinks in proportion to what ``ref`` still lacks of the threshold,
    so the threshold (utility 1: the SLO met) is claimed only where ``ref``
    (the mean, or the lower bound where an SLO must hold) reaches it, and
    above it the claim is ``ref`` (utility 1 either way). Where the upper bound
    reaches the threshold before the mean does, a solver on the plain upper
    bound stops short: the job's true utility then sits near (thr - band) / thr.
    Rising in both bounds, equal to them when they agree.
    """
    # ref + bonus * max(thr - ref, 0) / (thr + bonus), in place on two temporaries (a
    # 1,000-job grid is 10^5 values per query, and new arrays cost more than the arithmetic).
    bonus = np.asarray(upper - ref, dtype=float)
    np.maximum(bonus, 0.0, out=bonus)
    out = np.asarray(thr - ref, dtype=float)
    np.maximum(out, 0.0, out=out)
    out *= bonus
    bonus += thr
    out /= bonus
    out += ref
    return out


def clip_unit(a: np.ndarray) -> np.ndarray:
    """``a`` (a fresh array the caller owns) clipped to [0, 1] in place: as np.clip, without
    its call overhead or a new array per step (a 1,000-job grid is 10^5 values per query)."""
    np.maximum(a, 0.0, out=a)
    return np.minimum(a, 1.0, out=a)


def _is_every(rows: np.ndarray, n: int) -> bool:
    """True when ``rows`` lists every job once, in order."""
    return len(rows) == n and bool((rows == np.arange(n)).all())


def _scale(u: np.ndarray, scaling: str) -> np.ndarray:
    if scaling == "sqrt":
        return np.sqrt(u)
    if scaling == "quadratic":
        return u * u
    return utility_from_reward(u, 1.0, scaling)
