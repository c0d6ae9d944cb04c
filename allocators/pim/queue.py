"""Vectorised M/M/c response-time percentile for many candidate core pools at once.

The planner's structural model: requests of one app share a queue in front of
its cores; core group g (big cores, PIM cores on stack s) has n_g cores with
mean service s_g. Wait: Erlang C on the pooled rate. Dispatch, as the device
does it: a waiting request goes to the next core to free up (group share in
proportion to capacity); a request that finds idle cores goes to the fastest
idle one, the faster groups being all busy with the ordered-hunting (Erlang B
overflow) probability. Slow cores weigh on the tail as often as the fast ones
are all busy.
"""

from __future__ import annotations

import numpy as np

from cluster_mgr.queueing import erlang_b, erlang_c


def fastest_first_shares(n: np.ndarray, s: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """(m, g) share of non-waiting requests per group under fastest-idle-first dispatch."""
    m, g = n.shape
    key = np.where(n > 0, s, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    rows = np.arange(m)[:, None]
    ns, ss = n[rows, order], s[rows, order]
    rates = np.where(ns > 0, ns / ss, 0.0)
    cum_n = np.cumsum(ns, axis=1)
    cum_mu = np.cumsum(rates, axis=1)
    over = np.ones((m, g + 1))
    for k in range(g - 1):
        a = lam * cum_n[:, k] / np.maximum(cum_mu[:, k], 1e-300)
        bk = np.where(ns[:, k] > 0, erlang_b(np.rint(cum_n[:, k]).astype(int), a), 1.0)
        # past the last live group nothing overflows further
        last = (ns[:, k + 1 :] > 0).sum(axis=1) == 0
        over[:, k + 1] = np.where(last, 0.0, np.minimum(over[:, k], bk))
    over[:, g] = 0.0
    q_sorted = over[:, :-1] - over[:, 1:]
    q_sorted = np.where(ns > 0, q_sorted, 0.0)
    out = np.zeros_like(q_sorted)
    out[rows, order] = q_sorted
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
    q_free = fastest_first_shares(n, s, np.where(stable, lam, 0.0))
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
        return (1.0 - wait) * (svc * q_free).sum(axis=1) + wait * (hypo * p).sum(axis=1)

    smax = np.where(n > 0, s, 0.0).max(axis=1)
    lo = np.zeros_like(mu)
    hi = 50.0 * (smax + 1.0 / alpha)
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        over = tail(mid) > target
        lo = np.where(over, mid, lo)
        hi = np.where(over, hi, mid)
    return np.where(stable, hi, np.inf)
