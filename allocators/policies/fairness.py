"""Ours: egalitarian (max-min) welfare and no-justified-complaints fair sharing, on learned bounds.

Egalitarian: bisection on the max-min utility level on upper bounds (exact for
monotone utilities), refined on a fine grid; the capacity the level does not
need then goes to utilitarian welfare above it (price bisection), so the
minimum never drops. NJC: Cilantro's no-justified-complaints sharing, weighted
max-min water-filling of learned demands; a demand is the smallest allocation
whose *lower* bound meets the SLO (a demand is a promise), and capacity left
after every demand goes by weight. Both hold allocations unless the gain pays
``switching_cost``; NJC's gain is the complaints removed (CPUs by which jobs sit below
their max-min share of the demands), not utility above the fair share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.policies.engine import CpuPolicy, Score
from allocators.problem import CpuProblem, GridBuilder, Side
from allocators.solvers.maxmin import ceil_to, refine_demands, slo_demands, solve_maxmin
from allocators.solvers.separable import solve_price
from allocators.waterfill import waterfill


class Egalitarian(CpuPolicy):
    name = "egalitarian"
    kind = "ours"
    description = (
        "maximise the minimum utility on upper bounds (bisection on the level), rest utilitarian"
    )
    source = "Cilantro (OSDI '23) egalitarian welfare"
    side: Side = "upper"
    #: The bound that must reach a job's reward threshold before the upper bound may claim
    #: its SLO met (``problem.below_threshold``): the lower one, as the minimum is the
    #: objective and a job wrongly read as satisfied is the one that sets it.
    saturate: Side | None = "lower"

    def __init__(self, switching_cost: float = 0.02) -> None:
        super().__init__(switching_cost)

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        builder = GridBuilder(problem, snapshot.models, self.side, saturate=self.saturate)
        coarse = builder.coarse()
        _, level = solve_maxmin(coarse, problem.capacity, self.quantum, problem.hi)
        d = ceil_to(
            refine_demands(coarse, level, builder.grid), self.quantum, problem.lo, problem.hi
        )
        if d.sum() > problem.capacity:  # interpolation slack: scale back above the minimums
            d = waterfill(problem.capacity, problem.weights, problem.lo, d)
        # What the level does not need: utilitarian welfare above it (the minimum cannot fall).
        above = builder.grid(d, problem.hi - d, coarse.T)
        x = solve_price(above, problem.weights, problem.capacity)
        return x, {"level": float(level)}

    def score(self, problem: CpuProblem, snapshot: Snapshot) -> Score | None:
        builder = GridBuilder(problem, snapshot.models, self.side, saturate=self.saturate)
        grid = builder.coarse()
        # Lexicographic in spirit: the minimum first, mean utility as a small tie-breaker.
        return lambda x: float(grid.value(x).min() + 1e-3 * grid.value(x).mean())


class OracleEgalitarian(Egalitarian):
    name = "oracle_egalitarian"
    kind = "oracle"
    description = "egalitarian welfare on ground-truth curves"
    source = "regret baseline: same solver, mean of ground-truth curves"
    side: Side = "mean"

    def __init__(self) -> None:
        super().__init__(switching_cost=0.0)


class NoJustifiedComplaints(CpuPolicy):
    name = "njc"
    kind = "ours"
    description = "weighted max-min water-filling of learned demands (lower bounds meet the SLO)"
    source = "Cilantro (OSDI '23) no-justified-complaints fairness"
    side: Side = "lower"

    def __init__(self, switching_cost: float = 0.02) -> None:
        super().__init__(switching_cost)

    def _target(self, problem: CpuProblem, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """(demands, weighted max-min water-filling of the demands); the score reuses the
        solve's when the problem is the same (one model query per decision)."""
        key = (
            snapshot.time,
            snapshot.round,
            problem.names,
            problem.lo.tobytes(),
            problem.hi.tobytes(),
            problem.capacity,
        )
        cached = getattr(self, "_cached", None)
        if cached is not None and cached[0] == key and cached[1] is snapshot.models:
            return cached[2], cached[3]
        builder = GridBuilder(problem, snapshot.models, self.side)
        demand = slo_demands(builder.coarse(), builder.grid)
        want = np.clip(np.where(np.isfinite(demand), demand, problem.hi), problem.lo, problem.hi)
        x = waterfill(min(problem.capacity, float(want.sum())), problem.weights, problem.lo, want)
        self._cached = (key, snapshot.models, want, x)
        return want, x

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        want, x = self._target(problem, snapshot)
        return x, {"demands": {n: float(v) for n, v in zip(problem.names, want, strict=True)}}

    def score(self, problem: CpuProblem, snapshot: Snapshot) -> Score | None:
        # Fewer justified complaints is better: a job held below its max-min share of the
        # demands has one, of that many CPUs (weighted, as a fraction of the capacity: the
        # switching cost's unit). Not a shortfall below the fair-share utility: at the fair
        # share nobody falls short of it, so that score never paid for handing the capacity
        # that satisfied jobs leave to the jobs still short, and NJC stayed on fair share.
        _, target = self._target(problem, snapshot)
        w = problem.weights / problem.weights.mean()
        cap = max(problem.capacity, 1e-12)
        return lambda x: float(-(np.clip(target - x, 0, None) * w).sum() / cap)
