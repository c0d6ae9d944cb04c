"""Separable welfare: maximise sum_j w_j U_j(x_j) s.t. sum_j x_j <= C, x_j in [a_j, a_j + b_j].

Price bisection (a Lagrangian dual): at price p every job picks the grid point
maximising w_j U_j(x) - p x. Those picks lie on the upper concave envelope of
U_j, and total demand falls as p rises, so bisection finds the price that
clears the capacity. Jobs indifferent at that price (on an envelope segment)
take the rest, whole segments first, so at most one job sits inside a
segment. Exact for concave U on the grid; otherwise within one job's envelope
gap (the classical bound for greedy on non-concave separable problems), and
the zoom pass of ``solve_zoomed`` then refines on a fine grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from allocators.problem import UtilityGrid

PRICE_ITERS = 24  # the tie fill below absorbs the price's last bits


def solve_price(grid: UtilityGrid, weights: np.ndarray, capacity: float) -> np.ndarray:
    X = grid.X
    V = weights[:, None] * grid.U
    n = X.shape[0]
    if n == 0:
        return np.zeros(0)
    rows = np.arange(n)
    if X[:, 0].sum() > capacity + 1e-9:
        raise ValueError("grid starts above capacity")

    def pick(price: float) -> np.ndarray:
        return np.argmax(V - price * X, axis=1)  # first maximum: the smallest such x

    g0 = pick(0.0)
    if X[rows, g0].sum() <= capacity:
        return X[rows, g0]
    dx = X[:, 1:] - X[:, :1]
    slope = np.where(dx > 0, (V[:, 1:] - V[:, :1]) / np.where(dx > 0, dx, 1.0), 0.0)
    p_lo, p_hi = 0.0, float(slope.max()) * 1.01 + 1e-12
    for _ in range(PRICE_ITERS):
        p = 0.5 * (p_lo + p_hi)
        if X[rows, pick(p)].sum() > capacity:
            p_lo = p
        else:
            p_hi = p
    g_hi, g_lo = pick(p_hi), pick(p_lo)  # demand just above / just below the clearing price
    x = X[rows, g_hi].copy()
    left = capacity - x.sum()
    tied = np.flatnonzero(g_lo != g_hi)
    step = X[tied, g_lo[tied]] - x[tied]
    # Whole segments first (largest value per unit first), so at most one job ends mid-segment.
    gain = (V[tied, g_lo[tied]] - V[tied, g_hi[tied]]) / np.maximum(step, 1e-12)
    for k in np.argsort(-gain, kind="stable"):
        if left <= 1e-12:
            break
        take = min(step[k], left)
        x[tied[k]] += take
        left -= take
    return x


def solve_zoomed(
    coarse: UtilityGrid,
    weights: np.ndarray,
    capacity: float,
    refine: Callable[[np.ndarray, np.ndarray], UtilityGrid] | None,
    keep: list[UtilityGrid] | None = None,
) -> np.ndarray:
    """Solve on the coarse grid, then once more on a fine grid spanning each job's bracket.

    ``keep``, if given, receives the fine grid (for rounding decisions near the solution).
    """
    x = solve_price(coarse, weights, capacity)
    if refine is None or len(x) == 0:
        return x
    X = coarse.X
    t = np.where(coarse.b > 0, (x - coarse.a) / np.where(coarse.b > 0, coarse.b, 1.0), 0.0)
    idx = np.searchsorted(coarse.T, t, side="left")
    rows = np.arange(len(x))
    lo_i = np.clip(idx - 1, 0, X.shape[1] - 1)
    hi_i = np.clip(idx + 1, 0, X.shape[1] - 1)
    a = np.minimum(X[rows, lo_i], x)
    b = np.maximum(X[rows, hi_i], x) - a
    if a.sum() > capacity:  # cannot happen (a <= x) but keep the solve well-posed
        return x
    fine = refine(a, b)
    if keep is not None:
        keep.append(fine)
    x2 = solve_price(fine, weights, capacity)
    # Keep the better of the two on the fine grid (the fine grid contains x's bracket).
    better = (weights * fine.value(x2)).sum() >= (weights * fine.value(x)).sum() - 1e-12
    return x2 if better else x


def concave_rows(grid: UtilityGrid, tol: float = 1e-9) -> bool:
    """True when every job's grid utility is concave (slopes never rise along the grid)."""
    X, U = grid.X, grid.U
    dx = np.diff(X, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(dx > 1e-12, np.diff(U, axis=1) / np.where(dx > 1e-12, dx, 1.0), np.nan)
    rises = np.diff(slope, axis=1) > tol * (1.0 + np.abs(slope[:, :-1]))
    return not bool(np.any(np.nan_to_num(rises, nan=0.0)))


def polish(
    value: Callable[[np.ndarray], np.ndarray],
    weights: np.ndarray,
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    capacity: float,
    quantum: float,
    start_step: float | None = None,
    whole: bool = False,
    max_moves: int = 200,
) -> np.ndarray:
    """Pairwise transfers on a separable objective, O(n) per move.

    On non-concave utilities the price solution can leave one job inside an
    envelope segment, holding resources that buy little (a logistic job below
    its knee); after rounding to quanta, a quantum can sit where it buys less
    than elsewhere. For step sizes from ``start_step`` (default: the widest
    range) down to the quantum, this moves a donor's step (or, unless
    ``whole``, all it has above its minimum; or idle capacity) to the receiver
    that gains most from that exact amount, while welfare rises. ``value``
    maps allocations (n,) to per-job utilities. With ``whole`` every move is
    exactly one step, so quanta stay quanta.
    """
    x = x.copy()
    n = len(x)
    if n == 0:
        return x
    step = max(float(np.max(hi - lo)), quantum) if start_step is None else start_step
    moves = 0
    while step >= quantum - 1e-12 and moves < max_moves:
        u = value(x)
        give = np.minimum(step, x - lo)
        if whole:
            give = np.where(give >= step - 1e-9, step, 0.0)
        loss = weights * (u - value(x - give))
        per_unit = np.where(give > 1e-12, loss / np.maximum(give, 1e-12), np.inf)
        donors = list(np.argsort(per_unit, kind="stable")[:2])
        idle = capacity - x.sum()
        best = (1e-12, -1, -1, 0.0)  # (net gain, donor (-2 = idle), receiver, amount)
        for d in [-2, *donors]:
            amt = min(step, idle) if d == -2 else float(give[d])
            if amt <= 1e-12 or (whole and amt < step - 1e-9):
                continue
            room = np.minimum(amt, hi - x)
            if whole:
                room = np.where(room >= amt - 1e-9, amt, 0.0)
            gain = weights * (value(x + room) - u)
            gain = np.where(room > 1e-12, gain, -np.inf)
            if d >= 0:
                gain[d] = -np.inf
            r = int(np.argmax(gain))
            net = gain[r] - (0.0 if d == -2 else loss[d] * room[r] / max(amt, 1e-12))
            if room[r] > 1e-12 and net > best[0]:
                best = (float(net), int(d), r, float(room[r]))
        if best[1] == -1:
            step /= 4.0  # coarse steps first; the final quantum exchange does the fine work
            continue
        _, d, r, amt = best
        y = x.copy()
        y[r] += amt
        if d >= 0:
            y[d] -= amt
        if weights @ value(y) > weights @ value(x) + 1e-12:
            x = y
            moves += 1
        else:
            step /= 4.0
    return x


def exchange_quanta(
    value: Callable[[np.ndarray], np.ndarray],
    weights: np.ndarray,
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    quantum: float,
    passes: int = 8,
) -> np.ndarray:
    """Swap single quanta from the cheapest donors to the best receivers, in batches.

    Separability makes the swaps independent: in one pass the k-th best
    receiver takes a quantum from the k-th cheapest donor for every k where the
    receiver's gain beats the donor's loss (a job is donor or receiver, not
    both). A few passes settle rounding at kinks; O(n log n) per pass.
    """
    x = x.copy()
    for _ in range(passes):
        u = value(x)
        can_up = x + quantum <= hi + 1e-9
        can_dn = x - quantum >= lo - 1e-9
        gain = np.where(can_up, weights * (value(np.minimum(x + quantum, hi)) - u), -np.inf)
        loss = np.where(can_dn, weights * (u - value(np.maximum(x - quantum, lo))), np.inf)
        r = np.argsort(-gain, kind="stable")
        d = np.argsort(loss, kind="stable")
        k = int(np.sum(gain[r] - loss[d] > 1e-12))
        if k == 0:
            break
        r, d = r[:k], d[:k]
        both = np.intersect1d(r, d)
        keep = ~np.isin(r, both) & ~np.isin(d, both)
        r, d = r[keep], d[keep]
        if r.size == 0:
            break
        y = x.copy()
        y[r] += quantum
        y[d] -= quantum
        if weights @ value(y) <= weights @ value(x) + 1e-12:
            break
        x = y
    return x
