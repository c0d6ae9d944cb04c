"""Separable welfare in one sort: greedy on the segments of each job's upper concave envelope.

maximise sum_j V_j(x_j) s.t. sum_j x_j <= C, with each V_j known at grid points
X[j, 0] < X[j, 1] < ... (x_j starts at X[j, 0], its minimum). On the upper
concave envelope of each row the problem is a fractional knapsack: take the
envelope's segments in order of value per unit, steepest first, until the
capacity is used. Envelope slopes fall along a row, so every row takes a
prefix of its segments, and at most one segment is taken in part. That is
the exact optimum of the envelope problem (the price solve's answer, found by
one sort instead of bisection) and the exact optimum of the grid problem when
every row is concave.

A row that is not concave (a logistic job below its knee) may end inside a
chord of its envelope, where its true value lies below the chord. That job is
then settled both ways, at the chord's lower end with the capacity passed on
to the next segments, and at its upper end with the excess taken back from the
last segments taken, and the better of the two on the grid values is kept (the
classical greedy bound: within one job's envelope gap of the optimum).
"""

from __future__ import annotations

import numpy as np

#: A point is off the envelope when it lies below its neighbours' chord by more than this
#: (relative to the values' scale): float noise on a straight row must not split it.
HULL_TOL = 1e-12


