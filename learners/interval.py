"""Monotone nonparametric interval learner (Cilantro's interval binary tree).

Models a reward that rises with x = allocation / load and assumes nothing else
(a Lipschitz constant is optional). The statistics live in an
``IntervalStore`` row, so a ``LearnerBank`` can hold a thousand of these trees
in one set of arrays and update them with one numpy call; a standalone learner
owns a one-row store.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from cluster_mgr.model import Observation
from learners.base import Learner, Monotone, Side, _scalar, as_alloc_matrix, side_index
from learners.interval_store import IntervalStore, RowParams


class IntervalLearner(Learner):
    """Reward f(alloc / load), non-decreasing, in ``value_range`` (default [0, 1]).

    Options: ``depth`` (tree levels below the root; the 2^depth leaves are uniform in
    log2(x) over the 16 doublings below x_max, 32 per doubling by default, each about
    2.2% of x wide; one per doubling, over 2^depth doublings, when depth < 4),
    ``lipschitz`` (slope bound of f in value per unit of x, or None to rely on
    monotonicity alone), ``value_range`` (the prior: bounds never leave it).
    ``delta`` is the probability that the true f leaves [lcb, ucb] anywhere (a union
    bound over the store's windows of leaves and its per-leaf atoms, see
    ``learners.interval_store``), for the data seen so far.
    Observations with zero load are ignored (x is undefined; they are counted
    in ``n_ignored``).
    """

    name: ClassVar[str] = "interval"
    monotone: ClassVar[Monotone] = "increasing"

    def __init__(
        self,
        *,
        delta: float = 0.05,
        seed: int = 0,
        dim: int = 1,
        depth: int = 9,
        lipschitz: float | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        store: IntervalStore | None = None,
    ) -> None:
        if dim != 1:
            raise ValueError(f"interval learner models a scalar allocation (dim=1), got dim={dim}")
        if lipschitz is not None and not (np.isfinite(lipschitz) and lipschitz > 0):
            raise ValueError(f"lipschitz must be a positive number or None, got {lipschitz}")
        lo, hi = (float(v) for v in value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"value_range must be finite with lo < hi, got {value_range}")
        self._store = store if store is not None else IntervalStore(depth=depth)
        if self._store.depth != depth:
            raise ValueError(f"store depth {self._store.depth} differs from depth {depth}")
        self._params = RowParams(delta=delta, lo=lo, hi=hi, lipschitz=lipschitz)
        self._row = -1
        self.n_ignored = 0
        super().__init__(delta=delta, seed=seed, dim=dim)
        self._row = self._store.add_row(self._params)

    # -- state lives in the store row -------------------------------------------------
    @property
    def n_observations(self) -> int:  # type: ignore[override]
        return int(self._store.nobs[self._row]) if self._row >= 0 else 0

    @n_observations.setter
    def n_observations(self, value: int) -> None:
        if self._row >= 0:
            self._store.nobs[self._row] = value

    @property
    def misspecified(self) -> bool:  # type: ignore[override]
        if self._row < 0:
            return False
        self._store.refresh(np.array([self._row]))
        return bool(self._store.flag[self._row])

    @misspecified.setter
    def misspecified(self, value: bool) -> None:
        if self._row >= 0:
            self._store.flag[self._row] = value

    @property
    def misspecification_reason(self) -> str:  # type: ignore[override]
        return self._store.reason[self._row] if self.misspecified else ""

    @misspecification_reason.setter
    def misspecification_reason(self, value: str) -> None:
        if self._row >= 0:
            self._store.reason[self._row] = value

    @property
    def depth(self) -> int:
        return self._store.depth

    @property
    def lipschitz(self) -> float | None:
        return self._params.lipschitz

    # -- learning and queries ------------------------------------------------------------
    def learn_one(self, obs: Observation) -> None:
        if type(obs) is Observation and len(obs.alloc) == 1 and self._learn_scalar(
                obs.alloc[0], obs.load, obs.value, obs.sigma):
            return
        super().learn_one(obs)

    def learn_arrays(
        self,
        alloc: np.ndarray | Sequence[float],
        load: np.ndarray | Sequence[float] | float,
        value: np.ndarray | Sequence[float],
        sigma: np.ndarray | Sequence[float] | float,
    ) -> None:
        if not self._learn_scalar(alloc, load, value, sigma):
            super().learn_arrays(alloc, load, value, sigma)

    def _learn_scalar(self, alloc: object, load: object, value: object, sigma: object) -> bool:
        """Fast path for one observation given as scalars or one-element arrays (a telemetry
        window): checks in plain Python and an append to the store's queue. False: the input
        is not of that shape or is invalid, and the general path (which names the problem)
        must handle it."""
        try:
            a, ld, v, s = _scalar(alloc), _scalar(load), _scalar(value), _scalar(sigma)
        except TypeError:
            return False
        if not (math.isfinite(a) and math.isfinite(ld) and math.isfinite(v) and math.isfinite(s)):
            return False
        if a < 0 or ld < 0 or s <= 0 or type(self).check_batch is not Learner.check_batch:
            return False
        if ld > 0:
            self._store.add_one(self._row, a / ld, v, 1.0 / (s * s))
            self._store.nobs[self._row] += 1.0
        else:
            self.n_ignored += 1
        return True

    def _learn_batch(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        if len(value) == 1 and load[0] > 0:  # one window: skip the masking
            self._store.add(np.array([self._row]), alloc[0] / load, value, 1.0 / sigma**2)
            return
        keep = load > 0
        self.n_ignored += int((~keep).sum())
        x = alloc[keep, 0] / load[keep]
        rows = np.full(len(x), self._row, dtype=np.int64)
        self._store.add(rows, x, value[keep], 1.0 / sigma[keep] ** 2)
        self.n_observations -= int((~keep).sum())  # the base adds the whole batch afterwards

    def bounds(self, alloc: np.ndarray, load: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = as_alloc_matrix(alloc, 1)[:, 0]
        ld = np.broadcast_to(np.asarray(load, dtype=float), a.shape)
        if not np.all(np.isfinite(ld)) or np.any(ld < 0):
            raise ValueError("load must be finite and >= 0")
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(ld > 0, a / np.where(ld > 0, ld, 1.0), np.inf)
        rows = np.full(len(a), self._row, dtype=np.int64)
        return self._store.query(rows, np.where(np.isfinite(x), x, np.finfo(float).max))

    @classmethod
    def bounds_batch(
        cls, models: Sequence[IntervalLearner], alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many learners at once: row i of ``alloc`` (k, m) for ``models[i]`` at ``load[i]``;
        three (k, m) arrays, equal to the rows of ``models[i].bounds(alloc[i], load[i])``.

        Learners sharing a store (a ``LearnerBank``) are answered by one vectorized lookup
        in its cached bound tables; the allocators' ``query_bounds`` uses this.
        """
        models = list(models)
        a = np.asarray(alloc, dtype=float)
        if a.ndim == 1:
            a = a[:, None]
        k = len(models)
        if a.ndim != 2 or len(a) != k:
            raise ValueError(f"alloc must have shape ({k}, m), got {np.shape(alloc)}")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError("allocation must be finite and non-negative")
        ld = np.broadcast_to(np.asarray(load, dtype=float), (k,))
        if not np.all(np.isfinite(ld)) or np.any(ld < 0):
            raise ValueError("load must be finite and >= 0")
        m = a.shape[1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = np.where(ld[:, None] > 0, a / np.where(ld > 0, ld, 1.0)[:, None], np.inf)
        x = np.where(np.isfinite(x), x, np.finfo(float).max)
        out = np.empty((3, k, m))
        groups: dict[int, tuple[IntervalStore, list[int]]] = {}
        for i, mod in enumerate(models):
            if not isinstance(mod, IntervalLearner):
                raise ValueError(f"bounds_batch expects interval learners, got {type(mod).__name__}")
            groups.setdefault(id(mod._store), (mod._store, []))[1].append(i)
        for store, idx in groups.values():
            ix = np.asarray(idx)
            rows = np.repeat(np.array([models[i]._row for i in idx], dtype=np.int64), m)
            res = store.query(rows, x[ix].reshape(-1))
            for j in range(3):
                out[j, ix] = res[j].reshape(len(ix), m)
        return out[0], out[1], out[2]

    def demand(self, goal: float, load: float, side: Side = "lower", *, hi: float = 1e4, tol: float = 1e-3) -> float:
        """Exact for the lower side: the smallest x whose lcb step reaches ``goal``, times load.

        The lcb is a step function read from the store's interleaved table: entry 2e
        holds from the largest x of leaf e - 1 on (from its start when it is empty),
        entry 2j + 1 from the smallest x of leaf j on (its bottom atom; the whole of an
        empty leaf j), so the answer is the position of the first entry reaching the
        goal; with a Lipschitz constant in force, the generic bisection (which also sees
        the Lipschitz term) is used instead.
        """
        idx = side_index(side)
        if not np.isfinite(goal) or not np.isfinite(load) or load <= 0:
            raise ValueError("goal must be finite and load > 0")
        st, r = self._store, self._row
        if idx != 0 or (self.lipschitz is not None and not st.lip_broken[r]) or st.nonmono[r]:
            return super().demand(goal, load, side, hi=hi, tol=tol)
        if goal <= st.lo[r]:
            return 0.0
        st.refresh(np.array([r]))
        reach = np.flatnonzero(st.lo_tab[r] >= goal)
        if len(reach) == 0:
            return float("inf")
        i = int(reach[0])
        j = (i - 1) // 2  # the leaf in which lcb(x) first reaches the goal (i >= 1: entry 0 is -inf)
        node = st.n_leaves - 1 + j
        if st.cnt[r, node] == 0:  # an empty leaf: every x in it sees entry 2j + 1
            xe = st.leaf_start(j, float(st.x_max[r]))
        else:  # entry 2j + 1 from the leaf's smallest x on, entry 2j + 2 from its largest
            xe = float(st.xmin[r, node] if i % 2 else st.xmax[r, node])
        alloc = float(xe * load)
        while alloc / load < xe:  # the query divides by load again: do not land an ulp short
            alloc = float(np.nextafter(alloc, np.inf))
        return alloc if alloc <= hi else float("inf")

    def explain(self) -> dict[str, object]:
        st, r = self._store, self._row
        st.refresh(np.array([r]))
        out = super().explain()
        out.update(
            depth=self.depth,
            lipschitz=self.lipschitz,
            lipschitz_in_force=self.lipschitz is not None and not bool(st.lip_broken[r]),
            monotone_projection_in_force=not bool(st.nonmono[r]),
            noise_scale=float(st.noise_scale[r]),
            x_max=float(st.x_max[r]),
            axis=f"log2(x): {st.per_doubling} leaves per doubling over {st.doublings} doublings below x_max",
            ignored_zero_load=self.n_ignored,
            bound="simultaneous over all allocations (union over windows of leaves and leaf atoms)",
        )
        return out

    # -- cloning and pickling: a bank-held learner carries only its own row ---------------
    def detached(self) -> IntervalLearner:
        """A standalone copy holding this tree in a one-row store."""
        new = IntervalLearner.__new__(IntervalLearner)
        new.__dict__.update(self.__dict__)
        new._params = copy.copy(self._params)
        new._store = IntervalStore(depth=self.depth)
        new._row = new._store.add_row(self._params)
        new._store.copy_row(self._store, self._row, new._row)
        return new

    def clone(self) -> IntervalLearner:
        return self.detached()

    def __getstate__(self) -> dict[str, object]:
        if self._store.capacity == 1:
            return dict(self.__dict__)
        return dict(self.detached().__dict__)
