"""Telemetry counts for one window, sampled from the latency laws (vectorized over jobs).

Requests arrive as a Poisson process and each one independently lands in a
latency bucket, so the count per bucket is an independent Poisson variable
(Poisson thinning): no per-request loop, and only buckets with non-negligible
mass are sampled. Requests whose latency would pass the timeout (or that an
overloaded queue cannot serve) are timed out: they count as offered, not
completed, never within the SLO, and sit in the histogram at the timeout, so
P99 sees them as DESIGN.md asks. Within-SLO counts thin the bucket that holds
the target by the exact fraction of its mass below the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster_mgr.feedback import percentiles
from cluster_mgr.model import LATENCY_BUCKET_EDGES_MS, N_LATENCY_BUCKETS
from cluster_mgr.sim.truth import LatencyLaw

_MID = np.sqrt(LATENCY_BUCKET_EDGES_MS[:-1] * LATENCY_BUCKET_EDGES_MS[1:])


def quantiles(hists: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Row-wise percentiles (len(qs), n) with one cumulative sum; the same interpolation as
    ``cluster_mgr.feedback.percentiles`` (geometric within the bucket), nan for empty rows."""
    h = np.asarray(hists, dtype=float)
    out = np.full((len(qs), len(h)), np.nan)
    n = h.sum(axis=1)
    ok = n > 0
    if not ok.any():
        return out
    h = h[ok]
    cum = np.cumsum(h, axis=1)
    rows = np.arange(len(h))
    edges = LATENCY_BUCKET_EDGES_MS
    for k, q in enumerate(qs):
        rank = q / 100.0 * n[ok]
        i = np.minimum((cum < rank[:, None]).sum(axis=1), N_LATENCY_BUCKETS - 1)
        below = np.where(i > 0, cum[rows, np.maximum(i - 1, 0)], 0.0)
        cnt = h[rows, i]
        frac = np.where(cnt > 0, np.clip((rank - below) / np.where(cnt > 0, cnt, 1), 0, 1), 0.0)
        out[k, ok] = edges[i] * (edges[i + 1] / edges[i]) ** frac
    return out


@dataclass
class WindowCounts:
    offered: np.ndarray
    completed: np.ndarray
    timed_out: np.ndarray
    within: np.ndarray
    hist: np.ndarray  # (J, N_LATENCY_BUCKETS)
    _q: np.ndarray | None = None

    def percentile(self, q: float) -> np.ndarray:
        """P50, P95 and P99 are computed together once; other percentiles on demand."""
        if q in (50.0, 95.0, 99.0):
            if self._q is None:
                self._q = quantiles(self.hist, (50.0, 95.0, 99.0))
            return self._q[(50.0, 95.0, 99.0).index(q)]
        return percentiles(self.hist, q)

    def mean_ms(self) -> np.ndarray:
        n = self.hist.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, (self.hist * _MID).sum(axis=1) / np.maximum(n, 1), np.nan)


def bucket_of(ms: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(LATENCY_BUCKET_EDGES_MS, np.asarray(ms, dtype=float), side="right") - 1
    return np.clip(idx, 0, N_LATENCY_BUCKETS - 1)


def sample_window(
    law: LatencyLaw,
    expected: np.ndarray,
    target_ms: np.ndarray,
    timeout_ms: np.ndarray,
    rng: np.random.Generator,
    eps: float = 1e-7,
) -> WindowCounts:
    """Counts for one window: ``expected`` offered requests per job (Poisson mean)."""
    n_jobs = len(expected)
    edges = LATENCY_BUCKET_EDGES_MS
    lam = np.maximum(np.asarray(expected, dtype=float), 0.0)
    to_b = bucket_of(timeout_ms)
    # CDF at bucket edges, capped at the timeout (mass beyond it is timed out, not completed).
    cap = np.minimum(law.cdf_edges, law.cdf_timeout[:, None])
    cap[:, 0] = 0.0  # anything below the first edge lands in the first bucket
    cap[:, -1] = law.cdf_timeout
    p_b = np.diff(cap, axis=1) * law.served[:, None]  # (J, B)
    p_to = 1.0 - law.served * law.cdf_timeout
    mean = lam[:, None] * np.maximum(p_b, 0.0)
    hist = np.zeros((n_jobs, N_LATENCY_BUCKETS), dtype=np.int64)
    live = mean > eps  # only buckets with mass are sampled (most of the 96 are empty)
    hist[live] = rng.poisson(mean[live])
    completed = hist.sum(axis=1)
    timed_out = rng.poisson(lam * np.maximum(p_to, 0.0))
    # Within the SLO: buckets wholly below the target, plus the thinned share of the target's bucket.
    tb = bucket_of(target_ms)
    rows = np.arange(n_jobs)
    csum = np.cumsum(hist, axis=1)
    below = np.where(tb > 0, csum[rows, np.maximum(tb - 1, 0)], 0)
    lo = edges[tb]
    c_lo = np.where(tb > 0, cap[rows, tb], 0.0)
    c_hi = cap[rows, tb + 1]
    c_t = np.minimum(law.cdf_target, law.cdf_timeout)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(c_hi > c_lo, (c_t - c_lo) / (c_hi - c_lo), (target_ms >= lo).astype(float))
    within = below + rng.binomial(hist[rows, tb], np.clip(frac, 0.0, 1.0))
    within = np.where(target_ms >= timeout_ms, completed, within)
    hist[rows, to_b] += timed_out
    return WindowCounts(
        offered=completed + timed_out,
        completed=completed,
        timed_out=timed_out,
        within=np.minimum(within, completed),
        hist=hist,
    )
