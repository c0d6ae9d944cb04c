"""Weighted water-filling: divide a capacity in proportion to weights within [lo, hi] bounds.

Pure and exact: the level ``t`` such that sum_j clip(w_j * t, lo_j, hi_j) equals
the capacity. That sum is piecewise linear and non-decreasing in t, with
breakpoints at lo_j / w_j and hi_j / w_j, so one sort of the breakpoints and
cumulative sums find the segment that holds the capacity and a division solves
it (O(n log n), a handful of array passes: the evolutionary search repairs 40
candidates with it, and bisection's 100 passes were a third of that search's time).
"""

from __future__ import annotations

import numpy as np


def waterfill(capacity: float, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    if np.any(weights <= 0):
        raise ValueError("weights must be > 0")
    if np.any(lo > hi + 1e-12):
        raise ValueError("every lower bound must be at most its upper bound")
    if lo.sum() > capacity + 1e-9:
        raise ValueError(f"lower bounds ({lo.sum():.6g}) exceed capacity ({capacity:.6g})")
    hi = np.maximum(hi, lo)
    if np.isfinite(hi).all() and hi.sum() <= capacity:
        return hi.copy()
    t = _level(capacity, weights, lo, hi)
    out = np.clip(weights * t, lo, hi)
    # Rounding in the level can overshoot by a few ulps; never hand out more than there is.
    over = out.sum() - capacity
    if over > 0:
        free = out - lo
        out = out - over * free / max(float(free.sum()), 1e-300)
        out = np.maximum(out, lo)
    return out


def _level(capacity: float, w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """The largest t with sum_j clip(w_j t, lo_j, hi_j) <= capacity (the sum is piecewise linear)."""
    start, stop = lo / w, hi / w  # job j rises with slope w_j on [start_j, stop_j]
    finite = np.isfinite(stop)
    # Breakpoints in order; at each, the sum's slope changes by +w (start) or -w (stop).
    pts = np.concatenate((start, stop[finite]))
    dslope = np.concatenate((w, -w[finite]))
    order = np.argsort(pts, kind="stable")
    pts, dslope = pts[order], dslope[order]
    slope = np.cumsum(dslope)  # slope just after each breakpoint
    # Sum at each breakpoint: the sum at t = 0 (every job at lo, since w t <= lo there when
    # t <= min start) plus the integral of the slope between breakpoints.
    base = float(lo.sum())
    seg = np.diff(pts, prepend=pts[0]) * np.concatenate(([0.0], slope[:-1]))
    total = base + np.cumsum(seg)
    k = int(np.searchsorted(total, capacity, side="right")) - 1  # last breakpoint at or below
    if k < 0:
        return float(pts[0])
    s = slope[k]
    if s <= 0:
        return float(pts[k]) if k == len(pts) - 1 else float(pts[k])
    t = float(pts[k]) + (capacity - float(total[k])) / float(s)
    if k + 1 < len(pts):
        t = min(t, float(pts[k + 1]))
    return t
