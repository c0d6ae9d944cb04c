"""Weighted water-filling: divide a capacity in proportion to weights within [lo, hi] bounds.

Pure and exact: the level ``t`` such that sum_j clip(w_j * t, lo_j, hi_j) equals
the capacity is found by bisection (the sum is monotone in t).
"""

from __future__ import annotations

import numpy as np


def waterfill(
    capacity: float, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray, iters: int = 100
) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    if np.any(weights <= 0):
        raise ValueError("weights must be > 0")
    if np.any(lo > hi + 1e-12):
        raise ValueError("every lower bound must be at most its upper bound")
    if lo.sum() > capacity + 1e-9:
        raise ValueError(f"lower bounds ({lo.sum():.6g}) exceed capacity ({capacity:.6g})")
    finite_hi = np.where(np.isfinite(hi), hi, np.inf)
    if np.isfinite(finite_hi).all() and finite_hi.sum() <= capacity:
        return finite_hi.copy()
    t_lo, t_hi = 0.0, max(capacity, 1.0) / weights.min() + (lo / weights).max()
    for _ in range(iters):
        t = 0.5 * (t_lo + t_hi)
        if np.clip(weights * t, lo, finite_hi).sum() > capacity:
            t_hi = t
        else:
            t_lo = t
    return np.clip(weights * t_lo, lo, finite_hi)
