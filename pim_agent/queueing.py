"""Response-time distribution of one app served by a pool of heterogeneous cores.

The app's requests share one queue in front of groups of cores (big cores,
PIM cores on stack 0, on stack 1, ...); group g has ``n_g`` cores (fractional
while a change settles) of exponential service with mean ``s_g`` ms.
Approximation, stated: the wait is that of an M/M/c queue with c = sum n_g and
the pooled rate (Erlang C), and a request is served by group g with
probability proportional to the group's capacity (random dispatch among free
cores). A backlog left from an overload adds ``delay_ms`` to every request.
The slow group dominates the tail, which is why mixing core types costs tail
latency (PIMCloud only lets one app mix).
"""

from __future__ import annotations

import math

import numpy as np

UNSTABLE_RHO = (
    0.999  # an overloaded queue is shaped as if at this utilisation; backlog does the rest
)


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load ``a`` (Erlangs)."""
    if c <= 0 or a >= c:
        return 1.0
    if a <= 0:
        return 0.0
    b = 1.0
    for k in range(1, c + 1):  # Erlang B recursion, numerically stable
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def erlang_b(c: int, a: float) -> float:
    """Erlang B: probability that all ``c`` servers of a loss system are busy."""
    if c <= 0:
        return 1.0
    if a <= 0:
        return 0.0
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_b_frac(c: float, a: float) -> float:
    lo = math.floor(c)
    frac = c - lo
    b_lo = erlang_b(lo, a)
    return b_lo if frac < 1e-9 else (1.0 - frac) * b_lo + frac * erlang_b(lo + 1, a)


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
    over = [1.0]  # probability the arrival passes the first k groups (all busy)
    cum_n, cum_mu = 0.0, 0.0
    for g in order[:-1]:
        cum_n += n[g]
        cum_mu += n[g] / s[g]
        over.append(min(over[-1], erlang_b_frac(cum_n, lam * cum_n / cum_mu)))
    over.append(0.0)
    for k, g in enumerate(order):
        out[g] = over[k] - over[k + 1]
    return out


def erlang_c_frac(c: float, a: float) -> float:
    """Erlang C for a fractional server count (linear between the neighbours)."""
    lo = math.floor(c)
    frac = c - lo
    c_lo = erlang_c(lo, a)
    return c_lo if frac < 1e-9 else (1.0 - frac) * c_lo + frac * erlang_c(lo + 1, a)


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
        self.wait_prob = erlang_c_frac(c, lam_eff * c / self.mu) if self.mu > 0 else 1.0
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