def envelope_vertices(X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Mask (n, m) of the points on each row's upper concave envelope (ends always kept).

    A row whose slopes never rise is its own envelope. Otherwise, from an anchor
    (the row's first point), the next vertex is the point seen at the steepest
    slope (the farthest on ties); when the row is concave from there on, the rest
    are all vertices, else that point is the next anchor. A logistic row (convex,
    then concave) takes one step: the tangent from its start. Rows still open after
    ``TANGENT_STEPS`` finish by dropping points under their neighbours' chords.
    """
    keep = np.ones(X.shape, dtype=bool)
    rising, kr = _rising_envelopes(X, V)
    keep[rising] = kr
    return keep


def _rising_envelopes(
    X: np.ndarray, V: np.ndarray, dX: np.ndarray | None = None, dV: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose slopes rise somewhere, and their envelope masks (the other rows are
    their own envelopes). ``dX``, ``dV``: the rows' steps, when the caller has them."""
    n, m = X.shape
    if m < 3 or n == 0:
        return np.zeros(0, dtype=np.intp), np.ones((0, m), dtype=bool)
    dX = X[:, 1:] - X[:, :-1] if dX is None else dX
    dV = V[:, 1:] - V[:, :-1] if dV is None else dV
    step = dX > 0
    s = np.divide(dV, dX, out=np.zeros(dX.shape), where=step)
    tol = HULL_TOL * (1.0 + max(float(s.max()), -float(s.min())))
    if not step.all():  # a repeated point (-inf - -inf is nan below: no rise)
        np.copyto(s, -np.inf, where=~step)
    with np.errstate(invalid="ignore"):
        # rise[:, g]: the slope after point g + 1 exceeds the one before (-inf - -inf, a
        # repeated point, is nan: no rise).
        rise = s[:, 1:] - s[:, :-1] > tol
    rising = np.flatnonzero(rise.any(axis=1))
    if rising.size == 0:
        return rising, np.ones((0, m), dtype=bool)
    Xr, Vr = X[rising], V[rising]
    # concave_from[:, g]: no slope rises after point g (rise[:, g] is at point g + 1).
    r = rise[rising]
    late = np.concatenate([r, np.zeros((len(rising), 2), dtype=bool)], axis=1)  # pad to m
    concave_from = ~np.logical_or.accumulate(late[:, ::-1], axis=1)[:, ::-1]
    kr = np.zeros((len(rising), m), dtype=bool)
    anchor = np.zeros(len(rising), dtype=np.intp)
    open_ = np.arange(len(rising))
    cols = np.arange(m)
    for _ in range(TANGENT_STEPS):
        a = anchor[open_]
        xa = Xr[open_, a][:, None]
        va = Vr[open_, a][:, None]
        # Points right of the anchor: rows rise in X, so d > 0 is exactly those (and skips
        # repeated points).
        d = Xr[open_] - xa
        slope = np.full(d.shape, -np.inf)
        np.divide(Vr[open_] - va, d, out=slope, where=d > 0)
        t = m - 1 - np.argmax(slope[:, ::-1], axis=1)  # the farthest of the steepest
        kr[open_, a] = True
        done = concave_from[open_, t]
        tail = done[:, None] & (cols[None, :] >= t[:, None])
        kr[open_] |= tail
        kr[open_[~done], t[~done]] = True
        anchor[open_] = t
        open_ = open_[~done]
        if open_.size == 0:
            break
    if open_.size:
        kr[open_] = _drop_under_chords(Xr[open_], Vr[open_])
    return rising, kr


#: Tangent steps before a row falls back to chord dropping (a row with many bumps).
TANGENT_STEPS = 4


def _drop_under_chords(X: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Envelope by repeatedly dropping every point under its kept neighbours' chord: a
    dropped point lies under a chord between two points of the row, so it is never on the
    envelope, and dropping several at once is safe; what remains is concave."""
    n, m = X.shape
    kr = np.ones((n, m), dtype=bool)
    idx = np.arange(m)
    rows = np.arange(n)[:, None]
    sc = HULL_TOL * (1.0 + np.abs(V).max(axis=1, keepdims=True))
    for _ in range(m):
        prev = np.maximum.accumulate(np.where(kr, idx, -1), axis=1)
        prev = np.concatenate([np.full((n, 1), -1), prev[:, :-1]], axis=1)
        nxt = np.minimum.accumulate(np.where(kr, idx, m)[:, ::-1], axis=1)[:, ::-1]
        nxt = np.concatenate([nxt[:, 1:], np.full((n, 1), m)], axis=1)
        inner = kr & (prev >= 0) & (nxt < m)
        p, q = np.maximum(prev, 0), np.minimum(nxt, m - 1)
        xp, xq, vp, vq = X[rows, p], X[rows, q], V[rows, p], V[rows, q]
        # Under the chord p-q at X: (V - vp)(xq - xp) < (vq - vp)(X - xp), cross-multiplied.
        drop = inner & ((V - vp) * (xq - xp) < (vq - vp) * (X - xp) - sc * (xq - xp))
        if not drop.any():
            break
        kr &= ~drop
    return kr


def hull_greedy(X: np.ndarray, V: np.ndarray, capacity: float) -> np.ndarray:
    """Allocation per row maximising sum V on the rows' envelopes within ``capacity``
    (see the module doc): rows start at X[:, 0]; only segments that add value are taken."""
    return hull_solve(X, V, capacity)[0]


def hull_solve(X: np.ndarray, V: np.ndarray, capacity: float) -> tuple[np.ndarray, bool]:
    """``hull_greedy``'s allocation, and whether a job had to be settled at a chord's end.

    Without a settled chord the answer is the exact optimum on the grid: every job
    ends on its envelope where the envelope is the row itself, so the answer scores
    the envelope problem's optimum, which bounds the grid problem from above. With
    one, it is within that job's envelope gap: only then can a local search gain.
    """
    n, m = X.shape
    x0 = X[:, 0].copy()
    budget = capacity - float(x0.sum())
    if n == 0 or m < 2 or budget <= 0:
        return x0, False
    # Segments: consecutive grid points on rows that are their own envelopes (most rows),
    # consecutive envelope vertices on the others; only those that add value.
    dX, dV = X[:, 1:] - X[:, :-1], V[:, 1:] - V[:, :-1]
    rising, kr = _rising_envelopes(X, V, dX, dV)
    if rising.size:
        dX[rising] = 0.0
    flat = np.flatnonzero((dX > 0) & (dV > 0))
    row, c0 = np.divmod(flat, m - 1)
    width, gain, c1 = dX.ravel()[flat], dV.ravel()[flat], c0 + 1
    if rising.size:
        # Consecutive envelope vertices of each rising row, by flat index (one gather per
        # array instead of four two-dimensional ones).
        at = np.flatnonzero(kr)
        r, c = np.divmod(at, m)
        same = r[1:] == r[:-1]
        src = rising[r] * m + c
        xv, vv = X.ravel()[src], V.ravel()[src]
        w2, g2 = xv[1:] - xv[:-1], vv[1:] - vv[:-1]
        ok = same & (w2 > 0) & (g2 > 0)
        row = np.concatenate([row, rising[r[1:][ok]]])
        c0, c1 = np.concatenate([c0, c[:-1][ok]]), np.concatenate([c1, c[1:][ok]])
        width, gain = np.concatenate([width, w2[ok]]), np.concatenate([gain, g2[ok]])
    if row.size == 0:
        return x0, False
    # Steepest first. Within a row slopes fall, and equal slopes form one straight piece,
    # so the order among ties (unstable sort, 3x faster) changes neither amounts nor value.
    order = np.argsort(-(gain / width))
    cum = np.cumsum(width[order])
    k = int(np.searchsorted(cum, budget, side="right"))  # segments taken whole
    x = x0 + np.bincount(row[order[:k]], weights=width[order[:k]], minlength=n)
    if k < len(order):
        left = budget - (float(cum[k - 1]) if k else 0.0)
        s = order[k]
        if left > 0 and c1[s] - c0[s] == 1:  # a grid cell: the chord is the row's own line
            x[row[s]] += left
        elif left > 0:
            x = _settle_chord(X, V, x, int(row[s]), float(width[s]), left, order, k, row, width)
            return x, True
    return x, False


def _settle_chord(
    X: np.ndarray,
    V: np.ndarray,
    x: np.ndarray,
    j: int,
    seg: float,
    left: float,
    order: np.ndarray,
    k: int,
    row: np.ndarray,
    width: np.ndarray,
) -> np.ndarray:
    """Job j would end ``left`` into a chord of width ``seg``: take the better of its two ends."""
    others = row[order] != j
    # Down: j stays at the chord's start; the capacity goes on to the next segments of others.
    down = x.copy()
    rest = order[k + 1 :][others[k + 1 :]]
    cum = np.cumsum(width[rest])
    t = int(np.searchsorted(cum, left, side="right"))
    down += np.bincount(row[rest[:t]], weights=width[rest[:t]], minlength=len(x))
    if t < len(rest):
        down[row[rest[t]]] += left - (float(cum[t - 1]) if t else 0.0)
    # Up: j takes the whole chord; the excess comes back from the last segments taken.
    up = x.copy()
    up[j] += seg
    excess = seg - left
    back = order[:k][::-1][others[:k][::-1]]
    cum = np.cumsum(width[back])
    t = int(np.searchsorted(cum, excess, side="right"))
    if t == len(back) and (t == 0 or cum[-1] < excess - 1e-12):
        return down  # not enough taken elsewhere to make room
    up -= np.bincount(row[back[:t]], weights=width[back[:t]], minlength=len(x))
    if t < len(back):
        up[row[back[t]]] -= excess - (float(cum[t - 1]) if t else 0.0)
    return up if grid_value(X, V, up) > grid_value(X, V, down) else down


def grid_value(X: np.ndarray, V: np.ndarray, x: np.ndarray) -> float:
    """sum_j V_j(x_j), each row interpolated linearly between its grid points."""
    n, m = X.shape
    g = np.minimum(np.maximum((x[:, None] + 1e-12 >= X).sum(axis=1) - 1, 0), m - 2)
    r = np.arange(n)
    x0, x1 = X[r, g], X[r, g + 1]
    f = np.where(x1 > x0, (x - x0) / np.where(x1 > x0, x1 - x0, 1.0), 0.0)
    return float((V[r, g] + np.minimum(np.maximum(f, 0.0), 1.0) * (V[r, g + 1] - V[r, g])).sum())
