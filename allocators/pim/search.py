"""Exact search over joint core assignments by dynamic programming (pure numpy).

Apps are added one at a time over a state grid of resources used so far (big
cores, PIM cores per stack, the latter in units of the planner's quantum). Each
app has options (resource usage vectors) with a score. Two passes:
``min_max`` finds the assignment minimising the worst score (the bottleneck
app's P99 / SLO); ``min_sum`` finds the cheapest assignment whose every score
stays within a bound. Both are exact over the options given. Transitions
(state, option) -> state are precomputed once per grid as flat index arrays, so
one app's step is a handful of vector operations.
"""

from __future__ import annotations

import functools

import numpy as np

BIG = 1e6


@functools.lru_cache(maxsize=8)
def _pairs(usage_key: bytes, n_opts: int, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    usage = np.frombuffer(usage_key, dtype=np.int64).reshape(n_opts, len(shape))
    states = np.array(np.unravel_index(np.arange(int(np.prod(shape))), shape)).T  # (S, d)
    dest = states[:, None, :] + usage[None, :, :]  # (S, O, d)
    ok = (dest < np.asarray(shape)).all(axis=2)
    s_idx, o_idx = np.nonzero(ok)
    d_idx = np.ravel_multi_index(tuple(dest[s_idx, o_idx].T), shape)
    return s_idx, o_idx, d_idx


def _run(
    usage: np.ndarray, values: list[np.ndarray], shape: tuple[int, ...], combine: str
) -> tuple[float, list[int]]:
    usage = np.ascontiguousarray(usage, dtype=np.int64)
    s_idx, o_idx, d_idx = _pairs(usage.tobytes(), len(usage), shape)
    size = int(np.prod(shape))
    val = np.full(size, np.inf)
    val[0] = 0.0
    choices = []
    for vals in values:
        live = np.isfinite(val[s_idx]) & np.isfinite(vals[o_idx])
        s, o, d = s_idx[live], o_idx[live], d_idx[live]
        cand = np.maximum(val[s], vals[o]) if combine == "max" else val[s] + vals[o]
        new = np.full(size, np.inf)
        np.minimum.at(new, d, cand)
        arg = np.full(size, -1, dtype=np.int64)
        hit = cand <= new[d]
        arg[d[hit]] = o[hit]
        val = new
        choices.append(arg)
    best = float(val.min())
    if not np.isfinite(best):
        return best, []
    pos = np.array(np.unravel_index(int(val.argmin()), shape))
    picked = []
    for arg in reversed(choices):
        j = int(arg[np.ravel_multi_index(tuple(pos), shape)])
        picked.append(j)
        pos = pos - usage[j]
    return best, picked[::-1]


def min_max(
    usage: np.ndarray, scores: list[np.ndarray], shape: tuple[int, ...]
) -> tuple[float, list[int]]:
    """Options of every app share one usage table; ``scores[i]`` are app i's."""
    return _run(usage, [np.minimum(s, BIG) for s in scores], shape, "max")


def min_sum(
    usage: np.ndarray,
    scores: list[np.ndarray],
    costs: list[np.ndarray],
    bound: float,
    shape: tuple[int, ...],
) -> tuple[float, list[int]]:
    vals = [np.where(s <= bound, c, np.inf) for s, c in zip(scores, costs, strict=True)]
    return _run(usage, vals, shape, "sum")
