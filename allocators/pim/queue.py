"""Vectorised M/M/c response-time percentile for many candidate core pools at once.

The planner's structural model: requests of one app share a queue in front of
its cores; core group g (big cores, PIM cores on stack s) has n_g cores with
mean service s_g. Wait: Erlang C on the pooled rate; a request is served by
group g in proportion to the group's capacity, so slow cores weigh on the tail.
"""

from __future__ import annotations

import numpy as np


def erlang_c(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """P(wait) for integer server counts ``c`` and offered loads ``a`` (arrays)."""
    c = np.asarray(c, dtype=int)
    a = np.asarray(a, dtype=float)
    b = np.ones_like(a)
    out = np.ones_like(a)
    cmax = int(c.max()) if c.size else 0
    for k in range(1, cmax + 1):
        b = np.where(k <= c, a * b / (k + a * b), b)
    ok = (c > 0) & (a < c)
    rho = np.where(c > 0, a / np.maximum(c, 1), 1.0)
    out = np.where(ok, b / np.maximum(1.0 - rho * (1.0 - b), 1e-300), 1.0)
    return out


def p99_ms(n: np.ndarray, s: np.ndarray, lam_per_ms: np.ndarray, q: float = 99.0) -> np.ndarray:
    """Percentile ``q`` of response time per row. ``n``, ``s``: (m, g) cores and mean
    service ms per group; ``lam_per_ms``: (m,). Unstable or empty rows give inf."""
    n = np.asarray(n, float)
    s = np.asarray(s, float)
    lam = np.broadcast_to(np.asarray(lam_per_ms, float), (n.shape[0],))
    rates = np.where(n > 0, n / s, 0.0)
    mu = rates.sum(axis=1)
    stable = (mu > 0) & (lam < mu * 0.999)
    mu_safe = np.where(mu > 0, mu, 1.0)
    p = rates / mu_safe[:, None]
    c = np.rint(n.sum(axis=1)).astype(int)
    a = np.where(stable, lam * c / mu_safe, 0.0)
    wait = erlang_c(c, a)
    alpha = np.where(stable, mu - lam, 1.0)
    b = 1.0 / s
    target = 1.0 - q / 100.0

    def tail(t: np.ndarray) -> np.ndarray:
        x = t[:, None]
        svc = np.exp(-b * x)
        al = alpha[:, None]
        diff = al - b
        close = np.abs(diff) < 1e-9
        hypo = np.where(
            close,
            (1.0 + al * x) * np.exp(-al * x),
            (al * np.exp(-b * x) - b * np.exp(-al * x)) / np.where(close, 1.0, diff),
        )
        per = (1.0 - wait[:, None]) * svc + wait[:, None] * hypo
        return (per * p).sum(axis=1)

    smax = np.where(n > 0, s, 0.0).max(axis=1)
    lo = np.zeros_like(mu)
    hi = 50.0 * (smax + 1.0 / alpha)
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        over = tail(mid) > target
        lo = np.where(over, mid, lo)
        hi = np.where(over, hi, mid)
    return np.where(stable, hi, np.inf)
