"""Erlang B and Erlang C, vectorized (pure numpy/scipy; no Ray, gRPC, clock or files).

The one implementation every queueing model in the project calls: the sim's
ground truth (``cluster_mgr.workloads``), the PIM emulator (``pim_agent.queueing``)
and the PIM planner (``allocators.pim.queue``). Inputs broadcast; ``c`` is the
server (core) count, ``a`` the offered load in Erlangs (arrival rate x mean
service time).

Erlang B is B(c, a) = a^c e^-a / Gamma(c + 1, a) with the upper incomplete gamma
function: exact at integer ``c`` (where it equals the classic recursion
B(k) = a B(k-1) / (k + a B(k-1)) to about 1e-13) and continuous and monotone in
a real-valued ``c``, so one formula serves integer core counts and the sim's real
allocations without a Python loop over servers. Where Gamma(c + 1, a)
underflows (``a`` some 700 above ``c``, an overloaded loss system) its
asymptotic series takes over.

A model that reads a fractional core count as the straight line between its
integer neighbours (the PIM emulator's cores warming up) uses ``*_linear``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import special

_TINY = 1e-300
_UNDERFLOW = 1e-280  # below this Gamma(c + 1, a) has lost its digits to subnormals
_SERIES_TERMS = 4000


def _inv_b_far_overloaded(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """1 / B for ``a`` far above ``c``: sum_j prod_{i<j} (c - i) / a (Gamma(c + 1, a)'s
    asymptotic series over a^c e^-a; finite, hence exact, at integer ``c``)."""
    total = np.ones_like(a)
    term = np.ones_like(a)
    for i in range(_SERIES_TERMS):
        term = term * (c - i) / a
        total = total + term
        if np.all(np.abs(term) <= 1e-17 * total):
            break
    return total


def erlang_b(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """P(all busy) of an Erlang loss system with ``c >= 0`` servers (real) and load ``a``.
    ``c = 0`` gives 1 (no server: everything is lost); ``a = 0`` gives 0 for ``c > 0``."""
    c = np.maximum(np.asarray(c, dtype=float), 0.0)
    a = np.maximum(np.asarray(a, dtype=float), _TINY)
    c, a = np.broadcast_arrays(c, a)
    q = special.gammaincc(c + 1.0, a)
    # In logs, so that hundreds of servers neither overflow nor underflow.
    log_b = c * np.log(a) - a - special.gammaln(c + 1.0) - np.log(np.maximum(q, _TINY))
    b = np.exp(np.minimum(log_b, 0.0))  # in (0, 1]
    far = q < _UNDERFLOW
    if far.any():
        b = b.copy()
        b[far] = 1.0 / _inv_b_far_overloaded(c[far], a[far])
    return b


def erlang_c_from_b(b: np.ndarray, c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """P(wait) of M/M/c from its Erlang B value: C = B / (1 - rho (1 - B)); 1 when the
    queue is unstable (``a >= c``) or has no server."""
    b = np.asarray(b, dtype=float)
    c = np.asarray(c, dtype=float)
    a = np.asarray(a, dtype=float)
    ok = (c > 0) & (a < c)
    rho = np.where(ok, a / np.where(c > 0, c, 1.0), 1.0)
    # C <= 1 in exact arithmetic; the minimum only trims rounding.
    return np.where(ok, np.minimum(b / np.maximum(1.0 - rho * (1.0 - b), _TINY), 1.0), 1.0)


def erlang_c(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Probability that an arrival waits in M/M/c (``c`` real, ``c >= 0``)."""
    return erlang_c_from_b(erlang_b(c, a), c, a)


def _linear(
    f: Callable[[np.ndarray, np.ndarray], np.ndarray], c: np.ndarray, a: np.ndarray
) -> np.ndarray:
    # Both integer neighbours in one call: the emulator calls this for every app every
    # interval, where numpy's per-call overhead is what costs.
    c = np.asarray(c, dtype=float)
    a = np.asarray(a, dtype=float)
    lo = np.floor(c)
    frac = c - lo
    both = f(np.stack([lo, lo + 1.0]), a)
    return np.where(frac < 1e-9, both[0], (1.0 - frac) * both[0] + frac * both[1])


def erlang_b_linear(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Erlang B for a fractional server count, linear between the neighbouring integers."""
    return _linear(erlang_b, c, a)


def erlang_c_linear(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Erlang C for a fractional server count, linear between the neighbouring integers."""
    return _linear(erlang_c, c, a)
