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
from allocators.solvers.hull import hull_greedy

PRICE_ITERS = 24  # the tie fill below absorbs the price's last bits
HINT_ITERS = 12  # from a bracket a factor 4 wide: 2^-12 of it, finer than the cold start's


def solve_price(
    grid: UtilityGrid,
    weights: np.ndarray,
    capacity: float,
    hint: float | None = None,
    prices: list[float] | None = None,
    iters: int = PRICE_ITERS,
) -> np.ndarray:
    """The allocation clearing ``capacity`` at one price (see the module doc).

    ``hint``: a price near the clearing one (a zoom pass re-solves close to the coarse
    solve's price): when [hint / 2, hint * 2] brackets the clearing price, bisection
    starts there, with fewer steps. ``prices``, if given, receives the clearing price.
    ``iters``: bisection steps from a cold start (fewer when a later pass refines).
    """
    X = grid.X
    V = weights[:, None] * grid.U
    n = X.shape[0]
    if n == 0:
        return np.zeros(0)
    rows = np.arange(n)
    if X[:, 0].sum() > capacity + 1e-9:
        raise ValueError("grid starts above capacity")

    pick = _picker(X, V)
    g_lo = pick(0.0)  # demand at the low end of the bracket (above capacity) ...
    if X[rows, g_lo].sum() <= capacity:
        return X[rows, g_lo]
    g_hi = None  # ... and at the high end (within capacity)
    if hint is not None and hint > 0:
        g_a, g_b = pick(hint / 2), pick(hint * 2)
        if X[rows, g_a].sum() > capacity >= X[rows, g_b].sum():
            p_lo, p_hi, iters, g_lo, g_hi = hint / 2, hint * 2, HINT_ITERS, g_a, g_b
    if g_hi is None:
        dx = X[:, 1:] - X[:, :1]
        slope = np.where(dx > 0, (V[:, 1:] - V[:, :1]) / np.where(dx > 0, dx, 1.0), 0.0)
        p_lo, p_hi = 0.0, float(slope.max()) * 1.01 + 1e-12
        g_hi = pick(p_hi)
    for _ in range(iters):
        # Once at most one job's choice differs across the bracket, the tie fill below
        # places it exactly: more bisection would not change the allocation.
        if np.count_nonzero(g_lo != g_hi) <= 1:
            break
        p = 0.5 * (p_lo + p_hi)
        g = pick(p)
        if X[rows, g].sum() > capacity:
            p_lo, g_lo = p, g
        else:
            p_hi, g_hi = p, g
    if prices is not None:
        prices.append(p_hi)
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


