"""Ours: SLO-driven autoscaling at a cost, and the QaSAL-style constrained policy with dual variables.

Autoscale: each job gets the smallest CPU whose *lower* bound meets its SLO
(an SLO must hold, so the pessimistic side), times ``headroom``; a job's SLO is
bought only when ``weight * slo_value >= cpu_price * demand``. Capacity no SLO
needs stays idle (it is the saving; the policy states reserve = 1). When the
demands do not fit, admission degrades by priority class and reports who
misses and by how much (``state['admission']``); ``refuse_new`` refuses new jobs.

Constrained: maximise utilitarian welfare on upper bounds subject to, per
constrained priority class, measured P99 <= ``p99_factor`` x each job's SLO
target. One dual variable per constraint lives in the state and is updated
online by projected subgradient steps on the measured violation (signals
``p99_ms``; the model's lower bound when no measurement exists). The
Lagrangian is separable, so each round is an exact price-bisection solve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from allocators.admission import admit
from allocators.base import PolicyState, Snapshot
from allocators.policies.engine import CpuPolicy, Score
from allocators.problem import COARSE_T, FINE_T, CpuProblem, GridBuilder, Side, UtilityGrid
from allocators.solvers.maxmin import slo_demands
from allocators.solvers.separable import solve_zoomed


class SloAutoscale(CpuPolicy):
    name = "slo_autoscale"
    kind = "ours"
    description = "smallest CPU whose lower bound meets each SLO, at a price; admission by priority"
    source = "Cilantro autoscaling policy, with lower bounds and priority admission"
    side: Side = "lower"
    work_conserving = False
    reserve = 1.0

    def __init__(
        self,
        headroom: float = 1.0,
        cpu_price: float = 0.0,
        slo_value: float = 1.0,
        refuse_new: bool = False,
        switching_cost: float = 0.0,
    ) -> None:
        super().__init__(switching_cost)
        if not headroom >= 1.0 or cpu_price < 0 or slo_value < 0:
            raise ValueError("headroom must be >= 1, cpu_price and slo_value >= 0")
        self.headroom, self.cpu_price, self.slo_value = headroom, cpu_price, slo_value
        self.refuse_new = refuse_new

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        builder = GridBuilder(problem, snapshot.models, self.side)
        demand = slo_demands(builder.coarse(), builder.grid) * self.headroom
        worth = problem.weights * self.slo_value >= self.cpu_price * np.nan_to_num(demand, posinf=0)
        demand = np.where(worth, demand, problem.lo)
        last = snapshot.last.amounts if snapshot.last is not None else {}
        new = np.array([n not in last for n in problem.names])
        prio = np.array([j.priority for j in problem.jobs])
        res = admit(
            problem.names,
            prio,
            problem.weights,
            demand,
            problem.lo,
            problem.hi,
            problem.capacity,
            new,
            self.refuse_new,
        )
        cost = float(self.cpu_price * res.alloc.sum())
        not_bought = [n for n, ok in zip(problem.names, worth, strict=True) if not ok]
        return res.alloc, {"admission": {**res.report, "not_worth_cost": not_bought}, "cost": cost}


class Constrained(CpuPolicy):
    name = "constrained"
    kind = "ours"
    description = "utilitarian welfare s.t. per-class P99 bounds; dual variables in state (QaSAL)"
    source = "QaSAL: constraints enforced by online dual variables"

    def __init__(
        self,
        constraints: Sequence[Mapping[str, float]] | None = None,
        step: float = 0.5,
        dual_max: float = 50.0,
        switching_cost: float = 0.02,
    ) -> None:
        super().__init__(switching_cost)
        self.constraints = [dict(c) for c in constraints] if constraints is not None else None
        for c in self.constraints or []:
            if "priority" not in c:
                raise ValueError(f"constraint {c} needs a 'priority' class")
        if step <= 0 or dual_max <= 0:
            raise ValueError("step and dual_max must be > 0")
        self.step, self.dual_max = step, dual_max

    def _constraints(self, problem: CpuProblem) -> list[dict[str, float]]:
        if self.constraints is not None:
            return self.constraints
        top = max(j.priority for j in problem.jobs)  # default: the highest class must hold its P99
        return [{"priority": top, "p99_factor": 1.0}]

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        ucb = GridBuilder(problem, snapshot.models, "upper")
        lcb = GridBuilder(problem, snapshot.models, "lower")
        duals = dict(state.get("duals", {}))
        cons = self._constraints(problem)
        lam = np.zeros(problem.n)
        violations = {}
        for c in cons:
            key = f"priority={int(c['priority'])}"
            members = np.array([j.priority == c["priority"] for j in problem.jobs])
            g = self._violation(problem, snapshot, lcb, members, float(c.get("p99_factor", 1.0)))
            duals[key] = float(np.clip(duals.get(key, 0.0) + self.step * g, 0.0, self.dual_max))
            violations[key] = g
            lam = np.where(members, duals[key], lam)

        def regrid(a: np.ndarray, b: np.ndarray, T: np.ndarray = COARSE_T) -> UtilityGrid:
            gu, gl = ucb.grid(a, b, T), lcb.grid(a, b, T)
            # Lagrangian per job: w u_ucb + lambda (u_lcb - 1), divided by w for solve_price.
            pen = lam[:, None] / problem.weights[:, None] * (gl.U - 1.0)
            return UtilityGrid(a, b, T, gu.U + pen)

        coarse = regrid(problem.lo.copy(), problem.hi - problem.lo)
        x = solve_zoomed(
            coarse, problem.weights, problem.capacity, lambda a, b: regrid(a, b, FINE_T)
        )
        self._grid = coarse
        return x, {"duals": duals, "violations": violations}

    def _violation(
        self,
        problem: CpuProblem,
        snapshot: Snapshot,
        lcb: GridBuilder,
        members: np.ndarray,
        factor: float,
    ) -> float:
        """Worst relative excess of P99 over its bound in the class (negative when all hold)."""
        worst = -1.0
        for i in np.flatnonzero(members):
            job = problem.jobs[i]
            sig = snapshot.signals.get(job.name, {})
            if "p99_ms" in sig and job.slo is not None and job.slo.metric == "latency":
                worst = max(worst, float(sig["p99_ms"]) / (factor * job.slo.target) - 1.0)
            elif snapshot.last is not None and job.name in snapshot.last.amounts:
                x = np.array([snapshot.last.get(job.name).cpu])
                short = 1.0 - float(lcb.utilities(i, x)[0])
                # A held SLO counts as a small negative violation, so an unneeded dual decays.
                worst = max(worst, short if short > 1e-9 else -0.1)
        return max(worst, -1.0)

    def score(self, problem: CpuProblem, snapshot: Snapshot) -> Score | None:
        grid, w = self._grid, problem.weights
        return lambda x: float((grid.value(x) * w).sum() / w.sum())
