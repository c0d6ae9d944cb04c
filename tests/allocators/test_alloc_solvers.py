"""Solvers against brute force: exact where the properties allow it, bounded and deterministic always."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from allocators.problem import COARSE_T, UtilityGrid
from allocators.solvers.evolutionary import evolve
from allocators.solvers.local import local_search
from allocators.solvers.maxmin import solve_maxmin
from allocators.solvers.rounding import quantize, spread
from allocators.solvers.separable import solve_price
from allocators.waterfill import waterfill


def concave_grid(rng: np.random.Generator, n: int, hi: float) -> UtilityGrid:
    a = np.zeros(n)
    b = np.full(n, hi)
    k = rng.uniform(0.2, 2.0, size=n)
    U = np.tanh(k[:, None] * (a[:, None] + b[:, None] * COARSE_T[None, :]))
    return UtilityGrid(a, b, COARSE_T, U)


def brute(grid: UtilityGrid, w: np.ndarray, cap: float, unit: float) -> float:
    """Best sum_j w_j U_j(x_j) over allocations in multiples of ``unit`` (small n only)."""
    levels = np.arange(0, cap + 1e-9, unit)
    best = -np.inf
    for combo in itertools.product(levels, repeat=len(w)):
        x = np.array(combo)
        if x.sum() <= cap + 1e-9:
            best = max(best, float(w @ grid.value(x)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_price_bisection_matches_brute_force_on_concave(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = concave_grid(rng, 3, 6.0)
    w = rng.integers(1, 4, size=3).astype(float)
    x = solve_price(grid, w, 6.0)
    assert x.sum() <= 6.0 + 1e-9
    assert float(w @ grid.value(x)) >= brute(grid, w, 6.0, 0.5) - 1e-6


def test_price_bisection_handles_nonconcave_within_one_gap() -> None:
    # Two identical step-like (logistic) jobs, room for one: give it wholly to one job.
    T = COARSE_T
    U = np.vstack([1 / (1 + np.exp(-(10 * T - 5)))] * 2)
    grid = UtilityGrid(np.zeros(2), np.ones(2), T, U)
    x = solve_price(grid, np.ones(2), 1.0)
    assert float(grid.value(x).sum()) >= 0.99 * float(grid.value(np.array([1.0, 0.0])).sum())


@pytest.mark.parametrize("seed", range(5))
def test_maxmin_level_is_the_highest_affordable(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = concave_grid(rng, 4, 10.0)
    x, level = solve_maxmin(grid, 8.0)
    assert x.sum() <= 8.0 + 1e-6
    assert grid.value(x).min() >= level - 1e-6
    # a level a bit higher is not affordable
    from allocators.solvers.maxmin import demands_at

    assert (
        demands_at(grid, min(level + 1e-3, 1.0)).sum() > 8.0 or level >= grid.U[:, -1].min() - 1e-9
    )


def test_local_search_improves_a_nonseparable_objective() -> None:
    rng = np.random.default_rng(0)
    grid = concave_grid(rng, 6, 10.0)
    w = np.ones(6)

    def welfare(U: np.ndarray, X: np.ndarray) -> np.ndarray:
        return U.mean(axis=1) - 0.5 * U.std(axis=1)

    x0 = np.array([10.0, 0, 0, 0, 0, 0])
    x = local_search(welfare, grid.value, x0, np.zeros(6), np.full(6, 10.0), 0.1)
    assert x.sum() <= 10.0 + 1e-9 and np.all(x >= -1e-12)
    assert (
        welfare(grid.value(x)[None], x[None])[0] > welfare(grid.value(x0)[None], x0[None])[0] + 0.1
    )
    # deterministic
    assert np.array_equal(
        x, local_search(welfare, grid.value, x0, np.zeros(6), np.full(6, 10.0), 0.1)
    )
    del w


def test_evolutionary_respects_bounds_and_budget() -> None:
    rng = np.random.default_rng(1)
    grid = concave_grid(rng, 5, 8.0)
    w = np.ones(5)
    calls: list[int] = []

    def evaluate(xb: np.ndarray) -> np.ndarray:
        calls.append(len(xb))
        return grid.value(xb) @ w

    lo, hi = np.array([0, 1, 0, 0, 0.0]), np.array([8, 8, 2, 8, 8.0])
    x = evolve(evaluate, lo, hi, w, 8.0, np.random.default_rng(0), budget=500, population=20)
    assert sum(calls) == 500
    assert np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9) and x.sum() <= 8.0 + 1e-6


def test_quantize_keeps_capacity_busy() -> None:
    rng = np.random.default_rng(2)
    x = waterfill(100.0, rng.uniform(1, 3, 1000), np.zeros(1000), np.full(1000, np.inf))
    q = quantize(x, np.zeros(1000), np.full(1000, 100.0), 100.0, 0.1)
    assert q.sum() <= 100.0 + 1e-6 and q.sum() >= 100.0 - 0.1
    assert np.allclose(np.round(q / 0.1) * 0.1, q)
    s = spread(np.zeros(3), np.array([1.0, 5.0, 5.0]), np.ones(3), 7.0, 0.1)
    assert abs(s.sum() - 7.0) < 1e-9 and s[0] == pytest.approx(1.0)