def _picker(X: np.ndarray, V: np.ndarray) -> Callable[[float], np.ndarray]:
    """price -> per job, the first grid point maximising V - price * X (the smallest such x).

    On a row whose slopes never rise (a concave row, most of them), that point is the
    count of segments steeper than the price: one comparison per point, where the argmax
    needs a product, a difference and a scan. Other rows take the argmax.
    """
    dx = np.diff(X, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A row of one point (b = 0) has no segment to climb: slopes -inf, count 0.
        S = np.where(dx > 0, np.diff(V, axis=1) / np.where(dx > 0, dx, 1.0), -np.inf)
        rises = np.diff(S, axis=1) > 0  # -inf - -inf is nan, which does not rise
    conc = np.flatnonzero(~rises.any(axis=1)) if S.shape[1] > 1 else None
    if conc is None or len(conc) < 0.5 * len(X):

        def argmax_pick(price: float) -> np.ndarray:
            return np.argmax(V - price * X, axis=1)

        return argmax_pick
    other = np.setdiff1d(np.arange(len(X)), conc)
    Sc, Vo, Xo = S[conc], V[other], X[other]

    def pick(price: float) -> np.ndarray:
        g = np.empty(len(X), dtype=np.intp)
        g[conc] = np.count_nonzero(Sc > price, axis=1)
        if len(other):
            g[other] = np.argmax(Vo - price * Xo, axis=1)
        return g

    return pick


def solve_zoomed(
    coarse: UtilityGrid,
    weights: np.ndarray,
    capacity: float,
    refine: Callable[[np.ndarray, np.ndarray], UtilityGrid] | None,
    keep: list[UtilityGrid] | None = None,
    passes: int = 1,
    x: np.ndarray | None = None,
    iters: int = PRICE_ITERS,
) -> np.ndarray:
    """Solve on the coarse grid, then ``passes`` times more, each on a finer grid spanning
    each job's bracket (the grid points either side of its solution) on the grid before.

    Each pass is one query of every job at a few points near its marginal-utility crossing,
    so the precision grows geometrically with the passes while the query count stays small.
    ``keep``, if given, receives each fine grid (for rounding decisions near the solution);
    ``x`` is the coarse solution when the caller already has it; ``iters`` the coarse
    solve's bisection steps.
    """
    prices: list[float] = []
    if x is None:
        x = solve_price(coarse, weights, capacity, prices=prices, iters=iters)
    if refine is None or len(x) == 0:
        return x
    grid = coarse
    for _ in range(passes):
        a, b = bracket(grid, x)
        if a.sum() > capacity:  # cannot happen (a <= x) but keep the solve well-posed
            return x
        fine = refine(a, b)
        if keep is not None:
            keep.append(fine)
        x2 = solve_price(fine, weights, capacity, prices[-1] if prices else None, prices)
        # Keep the better of the two on the fine grid (the fine grid contains x's bracket).
        if (weights * fine.value(x2)).sum() >= (weights * fine.value(x)).sum() - 1e-12:
            x = x2
        grid = fine
    return x


def solve_lattice(
    refine: Callable[[np.ndarray, np.ndarray, np.ndarray | None], UtilityGrid],
    x: np.ndarray,
    weights: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    capacity: float,
    quantum: float,
    half: int = 8,
    keep: list[UtilityGrid] | None = None,
    recenter: int = 1,
) -> np.ndarray:
    """Whole quanta near ``x`` (a continuous solution), chosen exactly on the models.

    One query (``refine(start, width, None)``, a grid of ``2 * half + 1`` evenly
    spaced points) reads every job at ``2 * half + 1`` consecutive quanta around its
    ``x``; then each job starts at the lowest quantum of its window and the
    capacity goes by one sort to the steepest segments of the windows' concave
    envelopes (``hull_greedy``): the exact greedy for concave utilities, and
    within one job's envelope gap otherwise, where rounding a continuous
    solution and then exchanging single quanta needed a pass per quantum of
    error. A job whose choice lands on its window's edge (not at a bound) gets
    its window re-centred and read again (``refine(start, width, rows)`` for those
    jobs only: the others' windows stand), ``recenter`` times at most. ``keep``
    receives the window grids. Amounts are multiples of the quantum within
    [lo, hi] (a job whose bounds hold no multiple keeps ``x``).
    """
    q = quantum
    k_min = np.ceil(lo / q - 1e-9)  # the lowest and highest whole quanta inside the bounds
    k_max = np.floor(hi / q + 1e-9)
    ok = k_min <= k_max
    if not ok.all() or len(x) == 0:
        return x
    centre = np.clip(np.floor(x / q + 1e-9), k_min, k_max)
    width = 2 * half
    span = np.full(len(x), width * q)
    # The window [start, start + width] in quanta, kept inside the bounds where it fits.
    start = np.maximum(np.minimum(centre - half, k_max - width), k_min)
    grid = refine(start * q, span, None)
    for attempt in range(recenter + 1):
        if keep is not None:
            keep.append(grid)
        top = np.minimum(start + width, k_max) - start  # last usable offset per job
        # Offsets past a job's bound stay flat (no gain), so nothing is taken there.
        U = np.where(np.arange(width + 1)[None, :] <= top[:, None], grid.U, -np.inf)
        U = np.maximum.accumulate(U, axis=1)
        # The exact greedy on each window's envelope (one sort): whole quanta at the
        # vertices, at most one job part-way along a segment (floored to whole quanta).
        xs = hull_greedy(grid.X, weights[:, None] * U, capacity)
        take = np.clip(np.floor((xs - start * q) / q + 1e-9), 0, top)
        k = start + take
        edge = ((take == 0) & (start > k_min)) | ((take == top) & (start + top < k_max))
        if attempt == recenter or not edge.any():
            break
        moved = np.flatnonzero(edge)
        start[moved] = np.maximum(np.minimum(k[moved] - half, k_max[moved] - width), k_min[moved])
        part = refine(start[moved] * q, span[moved], moved)
        a, U = grid.a.copy(), grid.U.copy()
        a[moved], U[moved] = part.a, part.U
        grid = UtilityGrid(a, span, grid.T, U)
    return k * q


def bracket(grid: UtilityGrid, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per job, (start, width) of the span from the grid point below x to the one above."""
    X = grid.X
    t = np.where(grid.b > 0, (x - grid.a) / np.where(grid.b > 0, grid.b, 1.0), 0.0)
    idx = np.searchsorted(grid.T, t, side="left")
    rows = np.arange(len(x))
    lo_i = np.clip(idx - 1, 0, X.shape[1] - 1)
    hi_i = np.clip(idx + 1, 0, X.shape[1] - 1)
    a = np.minimum(X[rows, lo_i], x)
    return a, np.maximum(X[rows, hi_i], x) - a


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
    """Pairwise transfers on a separable objective, all step sizes scored in one batch.

    On non-concave utilities the price solution can leave one job inside an
    envelope segment, holding resources that buy little (a logistic job below
    its knee); after rounding to quanta, a quantum can sit where it buys less
    than elsewhere. For step sizes from ``start_step`` (default: the widest
    range) down to the quantum (a factor 4 apart), a donor gives a step (or,
    unless ``whole``, all it has above its minimum when that is less; or idle
    capacity) to the receiver that gains most from that exact amount. Each
    round reads every job's value at every step down (one batched call), then
    the receivers' values at the two cheapest donors' amounts per step (a
    second), makes the move of largest net gain over all steps, and confirms it
    (a third): three calls per move, where stepping through the sizes one at a
    time cost five per size. ``value`` maps allocations (n,) or (b, n) to
    per-job utilities. With ``whole`` every move is exactly one step.
    """
    x = x.copy()
    n = len(x)
    if n == 0:
        return x
    top = max(float(np.max(hi - lo)), quantum) if start_step is None else start_step
    steps = []
    while top >= quantum - 1e-12:
        steps.append(top)
        top /= 4.0
    if not steps:
        return x
    S = np.array(steps)[:, None]
    u = value(x)
    welfare = float(weights @ u)
    for _ in range(max_moves):
        give = np.minimum(S, x - lo)  # (levels, n)
        if whole:
            give = np.where(give >= S - 1e-9, S, 0.0)
        U_dn = value(x - give)
        loss = weights * (u - U_dn)
        per_unit = np.where(give > 1e-12, loss / np.maximum(give, 1e-12), np.inf)
        donors = np.argsort(per_unit, axis=1, kind="stable")[:, :2]  # (levels, 2)
        idle = capacity - float(x.sum())
        # Candidate (level, donor, amount): the two cheapest donors per level, and idle capacity.
        cand: list[tuple[int, int, float]] = []
        for lv, step in enumerate(steps):
            if idle > 1e-12 and (not whole or idle >= step - 1e-9):
                cand.append((lv, -2, min(step, idle)))
            for d in donors[lv]:
                amt = float(give[lv, d])
                if amt > 1e-12 and not (whole and amt < step - 1e-9):
                    cand.append((lv, int(d), amt))
        if not cand:
            break
        amts = np.array([c[2] for c in cand])[:, None]
        room = np.minimum(amts, hi - x)  # (cands, n)
        if whole:
            room = np.where(room >= amts - 1e-9, amts, 0.0)
        gain = weights * (value(x + room) - u)
        gain = np.where(room > 1e-12, gain, -np.inf)
        dcol = np.array([c[1] for c in cand])
        own = dcol >= 0
        gain[np.flatnonzero(own), dcol[own]] = -np.inf  # a donor does not receive
        r = np.argmax(gain, axis=1)
        rows = np.arange(len(cand))
        lost = np.where(own, loss[[c[0] for c in cand], np.maximum(dcol, 0)], 0.0)
        net = gain[rows, r] - lost * room[rows, r] / amts[:, 0]
        net = np.where(room[rows, r] > 1e-12, net, -np.inf)
        best = int(np.argmax(net))
        if not net[best] > 1e-12:
            break
        y = x.copy()
        amt = float(room[best, r[best]])
        y[r[best]] += amt
        if dcol[best] >= 0:
            y[dcol[best]] -= amt
        if amt < amts[best, 0] - 1e-12 and dcol[best] >= 0:
            # The receiver took less than the donor offered: the donor's loss was pro rata,
            # so read the move's welfare before taking it.
            u_y = value(y)
            w_y = float(weights @ u_y)
            if w_y <= welfare + 1e-12:
                break
        else:  # separable: the move changes welfare by exactly its net gain
            u_y = u.copy()
            u_y[r[best]] += gain[best, r[best]] / weights[r[best]]
            if dcol[best] >= 0:
                u_y[dcol[best]] = U_dn[cand[best][0], dcol[best]]
            w_y = welfare + float(net[best])
        x, u, welfare = y, u_y, w_y
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
    both), so the pass raises welfare by exactly the sum of those net gains and
    needs no re-evaluation; the utilities after it are read off the same two
    queries. A few passes settle rounding at kinks; O(n log n) per pass.
    """
    x = x.copy()
    u = value(x)
    for _ in range(passes):
        can_up = x + quantum <= hi + 1e-9
        can_dn = x - quantum >= lo - 1e-9
        x_up, x_dn = np.minimum(x + quantum, hi), np.maximum(x - quantum, lo)
        u_up, u_dn = value(x_up), value(x_dn)
        gain = np.where(can_up, weights * (u_up - u), -np.inf)
        loss = np.where(can_dn, weights * (u - u_dn), np.inf)
        r = np.argsort(-gain, kind="stable")
        d = np.argsort(loss, kind="stable")
        k = int(np.sum(gain[r] - loss[d] > 1e-12))
        if k == 0:
            break
        r, d = r[:k], d[:k]
        # A job in both lists would give and take: drop its pairs (masks, not set operations).
        both = np.zeros(len(x), dtype=bool)
        both[r] = True
        seen = np.zeros(len(x), dtype=bool)
        seen[d] = True
        both &= seen
        if both.any():
            keep = ~both[r] & ~both[d]
            r, d = r[keep], d[keep]
        if r.size == 0 or float((gain[r] - loss[d]).sum()) <= 1e-12:
            break
        x[r], u[r] = x_up[r], u_up[r]
        x[d], u[d] = x_dn[d], u_dn[d]
    return x
