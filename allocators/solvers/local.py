"""Local search by batched pairwise transfers, for objectives with no exact method.

Utilities are separable in the allocation even when the objective is not, so
the search works in utility space: per iteration it reads every job's utility
at x, x + step and x - step (three vectorized grid reads), scores the objective
with each job's utility changed alone (two batches of n rows), then tries
moving ``step`` from the k cheapest donors to the k best receivers for
k = 1, 2, 4, ... and keeps the best move that improves. When none improves the
step halves, down to the quantum. Deterministic; at most ``max_iters`` iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Welfare = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (U rows, X rows) (b, n) -> (b,)
Utility = Callable[[np.ndarray], np.ndarray]  # x (n,) or (b, n) -> utilities, same shape


def local_search(
    welfare: Welfare,
    utility: Utility,
    x0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    quantum: float,
    max_iters: int = 40,
    start_step: float | None = None,
) -> np.ndarray:
    x = np.clip(np.asarray(x0, dtype=float).copy(), lo, hi)
    n = len(x)
    if n < 2:
        return x
    u = utility(x)
    best = float(welfare(u[None, :], x[None, :])[0])
    step = max(float(np.max(hi - lo)) / 8.0 if start_step is None else start_step, quantum)
    diag = np.arange(n)
    for _ in range(max_iters):
        if step < quantum - 1e-12:
            break
        up = np.minimum(x + step, hi) - x
        down = x - np.maximum(x - step, lo)
        u_up, u_dn = utility(x + up), utility(x - down)
        U = np.tile(u, (2 * n, 1))
        X = np.tile(x, (2 * n, 1))
        U[diag, diag], X[diag, diag] = u_up, x + up
        U[n + diag, diag], X[n + diag, diag] = u_dn, x - down
        vals = welfare(U, X)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain_up = np.where(up > 1e-12, (vals[:n] - best) / up, -np.inf)
            loss_dn = np.where(down > 1e-12, (best - vals[n:]) / down, np.inf)
        receivers = np.argsort(-gain_up, kind="stable")
        donors = np.argsort(loss_dn, kind="stable")
        moves = []
        k = 1
        while k <= n // 2:
            r, d = receivers[:k], donors[:k]
            if np.intersect1d(r, d).size == 0:
                amt = np.minimum(up[r], down[d])
                y = x.copy()
                y[r] += amt
                y[d] -= amt
                moves.append(y)
            k *= 2
        improved = False
        if moves:
            ys = np.vstack(moves)
            us = utility(ys)
            vs = welfare(us, ys)
            i = int(np.argmax(vs))
            if vs[i] > best + 1e-12:
                x, u, best, improved = ys[i], us[i], float(vs[i]), True
        if not improved:
            step /= 2.0
    return x


def frank_wolfe(
    welfare: Welfare,
    utility: Utility,
    linear: Callable[[np.ndarray], np.ndarray],
    x0: np.ndarray,
    max_iters: int = 12,
    h: float = 1e-4,
) -> np.ndarray:
    """Conditional gradient for a non-separable welfare of per-job utilities.

    Each iteration reads the welfare's gradient in utility space (one batch of n
    rows, each job's utility raised by ``h``), solves the separable problem with
    those gradients as weights (``linear(g)``: the exact price solver), and moves
    towards that solution by the best of a few step fractions (one batch). A
    concave welfare of concave utilities (the declared properties of "balanced"
    on concave curves) converges to the optimum; elsewhere to a stationary point,
    which the local search then polishes. Where the pairwise local search needs
    O(n^2) work per step of one transfer size, this needs it once per iteration
    and moves every job at once. Deterministic.
    """
    x = np.asarray(x0, dtype=float).copy()
    n = len(x)
    if n < 2:
        return x
    u = utility(x)
    best = float(welfare(u[None, :], x[None, :])[0])
    gammas = np.array([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125])[:, None]
    diag = np.arange(n)
    for _ in range(max_iters):
        U = np.tile(u, (n, 1))
        U[diag, diag] += h
        g = (welfare(U, np.tile(x, (n, 1))) - best) / h
        s = linear(g)
        d = s - x
        if not np.any(np.abs(d) > 1e-12):
            break
        ys = x[None, :] + gammas * d[None, :]
        us = utility(ys)
        vals = welfare(us, ys)
        i = int(np.argmax(vals))
        if not vals[i] > best + 1e-12:
            break
        x, u, best = ys[i], us[i], float(vals[i])
    return x
