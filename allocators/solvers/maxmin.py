"""Max-min (egalitarian) level by bisection: exact for monotone utilities.

For a level L every job needs d_j(L), the smallest allocation whose utility
reaches min(L, its best); sum_j d_j(L) rises with L, so bisection finds the
highest level the capacity affords.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from allocators.problem import UtilityGrid

LEVEL_ITERS = 50


def demands_at(grid: UtilityGrid, level: np.ndarray | float) -> np.ndarray:
    """Smallest x_j with U_j(x_j) >= min(level, max_j U_j), by interpolation (U non-decreasing)."""
    X, U = grid.X, grid.U
    n = U.shape[0]
    target = np.minimum(level, U[:, -1])
    reach = target[:, None] - 1e-12 <= U
    g = np.argmax(reach, axis=1)
    rows = np.arange(n)
    g0 = np.maximum(g - 1, 0)
    u0, u1 = U[rows, g0], U[rows, g]
    x0, x1 = X[rows, g0], X[rows, g]
    frac = np.where(u1 > u0, (target - u0) / np.where(u1 > u0, u1 - u0, 1.0), 1.0)
    return np.where(g == 0, X[:, 0], x0 + np.clip(frac, 0.0, 1.0) * (x1 - x0))


def ceil_to(x: np.ndarray, quantum: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Up to the quantum (a demand met in whole quanta), within [lo, hi]."""
    if quantum <= 0:
        return np.clip(x, lo, hi)
    return np.clip(np.ceil(x / quantum - 1e-9) * quantum, lo, hi)


def solve_maxmin(
    grid: UtilityGrid, capacity: float, quantum: float = 0.0, hi: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """(allocation, level): the highest common utility level the capacity buys.

    With a ``quantum`` demands are rounded up to whole quanta before they are
    summed, so the level still holds once the allocation is quantized.
    """
    n = grid.U.shape[0]
    if n == 0:
        return np.zeros(0), 0.0
    top = grid.a + grid.b if hi is None else hi

    def need(level: float) -> np.ndarray:
        return ceil_to(demands_at(grid, level), quantum, grid.a, top)

    lo_level, hi_level = float(grid.U[:, 0].min()), float(grid.U[:, -1].max())
    if need(hi_level).sum() <= capacity:
        return need(hi_level), hi_level
    for _ in range(LEVEL_ITERS):
        mid = 0.5 * (lo_level + hi_level)
        if need(mid).sum() <= capacity:
            lo_level = mid
        else:
            hi_level = mid
    return need(lo_level), lo_level


def refine_demands(
    coarse: UtilityGrid,
    level: np.ndarray | float,
    regrid: Callable[[np.ndarray, np.ndarray], UtilityGrid],
) -> np.ndarray:
    """Demands at ``level`` to fine-grid precision: re-query each job inside its coarse bracket."""
    d = demands_at(coarse, level)
    t = np.where(coarse.b > 0, (d - coarse.a) / np.where(coarse.b > 0, coarse.b, 1.0), 0.0)
    g = np.clip(np.searchsorted(coarse.T, t - 1e-12, side="left"), 1, len(coarse.T) - 1)
    a = coarse.a + coarse.b * coarse.T[g - 1]
    b = coarse.b * (coarse.T[g] - coarse.T[g - 1])
    fine = regrid(np.minimum(a, d), np.maximum(a + b, d) - np.minimum(a, d))
    return np.minimum(demands_at(fine, level), d)


def slo_demands(
    coarse: UtilityGrid, regrid: Callable[[np.ndarray, np.ndarray], UtilityGrid]
) -> np.ndarray:
    """Smallest allocation at which each job's utility reaches 1 (its SLO); inf where it never does."""
    reach = coarse.U[:, -1] >= 1.0 - 1e-9
    d = refine_demands(coarse, 1.0, regrid)
    return np.where(reach, d, np.inf)
