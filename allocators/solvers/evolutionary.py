"""Evolutionary search over allocations with a fixed evaluation budget, two ways.

``evolve_cilantro`` is Cilantro's own algorithm (``cilantro/policies/evo_opt.py``,
``optimise_with_evo_alg``): a history of every allocation evaluated; an initial
set of max(10, 2n) allocations (the equal split and random splits above the
minimums); then epochs of 5 mutations, each of a parent drawn from the whole
history with probability proportional to exp(standardised value), one
quarter by 2-5 moves of one allocation unit from a random job to another, the
rest by a Gaussian perturbation (0.1) of every job's share above its minimum.
An epoch's parents depend on every value before it, so an epoch (5
candidates) is the batch the algorithm allows; the caller's ``evaluate``
scores it with one query of the models at the candidates' own allocations
(policies pass ``GridBuilder.welfare_at``, the bound-query code our solvers
use), so a speed ratio measures the algorithm, not the implementation.

``evolve`` is a generational variant (a population of allocations that each
fill the capacity, children of the best quarter by random transfers, elitism),
which batches 40 candidates per query: a faster search at the same budget,
kept as a second reference.
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


#: Cilantro's defaults (``optimise_with_evo_alg``, ``EvoOpt``, ``_dflt_mutation_op``).
CILANTRO_EPOCH = 5  # num_mutations_per_epoch
CILANTRO_FLIP_PROB = 0.25  # mutation 1 (unit moves); the rest mutation 2 (perturbation)
CILANTRO_FLIP_STEPS = (2, 5)  # min_num_steps + randint(max - min) + 1, with (1, 5)
CILANTRO_PERTURB = 0.1  # perturb_factor


def evolve_cilantro(
    evaluate: Evaluate,
    lo: np.ndarray,
    hi: np.ndarray,
    capacity: float,
    rng: np.random.Generator,
    budget: int = 4000,
    unit: float = 0.1,
    on_generation: Progress | None = None,
) -> np.ndarray:
    """Cilantro's evolutionary search (see the module doc), ``budget`` evaluations in all.

    The initial set counts towards the budget (at most half of it: 2n exceeds 2,000 only
    beyond 1,000 jobs). ``unit``: the allocation unit mutation 1 moves (Cilantro's
    resources come in whole units; ours in quanta). Its minimum per job is ``lo``;
    ``hi`` (which Cilantro does not have) is kept by clipping and re-filling.
    """
    n = len(lo)
    if n == 0:
        return np.zeros(0)
    total = min(capacity, float(np.sum(np.minimum(hi, capacity))))
    n_init = max(1, min(max(10, 2 * n), budget // 2))
    H = np.empty((max(budget, n_init), n))
    H[0] = waterfill(total, np.ones(n), lo, hi)  # the equal split
    ratios = rng.random((n_init - 1, n))
    H[1:n_init] = lo + (total - lo.sum()) * ratios / ratios.sum(axis=1, keepdims=True)
    for k in np.flatnonzero((H[1:n_init] > hi).any(axis=1)) + 1:  # over a maximum: re-fill
        H[k] = _repair(H[k], lo, hi, total)
    vals = np.empty(len(H))
    vals[:n_init] = evaluate(H[:n_init])
    done = n_init
    if on_generation is not None:
        on_generation(done, float(vals[:done].max()))
    while done < budget:
        k = min(CILANTRO_EPOCH, budget - done)
        parents = H[_exp_sample(vals[:done], k, rng)]
        kids = parents.copy()
        flip = rng.random(k) < CILANTRO_FLIP_PROB
        if flip.any():
            kids[flip] = _unit_moves(kids[flip], lo, unit, rng)
        if (~flip).any():
            kids[~flip] = _perturb(kids[~flip], lo, rng)
        kids = np.minimum(kids, hi)
        for i in np.flatnonzero(kids.sum(axis=1) < total - 1e-9):  # clipped at hi: re-fill
            kids[i] = _repair(kids[i], lo, hi, total)
        H[done : done + k] = kids
        vals[done : done + k] = evaluate(kids)
        done += k
        if on_generation is not None:
            on_generation(done, float(vals[:done].max()))
    return H[int(np.argmax(vals[:done]))].copy()


def _exp_sample(vals: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cilantro's parent choice: indices drawn with probability proportional to
    exp((v - mean) / std) over every value so far (uniform when they are all equal)."""
    m = len(vals)
    if m == 1:
        return np.zeros(k, dtype=np.intp)
    if m < k:  # without replacement, as published, only while the history is this short
        std = float(vals.std())
        p = np.exp((vals - vals.mean()) / std) if std > 0 else np.ones(m)
        return rng.choice(m, size=k, replace=False, p=p / p.sum())
    mean = float(vals.mean())
    std = float(np.sqrt(max(float(np.dot(vals, vals)) / m - mean * mean, 0.0)))
    if std == 0:
        return rng.integers(0, m, size=k)
    # Inverse-CDF draws (what Generator.choice does with p, without its checks).
    cdf = np.cumsum(np.exp((vals - mean) / std))
    idx = np.searchsorted(cdf, rng.random(k) * cdf[-1], side="right")
    return np.minimum(idx, m - 1)


def _unit_moves(X: np.ndarray, lo: np.ndarray, unit: float, rng: np.random.Generator) -> np.ndarray:
    """Mutation 1, for each row: 2-5 times, one unit from a random job holding at least
    its minimum plus a unit to a random other job."""
    X = X.copy()
    k, n = X.shape
    if n < 2:
        return X
    a, b = CILANTRO_FLIP_STEPS
    steps = rng.integers(a, b + 1, size=k)
    keys = rng.random((b, k, n))  # all the draws at once; each step uses its own slice
    shifts = rng.integers(1, n, size=(b, k))  # a different job, uniformly
    rows = np.arange(k)
    floor = lo + unit - 1e-12
    for s in range(int(steps.max())):
        # A uniform choice among each row's eligible jobs: the largest random key among them.
        donor = np.argmax(np.where(floor <= X, keys[s], -1.0), axis=1)
        live = (steps > s) & (X[rows, donor] >= floor[donor])
        r = rows[live]
        X[r, donor[live]] -= unit
        X[r, (donor[live] + shifts[s, live]) % n] += unit
    return X


def _perturb(X: np.ndarray, lo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mutation 2, for each row: every job's share above its minimum, normalised, plus
    0.1 x a standard normal, floored at 0 and renormalised to the same total."""
    above = np.maximum(X - lo, 0.0)
    total = above.sum(axis=1, keepdims=True)
    share = np.where(total > 0, above / np.where(total > 0, total, 1.0), 0.0)
    new = np.maximum(share + CILANTRO_PERTURB * rng.standard_normal(X.shape), 0.0)
    norm = new.sum(axis=1, keepdims=True)
    return lo + np.where(norm > 0, new * total / np.where(norm > 0, norm, 1.0), above)
