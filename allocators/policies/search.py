"""Search baselines: Cilantro as published, evolutionary search on observed welfare, greedy egalitarian.

Cilantro (OSDI '23): its learner's upper bounds (whatever interval models the
snapshot carries; in deployment its interval tree), its evolutionary solver
(``evolve_cilantro``: its initial set, operators and epochs of 5 mutations)
with a budget of 2,000-4,000 evaluations (``budget``, default 4,000), and its
reallocation period (120 s for cluster sharing). The search scores each
epoch by one query of the models at the candidates' own allocations, through
the same bound-query code (``GridBuilder.table``) as our solver.

Evolutionary search on observed welfare (Cilantro's EvoAlg baseline): no
model; each round it scores the allocation in force by the welfare measured
(signals ``reward``), keeps a small population in its state, and tries a
mutation of the best allocation seen.

Greedy egalitarian (Cilantro's baseline): each round moves ``step`` CPUs from
the job with the highest measured utility to the one with the lowest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.objectives import Objective
from allocators.policies.engine import CpuPolicy, due, fit, held, signal, start_vector
from allocators.policies.welfare import resolve_objective
from allocators.problem import CpuProblem, GridBuilder
from allocators.solvers.evolutionary import evolve_cilantro
from cluster_mgr.model import utility_from_reward


class Cilantro(CpuPolicy):
    name = "cilantro"
    kind = "baseline"
    description = (
        "Cilantro as published: UCB welfare, evolutionary solver (4,000 evals), 120 s period"
    )
    source = "Bhardwaj et al., Cilantro, OSDI '23"

    def __init__(
        self,
        objective: str | Objective = "utilitarian",
        budget: int = 4000,
        period: float = 120.0,
    ) -> None:
        super().__init__(0.0)
        if budget < 1:
            raise ValueError(f"budget must be >= 1 evaluation, got {budget}")
        if period < 0:
            raise ValueError("period must be >= 0")
        self.objective = resolve_objective(objective)
        self.budget, self.period = budget, period

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        old = held(snapshot, problem)
        if old is not None and not due(state, snapshot, self.period):
            return old, {}
        obj = self.objective
        transform = obj.values if obj.separable else None
        # Every candidate is scored on the models at its own allocations: one bounds query
        # per epoch (its candidates' allocations of each job in one call), as Cilantro
        # evaluates its candidates; no precomputed grid.
        builder = GridBuilder(problem, snapshot.models, "upper", transform)
        w = problem.weights
        if obj.separable:

            def evaluate(xb: np.ndarray) -> np.ndarray:
                return builder.welfare_at(xb) @ w / w.sum()
        else:

            def evaluate(xb: np.ndarray) -> np.ndarray:
                return obj.welfare(builder.welfare_at(xb), xb, w)

        rng = np.random.default_rng([snapshot.seed, snapshot.round])
        x = evolve_cilantro(
            evaluate, problem.lo, problem.hi, problem.capacity, rng, self.budget, self.quantum
        )
        return x, {"acted_at": snapshot.time}


def observed_utility(snapshot: Snapshot, problem: CpuProblem) -> np.ndarray:
    """Measured utility per job (NaN where no ``reward`` signal)."""
    out = np.full(problem.n, np.nan)
    for i, j in enumerate(problem.jobs):
        r = signal(snapshot, j.name, "reward")
        if r is not None:
            out[i] = float(utility_from_reward(r, j.reward_threshold, j.utility.scaling))
    return out


class EvolutionaryObserved(CpuPolicy):
    name = "evo_observed"
    kind = "baseline"
    description = "evolutionary search scored by measured welfare, one trial allocation per round"
    source = "Cilantro's EvoAlg baseline (evolutionary search on observed welfare)"

    def __init__(self, population: int = 8, mutation: float = 0.2) -> None:
        super().__init__(0.0)
        if population < 1 or not 0 < mutation <= 1:
            raise ValueError("population >= 1 and 0 < mutation <= 1")
        self.population, self.mutation = population, mutation

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        names = list(problem.names)
        pop = state.get("population", []) if state.get("jobs") == names else []
        x_now = held(snapshot, problem)
        u = observed_utility(snapshot, problem)
        if x_now is not None and not np.isnan(u).all():
            fitness = float(np.nansum(u * problem.weights) / problem.weights[~np.isnan(u)].sum())
            pop = sorted(
                [*pop, {"x": x_now.tolist(), "fitness": fitness}], key=lambda p: -p["fitness"]
            )[: self.population]
        if not pop:
            x = problem.fair_share()
        else:
            rng = np.random.default_rng([snapshot.seed, snapshot.round])
            x = np.array(pop[0]["x"], dtype=float)
            d, r = rng.choice(problem.n, size=2, replace=problem.n < 2)
            amt = self.mutation * rng.random() * (x[d] - problem.lo[d])
            amt = min(amt, problem.hi[r] - x[r])
            if d != r:
                x[d] -= amt
                x[r] += amt
        return fit(x, problem), {"jobs": names, "population": pop}


class GreedyEgalitarian(CpuPolicy):
    name = "greedy_egalitarian"
    kind = "baseline"
    description = "move a step of CPU from the happiest job to the least happy one, each round"
    source = "Cilantro's greedy egalitarian baseline"

    def __init__(self, step: float = 1.0) -> None:
        super().__init__(0.0)
        if step <= 0:
            raise ValueError("step must be > 0")
        self.step = step

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        x = start_vector(problem, snapshot)
        u = observed_utility(snapshot, problem)
        if problem.n >= 2 and (~np.isnan(u)).sum() >= 2:
            order = np.argsort(np.where(np.isnan(u), np.inf, u), kind="stable")
            low = int(order[0])
            rich = [i for i in order[::-1] if not np.isnan(u[i]) and i != low]
            if rich and u[rich[0]] > u[low]:
                high = int(rich[0])
                amt = min(self.step, x[high] - problem.lo[high], problem.hi[low] - x[low])
                x[high] -= max(amt, 0.0)
                x[low] += max(amt, 0.0)
        return fit(x, problem), {}
