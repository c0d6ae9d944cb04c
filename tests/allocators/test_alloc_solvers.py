"""Solvers against brute force: exact where the properties allow it, bounded and deterministic always."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from allocators.problem import COARSE_T, GridBuilder, UtilityGrid, cpu_problem
from allocators.solvers.evolutionary import evolve, evolve_cilantro
from allocators.solvers.local import frank_wolfe, local_search
from allocators.solvers.maxmin import solve_maxmin
from allocators.solvers.rounding import quantize, spread
from allocators.solvers.separable import polish, solve_lattice, solve_price
from allocators.testing import random_snapshot
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


def test_cilantro_search_spends_its_budget_in_epochs_within_bounds() -> None:
    """Cilantro's algorithm: an initial set of max(10, 2n), then epochs of 5; every candidate
    within the bounds and the capacity; it improves on the equal split it starts from;
    the same seed gives the same answer."""
    rng = np.random.default_rng(3)
    grid = concave_grid(rng, 5, 8.0)
    w = np.ones(5)
    calls: list[int] = []
    seen: list[np.ndarray] = []
    lo, hi = np.array([0, 1, 0, 0, 0.0]), np.array([8, 8, 2, 8, 8.0])

    def evaluate(xb: np.ndarray) -> np.ndarray:
        calls.append(len(xb))
        seen.append(xb.copy())
        return grid.value(xb) @ w

    x = evolve_cilantro(evaluate, lo, hi, 8.0, np.random.default_rng(0), budget=500)
    assert sum(calls) == 500 and calls[0] == 10 and set(calls[1:]) == {5}
    every = np.vstack(seen)
    assert np.all(every >= lo - 1e-9) and np.all(every <= hi + 1e-9)
    assert np.all(every.sum(axis=1) <= 8.0 + 1e-6)
    assert grid.value(x) @ w > grid.value(every[0]) @ w  # better than the equal split
    again = evolve_cilantro(evaluate, lo, hi, 8.0, np.random.default_rng(0), budget=500)
    assert np.array_equal(x, again)


def test_quantize_keeps_capacity_busy() -> None:
    rng = np.random.default_rng(2)
    x = waterfill(100.0, rng.uniform(1, 3, 1000), np.zeros(1000), np.full(1000, np.inf))
    q = quantize(x, np.zeros(1000), np.full(1000, 100.0), 100.0, 0.1)
    assert q.sum() <= 100.0 + 1e-6 and q.sum() >= 100.0 - 0.1
    assert np.allclose(np.round(q / 0.1) * 0.1, q)
    s = spread(np.zeros(3), np.array([1.0, 5.0, 5.0]), np.ones(3), 7.0, 0.1)
    assert abs(s.sum() - 7.0) < 1e-9 and s[0] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(30))
def test_waterfill_is_exact(seed: int) -> None:
    # Against the definition: sum clip(w t, lo, hi) = capacity, and the same level t for
    # every job strictly inside its bounds (found here by a long bisection).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    w = rng.uniform(0.5, 3.0, n)
    lo = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 5, n))
    hi = lo + np.where(rng.random(n) < 0.2, np.inf, rng.uniform(0, 10, n))
    room = np.where(np.isfinite(hi), hi - lo, 10.0).sum()
    cap = float(lo.sum() + rng.uniform(0.0, 1.2) * room)
    x = waterfill(cap, w, lo, hi)
    assert np.all(x >= lo - 1e-12) and np.all(x <= hi + 1e-12)
    assert x.sum() <= cap + 1e-9
    if np.isfinite(hi).all() and hi.sum() <= cap:
        assert np.allclose(x, hi)
        return
    t_lo, t_hi = 0.0, 1e6
    for _ in range(200):
        t = 0.5 * (t_lo + t_hi)
        t_lo, t_hi = (t, t_hi) if np.clip(w * t, lo, hi).sum() <= cap else (t_lo, t)
    assert np.allclose(x, np.clip(w * t_lo, lo, hi), atol=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_grid_value_is_linear_interpolation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6
    a, b = rng.uniform(0, 2, n), np.where(rng.random(n) < 0.2, 0.0, rng.uniform(0.5, 10, n))
    U = np.sort(rng.random((n, len(COARSE_T))), axis=1)
    grid = UtilityGrid(a, b, COARSE_T, U)
    x = rng.uniform(-1, 14, (3, n))
    want = np.array(
        [
            [np.interp(x[k, j], grid.X[j], U[j]) if b[j] > 0 else U[j, 0] for j in range(n)]
            for k in range(3)
        ]
    )
    assert np.allclose(grid.value(x), want) and np.allclose(grid.value(x[0]), want[0])


@pytest.mark.parametrize("seed", range(6))
def test_lattice_greedy_is_exact_on_whole_quanta(seed: int) -> None:
    # Concave utilities read at whole quanta: the lattice's global greedy equals the best
    # split found by enumeration, when the window spans every feasible amount.
    rng = np.random.default_rng(seed)
    n, q, cap = 3, 0.5, 3.0
    k = rng.uniform(0.2, 2.0, n)
    w = rng.uniform(1.0, 3.0, n)

    def refine(a: np.ndarray, b: np.ndarray, rows: np.ndarray | None) -> UtilityGrid:
        T = np.linspace(0.0, 1.0, 13)
        kr = k if rows is None else k[rows]
        return UtilityGrid(a, b, T, np.tanh(kr[:, None] * (a[:, None] + b[:, None] * T[None, :])))

    lo, hi = np.zeros(n), np.full(n, cap)
    x = solve_lattice(refine, np.full(n, cap / n), w, lo, hi, cap, q, half=6)
    levels = np.arange(0, cap + 1e-9, q)
    best = max(
        float(w @ np.tanh(k * np.array(c)))
        for c in itertools.product(levels, repeat=n)
        if sum(c) <= cap + 1e-9
    )
    assert x.sum() <= cap + 1e-9 and np.allclose(np.round(x / q) * q, x)
    assert float(w @ np.tanh(k * x)) == pytest.approx(best, abs=1e-12)


def test_lattice_recentres_only_the_jobs_on_their_window_edge() -> None:
    # Windows of +-2 quanta around a poor start: the jobs that choose an edge of their
    # window are read again around that choice (only they), and welfare rises.
    n, q, cap = 4, 0.5, 4.0
    k = np.array([0.5, 1.0, 1.5, 2.0])
    calls: list[np.ndarray | None] = []

    def refine(a: np.ndarray, b: np.ndarray, rows: np.ndarray | None) -> UtilityGrid:
        calls.append(None if rows is None else np.asarray(rows).copy())
        T = np.linspace(0.0, 1.0, 5)
        kr = k if rows is None else k[rows]
        return UtilityGrid(a, b, T, np.tanh(kr[:, None] * (a[:, None] + b[:, None] * T[None, :])))

    lo, hi, w, x0 = np.zeros(n), np.full(n, cap), np.ones(n), np.array([4.0, 0.0, 0.0, 0.0])
    once = solve_lattice(refine, x0, w, lo, hi, cap, q, half=2, recenter=0)
    calls.clear()
    twice = solve_lattice(refine, x0, w, lo, hi, cap, q, half=2, recenter=1)
    assert calls[0] is None and calls[1] is not None
    # Job 0's window is [2, 4] CPUs and it gives down to its bottom edge; the others
    # choose inside [0, 2] and keep their windows (not read again).
    assert [int(r) for r in calls[1]] == [0]
    assert twice.sum() <= cap + 1e-9 and np.allclose(np.round(twice / q) * q, twice)
    assert w @ np.tanh(k * twice) > w @ np.tanh(k * once) + 1e-6


def test_polish_fixes_a_job_left_inside_a_nonconcave_stretch() -> None:
    # A logistic-like job whose price solution sits below its knee: moving its CPUs to the
    # concave job (or its knee's worth to it) must raise welfare; polish never lowers it.
    T = np.linspace(0.0, 1.0, 65)
    a, b = np.zeros(2), np.full(2, 10.0)
    X = a[:, None] + b[:, None] * T[None, :]
    U = np.vstack([1 / (1 + np.exp(6.0 - X[0])), np.tanh(0.3 * X[1])])
    grid = UtilityGrid(a, b, T, U)
    assert (np.diff(U[0], 2) > 0).any()  # the logistic row's slopes rise: not concave
    w = np.ones(2)
    x0 = np.array([3.0, 3.0])
    y = polish(grid.value, w, x0, np.zeros(2), np.full(2, 10.0), 6.0, 0.1, max_moves=8)
    assert y.sum() <= 6.0 + 1e-9 and np.all(y >= -1e-12)
    assert w @ grid.value(y) > w @ grid.value(x0) + 1e-3


def test_frank_wolfe_never_lowers_a_concave_welfare() -> None:
    rng = np.random.default_rng(3)
    grid = concave_grid(rng, 6, 10.0)

    def welfare(U: np.ndarray, X: np.ndarray) -> np.ndarray:
        return U.mean(axis=1) - 0.5 * U.std(axis=1)

    x0 = np.array([10.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    x = frank_wolfe(welfare, grid.value, lambda g: solve_price(grid, np.maximum(g, 1e-9), 10.0), x0)
    before = welfare(grid.value(x0)[None], x0[None])[0]
    after = welfare(grid.value(x)[None], x[None])[0]
    assert x.sum() <= 10.0 + 1e-9 and after > before + 0.1


def _band_builder(seed: int, n: int, monotone: bool = True) -> tuple[GridBuilder, UtilityGrid]:
    """A builder over jobs that saturate well below their maximum, and its uncut grid."""
    rng = np.random.default_rng(seed)
    snap = random_snapshot(rng, n_jobs=n)
    problem = cpu_problem(snap)
    builder = GridBuilder(problem, snap.models, "upper", monotone=monotone, tiebreak=0.01)
    full = builder.grid(problem.lo.copy(), problem.hi - problem.lo, COARSE_T)
    return builder, full


@pytest.mark.parametrize("seed", range(8))
def test_coarse_grid_stops_where_every_job_has_stopped_rising(seed: int) -> None:
    builder, full = _band_builder(seed, 6)
    cut = builder.coarse()
    m = cut.U.shape[1]
    assert 2 <= m <= len(COARSE_T)
    # The same points of COARSE_T, the same utilities there ...
    np.testing.assert_allclose(cut.X, full.X[:, :m], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cut.U, full.U[:, :m], rtol=1e-12, atol=1e-12)
    # ... and every job is at its highest utility by the last one, so reading past the cut
    # (the last point, free disposal) is what the uncut grid says everywhere.
    np.testing.assert_array_equal(cut.U[:, -1], full.U[:, -1])
    x = full.X[:, m - 1 :]
    for g in range(x.shape[1]):
        np.testing.assert_allclose(cut.value(x[:, g]), full.value(x[:, g]), atol=1e-12)


def test_coarse_grid_is_not_cut_without_free_disposal() -> None:
    builder, full = _band_builder(0, 6, monotone=False)
    assert builder.coarse().U.shape == full.U.shape


def test_coarse_grid_is_cut_on_jobs_that_saturate_early() -> None:
    # The check above must see cut grids, not only whole ones.
    cut = [_band_builder(seed, 6)[0].coarse().U.shape[1] < len(COARSE_T) for seed in range(8)]
    assert sum(cut) >= 3
