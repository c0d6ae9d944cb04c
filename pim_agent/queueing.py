"""Response-time distribution of one app served by a pool of heterogeneous cores.

The app's requests share one queue in front of groups of cores (big cores,
PIM cores on stack 0, on stack 1, ...); group g has ``n_g`` cores (fractional
while a change settles) of exponential service with mean ``s_g`` ms.
Approximation, stated: the wait is that of an M/M/c queue with c = sum n_g and
the pooled rate (Erlang C, ``cluster_mgr.queueing``; a fractional c reads as the
line between its integer neighbours). A waiting request goes to the next core to
free up (group share in proportion to capacity); one that finds idle cores goes
to the fastest idle one (ordered-hunting overflow, Erlang B). Saturated
best-effort work keeps capacity-proportional shares. A backlog left from an
overload adds ``delay_ms`` to every request.
The slow group dominates the tail, which is why mixing core types costs tail
latency (PIMCloud only lets one app mix).
"""

from __future__ import annotations

import math

import numpy as np

from cluster_mgr.queueing import erlang_b_linear, erlang_c_linear

UNSTABLE_RHO = (
    0.999  # an overloaded queue is shaped as if at this utilisation; backlog does the rest
)


def fastest_first_shares(n: np.ndarray, s: np.ndarray, lam: float) -> np.ndarray:
    """Share of non-waiting requests served by each group under fastest-idle-first
    dispatch (ordered-hunting overflow); groups with n = 0 get 0."""
    n = np.asarray(n, float)
    s = np.asarray(s, float)
    out = np.zeros(len(n))
    live = np.flatnonzero(n > 1e-9)
    if len(live) == 0:
        return out
    order = live[np.argsort(s[live], kind="stable")]
    # An arrival passes the k fastest groups when all their cores are busy (Erlang B on
    # their pooled cores); never more often than it passes fewer of them.
    cum_n = np.cumsum(n[order[:-1]])
    cum_mu = np.cumsum(n[order[:-1]] / s[order[:-1]])
    busy = erlang_b_linear(cum_n, lam * cum_n / np.where(cum_mu > 0, cum_mu, 1.0))
    over = np.concatenate([np.minimum.accumulate(np.concatenate([[1.0], busy])), [0.0]])
    out[order] = over[:-1] - over[1:]
    return out


class Pool:
    """The core groups serving one app, with its offered load; all times in ms."""

    __slots__ = (
        "n", "s", "lam", "delay_ms", "mu", "p", "q", "share", "share_all", "wait_prob", "alpha",
        "rho",
    )  # fmt: skip

    def __init__(
        self,
        n: np.ndarray,
        s: np.ndarray,
        lam_per_ms: float,
        delay_ms: float = 0.0,
        proportional: bool = False,
    ):
        keep = np.asarray(n, float) > 1e-9
        self.n = np.asarray(n, float)[keep]
        self.s = np.asarray(s, float)[keep]
        self.lam = float(lam_per_ms)
        self.delay_ms = float(delay_ms)
        rates = self.n / self.s
        self.mu = float(rates.sum())  # requests per ms the pool can serve
        self.p = rates / self.mu if self.mu > 0 else rates
        c = float(self.n.sum())
        self.rho = self.lam / self.mu if self.mu > 0 else math.inf
        lam_eff = min(self.lam, UNSTABLE_RHO * self.mu)
        self.wait_prob = float(erlang_c_linear(c, lam_eff * c / self.mu)) if self.mu > 0 else 1.0
        self.alpha = self.mu - lam_eff  # rate of the waiting-time exponential
        # q: share of non-waiting requests per group; share: of all requests.
        if proportional or not self.served:
            self.q = self.p
        else:
            self.q = fastest_first_shares(self.n, self.s, lam_eff)
        self.share = (1.0 - self.wait_prob) * self.q + self.wait_prob * self.p
        full = np.zeros(len(keep))
        full[keep] = self.share
        self.share_all = full  # over the groups as given (zero-core groups get 0)

    @property
    def served(self) -> bool:
        return self.mu > 0

    def tail(self, t_ms: np.ndarray) -> np.ndarray:
        """P(response time > t) for each t (ms)."""
        t = np.asarray(t_ms, float)
        if not self.served:
            return np.ones_like(t)
        x = np.maximum(t - self.delay_ms, 0.0)[:, None]
        b = 1.0 / self.s[None, :]
        a = self.alpha
        service = np.exp(-b * x)
        close = np.abs(a - b) < 1e-9 * np.maximum(a, b)
        denom = np.where(close, 1.0, a - b)
        hypo = np.where(
            close, (1.0 + a * x) * np.exp(-a * x), (a * np.exp(-b * x) - b * np.exp(-a * x)) / denom
        )
        out = (1.0 - self.wait_prob) * (service @ self.q) + self.wait_prob * (hypo @ self.p)
        out = np.clip(out, 0.0, 1.0)
        return np.where(t < self.delay_ms, 1.0, out)

    def mean_ms(self) -> float:
        if not self.served:
            return math.inf
        return float(self.share @ self.s) + self.wait_prob / self.alpha + self.delay_ms

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0-100) of response time, by bisection on the tail."""
        if not self.served:
            return math.inf
        target = 1.0 - q / 100.0
        lo, hi = 0.0, self.delay_ms + 50.0 * (float(self.s.max()) + 1.0 / self.alpha)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.tail(np.array([mid]))[0] > target:
                lo = mid
            else:
                hi = mid
        return hi
