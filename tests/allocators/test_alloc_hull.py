"""The envelope greedy (allocators/solvers/hull.py) against brute force and the price solve."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from allocators.problem import UtilityGrid
from allocators.solvers.hull import (
    _drop_under_chords,
    envelope_vertices,
    grid_value,
    hull_greedy,
    hull_solve,
)
from allocators.solvers.separable import solve_price


def _rows(rng: np.random.Generator, n: int, m: int, concave: bool) -> tuple[np.ndarray, np.ndarray]:
    X = np.cumsum(rng.uniform(0.1, 1.0, (n, m)), axis=1)
    if concave:  # falling slopes
        slopes = np.sort(rng.uniform(0.0, 1.0, (n, m - 1)), axis=1)[:, ::-1]
        V = np.concatenate(
            [np.zeros((n, 1)), np.cumsum(slopes * np.diff(X, axis=1), axis=1)], axis=1
        )
    else:  # any monotone shape: convex, concave, S-shaped, bumpy
        V = np.cumsum(rng.uniform(0.0, 1.0, (n, m)) ** rng.uniform(0.3, 3.0), axis=1)
    return X, V


def _best_on_points(X: np.ndarray, V: np.ndarray, cap: float) -> float:
    n, m = X.shape
    best = -np.inf
    for combo in itertools.product(range(m), repeat=n):
        if X[np.arange(n), combo].sum() <= cap + 1e-12:
            best = max(best, float(V[np.arange(n), combo].sum()))
    return best


def _capacity(rng: np.random.Generator, X: np.ndarray) -> float:
    return float(X[:, 0].sum() + rng.uniform(0.0, 1.0) * (X[:, -1] - X[:, 0]).sum())


@pytest.mark.parametrize("concave", [True, False])
def test_greedy_against_the_best_grid_allocation(concave: bool) -> None:
    """Concave rows: at least the best allocation on grid points (the greedy is exact on
    the envelope). Any rows: within one envelope gap of it, the classical greedy bound."""
    rng = np.random.default_rng(1 if concave else 2)
    for _ in range(200):
        X, V = _rows(rng, int(rng.integers(1, 5)), int(rng.integers(2, 7)), concave=concave)
        cap = _capacity(rng, X)
        x = hull_greedy(X, V, cap)
        assert x.sum() <= cap + 1e-9
        assert np.all(x >= X[:, 0] - 1e-12) and np.all(x <= X[:, -1] + 1e-9)
        gap = 0.0 if concave else float((V[:, -1] - V[:, 0]).max())  # a loose bound on it
        assert grid_value(X, V, x) >= _best_on_points(X, V, cap) - gap - 1e-9


def test_an_answer_without_a_settled_chord_is_the_grid_optimum() -> None:
    """``hull_solve``'s flag: concave rows never settle; on any rows, an answer that did
    not settle a chord scores the best allocation on grid points (what lets the policy
    skip its local search)."""
    rng = np.random.default_rng(5)
    outcomes = set()
    for k in range(300):
        concave = k % 3 == 0
        X, V = _rows(rng, int(rng.integers(1, 5)), int(rng.integers(2, 7)), concave=concave)
        cap = _capacity(rng, X)
        x, settled = hull_solve(X, V, cap)
        outcomes.add(settled)
        assert not (concave and settled)
        if not settled:
            assert grid_value(X, V, x) >= _best_on_points(X, V, cap) - 1e-9
    assert outcomes == {True, False}  # both paths were exercised


def test_envelope_by_tangents_matches_envelope_by_chords() -> None:
    rng = np.random.default_rng(3)
    for k in range(600):
        n, m = 5, int(rng.integers(3, 14))
        X, V = _rows(rng, n, m, concave=False)
        if k % 3 == 0:  # logistic rows: convex, then concave
            V = 1.0 / (1.0 + np.exp(rng.uniform(2, 8, (n, 1)) - X * rng.uniform(0.5, 3, (n, 1))))
        a, b = envelope_vertices(X, V), _drop_under_chords(X, V)
        for i in range(n):
            ea = np.interp(X[i], X[i][a[i]], V[i][a[i]])
            eb = np.interp(X[i], X[i][b[i]], V[i][b[i]])
            assert np.allclose(ea, eb, atol=1e-9)
            assert np.all(ea >= V[i] - 1e-9)  # an upper envelope


def test_at_least_the_price_solve_welfare_on_concave_grids() -> None:
    rng = np.random.default_rng(4)
    T = np.linspace(0.0, 1.0, 33)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        a, b = rng.uniform(0, 1, n), rng.uniform(1, 10, n)
        k = rng.uniform(0.1, 3.0, n)
        U = np.tanh(k[:, None] * (a[:, None] + b[:, None] * T[None, :]))
        grid = UtilityGrid(a, b, T, U)
        w = rng.integers(1, 4, n).astype(float)
        cap = float(a.sum() + rng.uniform(0.1, 0.9) * b.sum())
        x = hull_greedy(grid.X, w[:, None] * U, cap)
        y = solve_price(grid, w, cap)
        ours, price = (w * grid.value(x)).sum(), (w * grid.value(y)).sum()
        # Exact, where the bisection stops within its tolerance of the clearing price.
        assert ours >= price - 1e-9
        assert ours == pytest.approx(price, rel=1e-6)
