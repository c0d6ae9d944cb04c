"""A bank of learners, one per job, updated and queried for many jobs in one call.

Interval learners (the default kind) are adopted into one shared
``IntervalStore``: every job's tree is a row of the same arrays, so a
telemetry window of 1,000 jobs is one vectorized update and a query over
many jobs' candidate allocations is one vectorized lookup. Other learners are
held as objects and served job by job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from learners.base import Learner, validate_arrays
from learners.interval import IntervalLearner
from learners.interval_store import IntervalStore


class LearnerFactory:
    """A picklable ``job -> Learner`` that builds the same kind of learner for every job."""

    def __init__(self, cls: type[Learner], **options: object) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Learner)):
            raise ValueError(f"expected a Learner subclass, got {cls!r}")
        self.cls = cls
        self.options = dict(options)
        cls(**self.options)  # type: ignore[arg-type]  # fail now on bad options, not at first job

    def __call__(self, job: str) -> Learner:
        return self.cls(**self.options)  # type: ignore[arg-type]


class LearnerBank:
    """Per-job learners made on first sight by ``factory(job)``.

    ``factory`` must be picklable (a module-level function or a functools.partial)
    for the bank to be. ``model(job)`` returns the live learner (an interval
    learner shares the bank's arrays); ``clone()`` of it gives a standalone copy.
    """

    def __init__(self, factory: Callable[[str], Learner], *, depth: int = 9) -> None:
        if not callable(factory):
            raise ValueError("factory must be a callable job -> Learner")
        self._factory = factory
        self._store = IntervalStore(depth=depth, capacity=64)
        self._models: dict[str, Learner] = {}
        self._rows: dict[str, int] = {}
        self._last_time: dict[str, float] = {}
        self._checked: set[str] = set()  # interval jobs whose learner adds its own batch checks

    # -- membership ---------------------------------------------------------------------
    def jobs(self) -> list[str]:
        return list(self._models)

    def __contains__(self, job: object) -> bool:
        return job in self._models

    def __len__(self) -> int:
        return len(self._models)

    def model(self, job: str) -> Learner:
        try:
            return self._models[job]
        except KeyError:
            raise ValueError(f"no learner for job {job!r}; known jobs: {len(self._models)}") from None

    def last_time(self, job: str) -> float:
        """Time of the job's latest observation (nan if none yet)."""
        self.model(job)
        return self._last_time.get(job, float("nan"))

    def remove(self, job: str) -> None:
        self.model(job)
        if job in self._rows:
            self._store.remove_row(self._rows.pop(job))
        self._checked.discard(job)
        del self._models[job]
        self._last_time.pop(job, None)

    def _make(self, job: str) -> Learner:
        m = self._factory(job)
        if not isinstance(m, Learner):
            raise ValueError(f"factory returned {type(m).__name__} for job {job!r}, not a Learner")
        return m

    def _adopt(self, job: str, m: Learner) -> None:
        """Register a new learner; a fresh interval learner moves its tree into the shared store."""
        if isinstance(m, IntervalLearner) and m.depth == self._store.depth:
            row = self._store.add_row(m._params)
            self._store.copy_row(m._store, m._row, row)
            m._store, m._row = self._store, row
            self._rows[job] = row
            if type(m).check_batch is not Learner.check_batch:
                self._checked.add(job)
        self._models[job] = m

    # -- updates ---------------------------------------------------------------------------
    def learn(
        self,
        jobs: Sequence[str],
        alloc: np.ndarray,
        load: np.ndarray,
        value: np.ndarray,
        sigma: np.ndarray,
        time: float | np.ndarray,
    ) -> None:
        """One observation per entry: ``jobs[i]`` saw ``value[i]`` at ``alloc[i]`` and ``load[i]``.

        All entries are checked (by the bank and by each job's learner) before any
        state changes, so a bad entry refuses the whole call with a ValueError.
        """
        jobs = list(jobs)
        n = len(jobs)
        a = np.asarray(alloc, dtype=float)
        dim = 1 if a.ndim == 1 else (a.shape[1] if a.ndim == 2 else -1)
        if dim < 1:
            raise ValueError(f"alloc must have shape (n,) or (n, dim), got {a.shape}")
        a, ld, v, s = validate_arrays(a, load, value, sigma, dim, "bank")
        if len(v) != n:
            raise ValueError(f"got {n} jobs but {len(v)} values")
        t = np.broadcast_to(np.asarray(time, dtype=float), (n,))
        if not np.all(np.isfinite(t)):
            raise ValueError("time must be finite")
        if dim == 1 and self._rows:  # every job a known interval tree with the stock checks
            get = self._rows.get
            rows = np.fromiter((get(j, -1) for j in jobs), dtype=np.int64, count=n)
            if (rows >= 0).all() and not any(j in self._checked for j in jobs):
                self._learn_intervals(rows, np.arange(n), a, ld, v, s)
                self._last_time.update(zip(jobs, t.tolist(), strict=True))
                return
        new = {j: self._make(j) for j in dict.fromkeys(jobs) if j not in self._models}
        groups: dict[str, np.ndarray] = {}
        idx_of: dict[str, list[int]] = {}
        for i, j in enumerate(jobs):
            idx_of.setdefault(j, []).append(i)
        for j, ix in idx_of.items():
            groups[j] = np.asarray(ix, dtype=np.int64)
            m = self._models.get(j) or new[j]
            if m.dim != dim:
                raise ValueError(f"job {j!r}: learner expects {m.dim}-dimensional allocations, got {dim}")
            g = groups[j]
            m.check_batch(a[g], ld[g], v[g], s[g])
        for j, m in new.items():  # everything checked: commit
            self._adopt(j, m)
        rows, picks = [], []
        for j, g in groups.items():
            m = self._models[j]
            if j in self._rows:
                rows.append(np.full(len(g), self._rows[j], dtype=np.int64))
                picks.append(g)
            else:
                m.learn_arrays(a[g], ld[g], v[g], s[g])
            self._last_time[j] = float(t[g[-1]])
        if rows:
            self._learn_intervals(np.concatenate(rows), np.concatenate(picks), a, ld, v, s)

    def _learn_intervals(self, rows: np.ndarray, pick: np.ndarray, a: np.ndarray, ld: np.ndarray,
                         v: np.ndarray, s: np.ndarray) -> None:
        """The vectorized path: every interval job's observations in one store update."""
        keep = ld[pick] > 0  # x = alloc / load is undefined at zero load (see IntervalLearner)
        if not keep.all():
            for r in rows[~keep]:
                job = next(j for j, rr in self._rows.items() if rr == r)
                self._models[job].n_ignored += 1  # type: ignore[attr-defined]
        p, r = pick[keep], rows[keep]
        self._store.add(r, a[p, 0] / ld[p], v[p], 1.0 / s[p] ** 2)
        np.add.at(self._store.nobs, r, 1.0)

    # -- queries ---------------------------------------------------------------------------
    def bounds_many(
        self, jobs: Sequence[str], alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lcb, mean, ucb) of ``jobs[i]`` at ``alloc[i]``, ``load[i]``, for every i at once."""
        jobs = list(jobs)
        n = len(jobs)
        a = np.asarray(alloc, dtype=float)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or len(a) != n:
            raise ValueError(f"alloc must have {n} rows, got shape {np.shape(alloc)}")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError("allocation must be finite and non-negative")
        ld = np.broadcast_to(np.asarray(load, dtype=float), (n,))
        if not np.all(np.isfinite(ld)) or np.any(ld < 0):
            raise ValueError("load must be finite and >= 0")
        for j in dict.fromkeys(jobs):
            self.model(j)
        lcb, mean, ucb = np.empty(n), np.empty(n), np.empty(n)
        is_int = np.array([j in self._rows for j in jobs], dtype=bool)
        if is_int.any():
            rows = np.array([self._rows[j] for j in np.asarray(jobs, dtype=object)[is_int]], dtype=np.int64)
            aa, ll = a[is_int, 0], ld[is_int]
            x = np.where(ll > 0, aa / np.where(ll > 0, ll, 1.0), np.finfo(float).max)
            lcb[is_int], mean[is_int], ucb[is_int] = self._store.query(rows, x)
        other: dict[str, list[int]] = {}
        for i in np.flatnonzero(~is_int):
            other.setdefault(jobs[i], []).append(int(i))
        for j, ix in other.items():
            g = np.asarray(ix)
            m = self._models[j]
            lcb[g], mean[g], ucb[g] = m.bounds(a[g] if m.dim > 1 else a[g, 0], ld[g])
        return lcb, mean, ucb

    def misspecified(self) -> dict[str, str]:
        """Jobs whose learner raised its misspecification flag, with the reason."""
        if self._rows:
            self._store.refresh(np.fromiter(self._rows.values(), dtype=np.int64))
        return {j: m.misspecification_reason for j, m in self._models.items() if m.misspecified}

    # -- pickling: interval learners are views on the shared store ---------------------------
    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_models"] = {
            j: ({k: v for k, v in m.__dict__.items() if k != "_store"} if j in self._rows else m)
            for j, m in self._models.items()
        }
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        state.setdefault("_checked", set())
        self.__dict__.update(state)
        models: dict[str, Learner] = {}
        for j, m in self._models.items():
            if isinstance(m, dict):
                view = IntervalLearner.__new__(IntervalLearner)
                view.__dict__.update(m)
                view._store = self._store
                models[j] = view
            else:
                models[j] = m
        self._models = models
