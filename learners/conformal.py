"""Conformal calibration of prediction intervals from a bounded sample of the training data.

A learner's Gaussian prediction band (estimate +/- z * sd) is only as good as the
noise model behind it. Real measurements (a window's P99) are skewed, bimodal
and heavier-tailed than any stated sigma, and there a Gaussian band is either
far too wide (log scale) or too narrow (raw scale). Split-free conformal
calibration replaces z by an empirical quantile q of standardized absolute
residuals ``|y - estimate| / sd`` of past observations: if a new observation is
exchangeable with the calibration sample, it falls inside ``estimate +/- q * sd``
with probability at least 1 - delta (finite-sample rank correction included),
whatever the shape of the noise. Runs of a different policy are not exchangeable
with the training runs; that is checked on held-out data, not promised.

The sample is a reservoir (Algorithm R) of at most ``size`` observations drawn
with the learner's seed, so memory and per-update cost stay flat as data grow and
the result is deterministic. numpy and scipy only.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

#: calibration sample kept per learner
RESERVOIR_SIZE = 1024


class Reservoir:
    """A seeded uniform sample of at most ``size`` rows of ``width`` floats from a stream."""

    def __init__(self, width: int, size: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        if size < 1 or width < 1:
            raise ValueError(f"reservoir needs size >= 1 and width >= 1, got {size}, {width}")
        self.size = int(size)
        self.rows = np.zeros((0, width))  # grows to ``size``: a bank of cold learners stays small
        self.seen = 0
        self._rng = np.random.default_rng([seed, 0x5EED])

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, block: np.ndarray) -> None:
        """Offer rows (k, width) in arrival order: Algorithm R, vectorized over the block."""
        k = len(block)
        if k == 0:
            return
        size = self.size
        t = self.seen + np.arange(k)  # stream index of each row
        fill = t < size
        if fill.any():  # the first ``size`` rows are all kept
            self.rows = np.vstack([self.rows, block[fill]])
        rest = np.flatnonzero(~fill)
        if len(rest):
            slot = self._rng.integers(0, t[rest] + 1)  # row t replaces slot j < size w.p. size/(t+1)
            keep = slot < size
            # Later rows overwrite earlier ones in the same slot, as the sequential algorithm
            # does: keep the last row per slot (first occurrence in the reversed order).
            slots, src = slot[keep][::-1], rest[keep][::-1]
            uniq, first = np.unique(slots, return_index=True)
            self.rows[uniq] = block[src[first]]
        self.seen += k

    @property
    def sample(self) -> np.ndarray:
        return self.rows


def conformal_quantile(scores: np.ndarray, delta: float) -> float:
    """q: a new exchangeable score is <= q w.p. >= 1 - delta (the finite-sample rank
    ceil((n + 1)(1 - delta)) of the sorted scores); inf when n is too small for that rank."""
    s = np.sort(np.asarray(scores, dtype=float))
    n = len(s)
    k = math.ceil((n + 1) * (1 - delta))
    if n == 0 or k > n:
        return math.inf
    return float(s[k - 1])


def heavy_tails(scores: np.ndarray, alpha: float, min_effect: float, level: float = 0.05) -> str:
    """A reason string when standardized residuals are heavier-tailed than Gaussian, else "".

    Counts scores beyond ``min_effect`` times the Gaussian (1 - level) two-sided quantile: a
    Gaussian band of level 1 - level, even widened by ``min_effect``, would miss them. Speaks
    only when that count is significant (one-sided binomial test at ``alpha``) *and* the miss
    rate exceeds ``level``, so at large n a harmless departure stays quiet.
    """
    n = len(scores)
    if n < 100:
        return ""
    t = min_effect * float(stats.norm.isf(level / 2))
    p0 = 2 * float(stats.norm.sf(t))
    k = int(np.count_nonzero(np.abs(scores) > t))
    if k / n > level and float(stats.binom.sf(k - 1, n, p0)) < alpha:
        return (f"residual tails heavier than Gaussian: {k / n:.1%} of standardized residuals beyond "
                f"{t:.2f} (Gaussian: {p0:.1%}); prediction bands use conformal quantiles")
    return ""


def calibrated_band(mean: np.ndarray, f_sd: np.ndarray, resid: np.ndarray, resid_f_sd: np.ndarray,
                    delta: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Conformal prediction band ``mean +/- q * sd`` for new measurements.

    ``resid`` are held-out residuals of calibration observations (Ernest: leave-one-out by
    leverage; the GP: without the observation's pseudo-point), ``resid_f_sd`` the
    estimate's sd there. The score is |residual| / sd, sd = sqrt(f_sd^2 + s^2) with s the
    residuals' root mean square, so the band grows where the estimate is uncertain (far
    from data) and has the measured noise scale. The score is the *absolute* residual: with
    skewed noise (P99: a hard floor near 100 ms, a long saturated tail) a two-tailed band
    puts its lower end inside the floor cluster, and a run with more floor windows than the
    training runs (a shift no sample rules out) then falls below it (measured: 0.78 coverage
    on the held-out run, against 0.99 with the absolute score). None when the sample is too
    small for the finite-sample rank (the caller falls back to a Gaussian band).
    """
    resid = np.asarray(resid, dtype=float)
    s2 = float(np.mean(resid * resid)) if len(resid) else 0.0
    if not s2 > 0:
        return None
    q = conformal_quantile(np.abs(resid) / np.sqrt(np.asarray(resid_f_sd, dtype=float) ** 2 + s2), delta)
    if not math.isfinite(q):
        return None
    sd = np.sqrt(np.asarray(f_sd, dtype=float) ** 2 + s2)
    return mean - q * sd, mean + q * sd
