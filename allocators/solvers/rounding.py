"""Quanta without lost capacity: floor to the quantum, then hand the left-over quanta out.

Flooring every job loses up to one quantum per job (100 CPUs over 1,000 jobs at
0.1 CPU), so the quanta left are given back one each, to the jobs that gain the
most from one more (``gain``), else to the largest fractional remainders.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def quantize(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    capacity: float,
    quantum: float,
    gain: np.ndarray | None = None,
) -> np.ndarray:
    """Multiples of ``quantum`` (or a job's own bound) summing to at most ``capacity``.

    ``gain[j]`` ranks who gets a left-over quantum (higher first); None ranks by the
    fractional part lost to flooring, which keeps proportions (largest remainder).
    """
    if len(x) == 0:
        return x.copy()
    if quantum <= 0:
        return np.clip(x, lo, hi)
    base = np.floor(x / quantum + EPS) * quantum
    base = np.clip(base, lo, hi)
    base = np.where(hi - x < EPS, hi, base)  # a job at its maximum keeps it exactly
    left = int(np.floor((capacity - base.sum()) / quantum + EPS))
    if left <= 0:
        return base
    room = (
        (base + quantum <= hi + EPS) & (x - base > EPS)
        if gain is None
        else base + quantum <= hi + EPS
    )
    key = (x - base) if gain is None else gain
    cand = np.flatnonzero(room)
    if gain is not None:
        cand = cand[key[cand] > EPS]
    chosen = cand[np.argsort(-key[cand], kind="stable")[:left]]
    out = base.copy()
    out[chosen] += quantum
    return out


def spread(
    x: np.ndarray,
    hi: np.ndarray,
    weights: np.ndarray,
    capacity: float,
    quantum: float,
) -> np.ndarray:
    """Give capacity left idle to jobs below their maximum, by weight (water-filling above x).

    Used after a solve once no job's utility rises any more: leaving it idle would
    waste it should a model be too pessimistic, and giving it costs nothing.
    """
    from allocators.waterfill import waterfill

    room = hi - x
    if len(x) == 0 or capacity - x.sum() < quantum - EPS or not np.any(room > EPS):
        return x
    target = waterfill(min(capacity, float(hi.sum())), weights, x, hi)
    return quantize(target, x, hi, capacity, quantum)


def integral(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, capacity: float) -> np.ndarray:
    """Whole units (pim_cores): floor, then the remainders by largest fractional part."""
    return quantize(x, np.ceil(lo - EPS), np.floor(hi + EPS), np.floor(capacity + EPS), 1.0)
