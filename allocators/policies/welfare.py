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
from allocators.problem import (
    ZOOM_T,
    CpuProblem,
    GridBuilder,
    Side,
    UtilityGrid,
)
from allocators.solvers.local import frank_wolfe, local_search
from allocators.solvers.separable import (
    concave_rows,
    exchange_quanta,
    polish,
    solve_lattice,
    solve_price,
    solve_zoomed,
)

#: Weight of the mean bound beside the upper one: capacity that buys nothing on the upper
#: bound (jobs already at utility 1 there, or below a logistic knee) goes where the mean
#: gains most, instead of to whichever tied allocation the solver meets first.
TIEBREAK = 0.01
#: Zoom passes after the coarse solve (each one query of ZOOM_T's points per job).
ZOOM_PASSES = 1
#: Whole quanta either side of the zoomed solution read exactly (the lattice window).
LATTICE_HALF = 8
LATTICE_T = np.linspace(0.0, 1.0, 2 * LATTICE_HALF + 1)
#: Conditional-gradient iterations for non-separable objectives (before the local search).
FW_ITERS = 12
#: Local-search iterations after it: the gradient steps leave only fine transfers to find.
LS_AFTER_FW = 10


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
        self._fine: list[UtilityGrid] | None = None

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
        obj = self.objective
        self._fine = []
        if obj.separable:
            # The 128-point log grid finds each job's bracket (fewer points misjudge where a
            # logistic job's envelope leaves its curve); one zoom pass of 9 points narrows it
            # around the marginal-utility crossing (~2 % of the allocation); a window of 17
            # whole quanta there is read exactly and the quanta go by one global greedy,
            # where rounding then exchanging single quanta took up to 8 passes of reads.
            coarse = builder.coarse()
            self._cache = (id(problem), coarse)
            x = solve_zoomed(
                coarse,
                problem.weights,
                problem.capacity,
                lambda a, b: builder.grid(a, b, ZOOM_T),
                self._fine,
                passes=ZOOM_PASSES,
                # The coarse price only has to bracket: the zoom re-solves from it and the
                # lattice settles the quanta exactly (16 steps gave the same allocations
                # as 24 on every benchmark snapshot).
                iters=16,
            )
            solver = "price-bisection"
            # Non-concave curves (logistic) can leave one job mid-envelope: transfers fix it,
            # before the quanta are settled. Concave rows have no envelope gap, so the polish
            # runs only when some row is not.
            if not concave_rows(coarse):
                y = polish(
                    self._near(problem),
                    problem.weights,
                    x,
                    problem.lo,
                    problem.hi,
                    problem.capacity,
                    self.quantum,
                    # No donor holds more than its allocation above its minimum, nor is more
                    # idle than is left: larger steps only cost passes.
                    start_step=max(
                        float((x - problem.lo).max()),
                        problem.capacity - float(x.sum()),
                        self.quantum,
                    ),
                    max_moves=4,
                )
                w = problem.weights
                # Judge the polish on the models themselves: a gain on the grids can be
                # interpolation noise.
                moved = np.flatnonzero(np.abs(x - y) > 1e-12)  # only these jobs' terms differ
                if moved.size and w[moved] @ builder.exact(y, moved) > w[moved] @ builder.exact(
                    x, moved
                ):
                    x = y
                solver = "price-bisection+polish"
            x = solve_lattice(
                lambda a, b: builder.grid(a, b, LATTICE_T),
                x,
                problem.weights,
                problem.lo,
                problem.hi,
                problem.capacity,
                self.quantum,
                LATTICE_HALF,
                self._fine,
            )
            return x, {"solver": solver + "+lattice"}
        coarse = builder.coarse()
        self._cache = (id(problem), coarse)
        # Non-separable: start from the utilitarian optimum, follow the welfare's gradient
        # (conditional gradient: separable price solves with the gradient as weights),
        # then polish by local search from transfers of the Frank-Wolfe step's size down.
        x0 = solve_zoomed(coarse, problem.weights, problem.capacity, None)
        w = problem.weights

        def welfare(U: np.ndarray, X: np.ndarray) -> np.ndarray:
            return obj.welfare(U, X, w)

        def linear(g: np.ndarray) -> np.ndarray:
            # Jobs whose utility lowers welfare (above the mean, for an equity penalty)
            # get a tiny positive weight: the price solver needs one, and they then take
            # capacity only when nothing else wants it.
            return solve_price(
                coarse, np.maximum(g, 1e-9 * max(float(g.max()), 1e-12)), problem.capacity
            )

        x1 = frank_wolfe(welfare, coarse.value, linear, x0, FW_ITERS)
        x = local_search(
            welfare,
            coarse.value,
            x1,
            problem.lo,
            problem.hi,
            self.quantum,
            min(self.max_iters, LS_AFTER_FW),
            start_step=max(float(np.abs(x1 - x0).max()) / 4.0, 4 * self.quantum),
        )
        return x, {"solver": "frank-wolfe+local-search"}

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
        """Per-job values near the solution: each allocation read on the finest grid of the
        solve (the lattice, then the zoom, then the coarse grid) whose span holds it."""
        grid = self._grid_for(problem, None)  # type: ignore[arg-type]  # cached by solve
        zooms = [g for g in (self._fine or []) if len(g.a) == problem.n]
        if not zooms:
            return grid.value

        def value(x: np.ndarray) -> np.ndarray:
            out = grid.value(x)
            for fine in zooms:  # in solve order, coarse to fine: the finest has the last word
                inside = (x >= fine.a - 1e-12) & (x <= fine.a + fine.b + 1e-12)
                if inside.any():
                    out = np.where(inside, fine.value(x), out)
            return out

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
