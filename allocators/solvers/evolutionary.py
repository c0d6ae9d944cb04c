"""Cilantro's evolutionary search, vectorized with a fixed evaluation budget.

Cilantro solves its welfare problems with an evolutionary algorithm of 2,000-
4,000 evaluations. This one keeps a population of allocations that each fill
the capacity, mutates parents chosen from the best quarter by moving a random
fraction of a random donor's allocation to a random receiver (a few such
transfers per child), and keeps the best individuals (elitism). Every
generation is evaluated in one batch: the caller's ``evaluate`` queries the
models at the candidates' own allocations (policies pass
``GridBuilder.welfare_at``, the bound-query code our solvers use), so a speed
ratio measures the algorithm, not the implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from allocators.waterfill import waterfill

Evaluate = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, float], None]  # (evaluations so far, best welfare)


def evolve(
    evaluate: Evaluate,
    lo: np.ndarray,
    hi: np.ndarray,
    weights: np.ndarray,
    capacity: float,
    rng: np.random.Generator,
    budget: int = 4000,
    population: int = 40,
    seed_points: tuple[np.ndarray, ...] = (),
    on_generation: Progress | None = None,
) -> np.ndarray:
    n = len(lo)
    if n == 0:
        return np.zeros(0)
    total = min(capacity, float(np.sum(np.minimum(hi, capacity))))
    fair = waterfill(total, weights, lo, hi)
    pop = [fair, *seed_points]
    while len(pop) < population:
        share = rng.dirichlet(np.ones(n)) * (total - lo.sum())
        pop.append(_repair(lo + share, lo, hi, total))
    P = np.vstack(pop[:population])
    fit = evaluate(P)
    evals = len(P)
    if on_generation is not None:
        on_generation(evals, float(fit.max()))
    while evals < budget:
        k = min(population, budget - evals)
        order = np.argsort(-fit, kind="stable")
        parents = P[order[rng.integers(0, max(1, population // 4), size=k)]]
        kids = parents.copy()
        for _ in range(3):  # three transfers per child
            d = rng.integers(0, n, size=k)
            r = rng.integers(0, n, size=k)
            frac = rng.random(k)
            rows = np.arange(k)
            amt = np.minimum(frac * (kids[rows, d] - lo[d]), np.maximum(hi[r] - kids[rows, r], 0.0))
            amt = np.where(d == r, 0.0, amt)
            kids[rows, d] -= amt
            kids[rows, r] += amt
        kfit = evaluate(kids)
        evals += k
        P = np.vstack([P, kids])
        fit = np.concatenate([fit, kfit])
        keep = np.argsort(-fit, kind="stable")[:population]
        P, fit = P[keep], fit[keep]
        if on_generation is not None:
            on_generation(evals, float(fit[0]))
    return P[int(np.argmax(fit))]


def _repair(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, total: float) -> np.ndarray:
    """Clip to bounds and re-fill to ``total`` by water-filling above the clipped point."""
    x = np.clip(x, lo, hi)
    if x.sum() > total:  # shrink proportionally above the minimums
        return lo + (x - lo) * (total - lo.sum()) / max(float((x - lo).sum()), 1e-12)
    return waterfill(total, np.ones_like(x), x, hi)
