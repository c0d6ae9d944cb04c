"""Ours: welfare maximisation on the learners' bounds (utilitarian, Nash, any declared objective).

Bound: the upper confidence bound (optimism: where a job's response is
uncertain, giving it resources is how the learner finds out; Cilantro does the
same). Solver by declared properties: separable objectives use price
bisection on concave envelopes with a zoom pass (exact when also concave);
non-separable ones start there and improve by local search. Switching cost:
``switching_cost`` welfare units for moving the whole cluster (default 0.02).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.objectives import Objective
from allocators.policies.engine import CpuPolicy, Score
from allocators.problem import CpuProblem, GridBuilder, Side, UtilityGrid
from allocators.solvers.local import local_search
from allocators.solvers.separable import concave_rows, exchange_quanta, polish, solve_zoomed

#: Weight of the mean bound beside the upper one: capacity that buys nothing on the upper
#: bound (jobs already at utility 1 there, or below a logistic knee) goes where the mean
#: gains most, instead of to whichever tied allocation the solver meets first.
TIEBREAK = 0.01


def resolve_objective(objective: str | Objective) -> Objective:
    if isinstance(objective, Objective):
        return objective
    from allocators.registry import get_objective

    return get_objective(objective)


class WelfarePolicy(CpuPolicy):
    name = "welfare"
    kind = "ours"
    description = "maximise a declared objective (option objective=...) on upper bounds"
    source = "Cilantro (OSDI '23) welfare policies, generalised to declared objectives"
    side: Side = "upper"
    default_objective = "utilitarian"

    def __init__(
        self,
        objective: str | Objective | None = None,
        switching_cost: float = 0.02,
        side: Side | None = None,
        max_iters: int = 40,
    ) -> None:
        super().__init__(switching_cost)
        self.objective = resolve_objective(objective or self.default_objective)
        if side is not None:
            if side not in ("lower", "mean", "upper"):
                raise ValueError(f"side must be lower, mean or upper, got {side!r}")
            self.side = side
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.max_iters = max_iters
        self._cache: tuple[int, UtilityGrid] | None = None
        self._fine: UtilityGrid | None = None

    # The per-job utility grid; the objective is applied on top of it.
    def _builder(self, problem: CpuProblem, snapshot: Snapshot) -> GridBuilder:
        obj = self.objective
        transform = obj.values if obj.separable else None
        return GridBuilder(
            problem,
            snapshot.models,
            self.side,
            transform,
            monotone=obj.monotone or not obj.separable,
            tiebreak=TIEBREAK if obj.separable else 0.0,
        )

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        builder = self._builder(problem, snapshot)
        coarse = builder.coarse()
        self._cache = (id(problem), coarse)
        self._fine = None
        obj = self.objective
        if obj.separable:
            fine: list[UtilityGrid] = []
            x = solve_zoomed(coarse, problem.weights, problem.capacity, builder.grid, fine)
            self._fine = fine[0] if fine else None
            # Non-concave curves (logistic) can leave one job mid-envelope: transfers fix it.
            # Concave rows have no envelope gap, so the polish runs only when some row is not.
            if concave_rows(coarse):
                return x, {"solver": "price-bisection"}
            y = polish(
                coarse.value,
                problem.weights,
                x,
                problem.lo,
                problem.hi,
                problem.capacity,
                self.quantum,
                max_moves=16,
            )
            w = problem.weights
            # Judge the polish on the models themselves: a gain on the coarse grid can be
            # interpolation noise that the zoom pass had already resolved.
            moved = np.flatnonzero(np.abs(x - y) > 1e-12)  # only these jobs' terms differ
            if moved.size and w[moved] @ builder.exact(y, moved) > w[moved] @ builder.exact(
                x, moved
            ):
                x = y
            return x, {"solver": "price-bisection+polish"}
        # Non-separable: start from the utilitarian optimum, then search.
        x0 = solve_zoomed(coarse, problem.weights, problem.capacity, None)
        w = problem.weights
        x = local_search(
            lambda U, X: obj.welfare(U, X, w),
            coarse.value,
            x0,
            problem.lo,
            problem.hi,
            self.quantum,
            self.max_iters,
        )
        return x, {"solver": "local-search"}

    def _evaluate(self, problem: CpuProblem, grid: UtilityGrid) -> Any:
        obj, w = self.objective, problem.weights
        if obj.separable:  # the grid already holds the objective's values (see _builder)
            return lambda xb: grid.value(xb) @ w / w.sum()
        return lambda xb: obj.welfare(grid.value(xb), xb, w)

    def _grid_for(self, problem: CpuProblem, snapshot: Snapshot) -> UtilityGrid:
        if self._cache is not None and self._cache[0] == id(problem):
            return self._cache[1]
        return self._builder(problem, snapshot).coarse()

    def score(self, problem: CpuProblem, snapshot: Snapshot) -> Score | None:
        evaluate = self._evaluate(problem, self._grid_for(problem, snapshot))
        return lambda x: float(np.atleast_1d(evaluate(np.atleast_2d(x)))[0])

    def _near(self, problem: CpuProblem) -> Any:
        """Per-job values near the solution: the fine grid inside its brackets, else the coarse."""
        grid = self._grid_for(problem, None)  # type: ignore[arg-type]  # cached by solve
        fine = self._fine
        if fine is None or len(fine.a) != problem.n:
            return grid.value

        def value(x: np.ndarray) -> np.ndarray:
            inside = (x >= fine.a - 1e-12) & (x <= fine.a + fine.b + 1e-12)
            return np.where(inside, fine.value(x), grid.value(x))

        return value

    def refine_quanta(self, problem: CpuProblem, x: np.ndarray) -> np.ndarray:
        if not self.objective.separable:
            return x
        # Rounding each job down then handing out quanta is not optimal at kinks (the linear
        # family saturates between quanta): exchange single quanta while welfare rises.
        return exchange_quanta(
            self._near(problem), problem.weights, x, problem.lo, problem.hi, self.quantum
        )

    def quantum_gain(self, problem: CpuProblem, x: np.ndarray) -> np.ndarray | None:
        if not self.objective.separable:
            return None
        up = np.minimum(x + self.quantum, problem.hi)
        value = self._near(problem)
        gain = value(up) - value(x)
        return problem.weights * gain


class Utilitarian(WelfarePolicy):
    name = "utilitarian"
    description = "maximise weighted mean utility on upper bounds (price bisection, exact)"
    source = "Cilantro (OSDI '23) utilitarian welfare"


class Nash(WelfarePolicy):
    name = "nash"
    description = "maximise Nash social welfare (weighted geometric mean) on upper bounds"
    source = "Nash social welfare (Kaneko & Nakamura 1979); separable as sum of w log u"
    default_objective = "nash"


class OracleWelfare(WelfarePolicy):
    name = "oracle_welfare"
    kind = "oracle"
    description = "any declared objective solved on ground-truth models (give it the truth)"
    source = "regret baseline: same solver, mean of ground-truth curves"
    side: Side = "mean"

    def __init__(self, objective: str | Objective | None = None, max_iters: int = 80) -> None:
        super().__init__(objective, switching_cost=0.0, side="mean", max_iters=max_iters)


class OracleUtilitarian(OracleWelfare):
    name = "oracle_utilitarian"
    description = "utilitarian welfare on ground-truth curves"


class OracleNash(OracleWelfare):
    name = "oracle_nash"
    description = "Nash welfare on ground-truth curves"
    default_objective = "nash"
