"""Parametric scaling-curve learner: the Ernest model fitted by non-negative least squares.

time(alloc, load) = t0 + t1 * load / alloc + t2 * log(alloc) + t3 * alloc, theta >= 0.

Only the weighted Gram matrix A = X'WX, X'Wy, y'Wy and the count are kept
(W = 1/sigma^2), so an update is O(1) in the amount of data and the model is a
few dozen floats. NNLS on (A, b) is exact: ||R theta - c||^2 with R'R = A and
R'c = b differs from the weighted residual sum only by a constant.

Bounds: theta_ols lies in the ellipsoid {(theta - theta_ols)' A (theta - theta_ols)
<= chi2_4(1 - delta)} with probability 1 - delta (Gaussian noise, stated sigma).
The NNLS solution is the A-norm projection of theta_ols onto the cone theta >= 0,
which contains the truth, and projections onto convex sets do not increase
distances, so the same ellipsoid centred at the NNLS fit also holds the truth.
Hence g'theta_nnls +/- sqrt(chi2_4(1 - delta) * g'A^-1 g) holds for every
(alloc, load) at once. When the residuals contradict the stated sigma (or the
form), a chi-square test raises the misspecification flag and sigma is
inflated by the measured factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy import optimize, stats

from learners.base import Learner, Monotone, Side, _scalar, as_alloc_matrix, side_index
from learners.conformal import Reservoir, calibrated_band, heavy_tails

N_PARAMS = 4
#: false-alarm level of the residual test
FLAG_ALPHA = 1e-3
#: smallest excess (ratio of standard deviations) the residual test reports
MIN_EFFECT = 1.2
#: smallest alloc used in features (log and 1/alloc are undefined at 0)
MIN_ALLOC = 1e-6


def ernest_features(alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Rows [1, load/alloc, log(alloc), alloc] for alloc (m,), load (m,)."""
    a = np.maximum(alloc, MIN_ALLOC)
    return np.column_stack([np.ones_like(a), load / a, np.log(a), a])


class ErnestLearner(Learner):
    """Job time (or any cost that follows the Ernest form) against a scalar allocation.

    The value falls then (possibly) rises with the allocation, so no monotonicity
    is claimed; ``demand`` treats the goal as a ceiling ("time at most goal") and
    its conservative side is ``"upper"``.
    """

    name: ClassVar[str] = "ernest"
    monotone: ClassVar[Monotone] = None

    def __init__(self, *, delta: float = 0.05, seed: int = 0, dim: int = 1, min_alloc: float = 1e-3) -> None:
        if dim != 1:
            raise ValueError(f"ernest models a scalar allocation (dim=1), got dim={dim}")
        if not (np.isfinite(min_alloc) and min_alloc > 0):
            raise ValueError(f"min_alloc must be > 0, got {min_alloc}")
        super().__init__(delta=delta, seed=seed, dim=dim)
        self.min_alloc = float(min_alloc)
        self._A = np.zeros((N_PARAMS, N_PARAMS))
        self._b = np.zeros(N_PARAMS)
        self._yy = 0.0
        self._theta = np.zeros(N_PARAMS)
        self._cov = np.full((N_PARAMS, N_PARAMS), np.nan)
        self._identified = False
        self._noise_scale = 1.0
        self._radius = float(np.sqrt(stats.chi2.ppf(1.0 - delta, N_PARAMS)))
        self._dirty = False
        self._scalars: list[tuple[float, float, float, float]] = []  # queued single windows
        # a seeded sample of (alloc, load, value, weight) for the conformal prediction band
        self._calib = Reservoir(4, seed=seed)

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickle; a learner pickled before the conformal sample existed starts an empty one
        (its prediction band is Gaussian until new data fill it)."""
        self.__dict__.update(state)
        if "_calib" not in state:
            self._calib = Reservoir(4, seed=self.seed)

    # -- learning ----------------------------------------------------------------------
    def learn_arrays(
        self,
        alloc: np.ndarray | Sequence[float],
        load: np.ndarray | Sequence[float] | float,
        value: np.ndarray | Sequence[float],
        sigma: np.ndarray | Sequence[float] | float,
    ) -> None:
        """As ``Learner.learn_arrays``; one scalar observation (a telemetry window) takes a
        plain-Python path: the same checks, then an append, folded into the Gram matrix in
        one vectorized step when the model is next read (the general path names problems)."""
        if type(self).check_batch is not ErnestLearner.check_batch:
            return super().learn_arrays(alloc, load, value, sigma)
        try:
            a, ld, v, sg = _scalar(alloc), _scalar(load), _scalar(value), _scalar(sigma)
        except TypeError:
            return super().learn_arrays(alloc, load, value, sigma)
        if not (math.isfinite(a) and math.isfinite(ld) and math.isfinite(v) and math.isfinite(sg)) \
                or a < self.min_alloc or ld < 0 or sg <= 0:
            return super().learn_arrays(alloc, load, value, sigma)
        self._scalars.append((a, ld, v, sg))
        self.n_observations += 1
        self._dirty = True
        return None

    def _fold(self) -> None:
        """Add queued single observations to the sufficient statistics."""
        sc = self.__dict__.get("_scalars")
        if sc:
            arr = np.array(sc, dtype=float)
            self._scalars = []
            self._accumulate(arr[:, :1], arr[:, 1], arr[:, 2], arr[:, 3])

    def check_batch(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        if np.any(alloc[:, 0] < self.min_alloc):
            raise ValueError(f"ernest: allocation below min_alloc={self.min_alloc} (log/1/alloc undefined)")

    def _learn_batch(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        self._fold()  # keep arrival order
        self._accumulate(alloc, load, value, sigma)

    def _accumulate(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        self._calib.add(np.column_stack([alloc[:, 0], load, value, 1.0 / sigma**2]))
        if len(value) == 1:  # one window: plain floats are cheaper than array plumbing
            a, w, y = max(float(alloc[0, 0]), MIN_ALLOC), 1.0 / float(sigma[0]) ** 2, float(value[0])
            f = np.array([1.0, float(load[0]) / a, np.log(a), a])
            self._A += w * np.outer(f, f)
            self._b += (w * y) * f
            self._yy += w * y * y
        else:
            X = ernest_features(alloc[:, 0], load)
            w = 1.0 / sigma**2
            self._A += (X * w[:, None]).T @ X
            self._b += X.T @ (w * value)
            self._yy += float(np.sum(w * value * value))
        self._dirty = True

    def _sync(self) -> None:
        self._refit()

    def _refit(self) -> None:
        self._fold()
        if not getattr(self, "_dirty", False):
            return
        self._dirty = False
        scale = np.sqrt(np.maximum(np.diag(self._A), 1e-300))
        As = self._A / np.outer(scale, scale)  # equilibrate: features differ by orders of magnitude
        evals = np.linalg.eigvalsh(As)
        self._identified = bool(evals[0] > 1e-10 * max(evals[-1], 1e-300))
        if not self._identified:
            return
        R = np.linalg.cholesky(As).T
        c = np.linalg.solve(R.T, self._b / scale)
        ts, _ = optimize.nnls(R, c)
        self._theta = ts / scale
        self._cov = np.linalg.inv(As) / np.outer(scale, scale)
        n = self.n_observations
        dof = n - N_PARAMS
        rss = max(self._yy - 2 * self._theta @ self._b + self._theta @ self._A @ self._theta, 0.0)
        significant = dof >= 10 and stats.chi2.sf(rss, dof) < FLAG_ALPHA
        # Widen whenever the excess is significant; flag only when it is also large.
        self._noise_scale = float(np.sqrt(rss / dof)) if significant else 1.0
        if significant and rss / dof > MIN_EFFECT**2:
            self._flag(
                f"residuals {rss / dof:.2f}x the stated noise variance (chi-square, {dof} dof): "
                "the Ernest form or the stated sigma does not fit"
            )
        if dof >= 10 and len(self._calib):  # tails heavier than the Gaussian bands assume
            resid, _ = self._residuals()
            heavy = heavy_tails(resid / max(float(np.sqrt(np.mean(resid * resid))), 1e-300), FLAG_ALPHA, MIN_EFFECT)
            if heavy:
                self._flag(heavy)

    # -- queries -----------------------------------------------------------------------
    def bounds(self, alloc: np.ndarray, load: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = as_alloc_matrix(alloc, 1)[:, 0]
        ld = np.broadcast_to(np.asarray(load, dtype=float), a.shape)
        if not np.all(np.isfinite(ld)) or np.any(ld < 0):
            raise ValueError("load must be finite and >= 0")
        self._refit()
        if not self._identified:  # too few distinct allocations: say so with the widest prior
            m = len(a)
            return np.zeros(m), np.full(m, np.inf), np.full(m, np.inf)
        G = ernest_features(a, ld)
        mean = G @ self._theta
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", G, self._cov, G), 0.0))
        half = self._radius * self._noise_scale * se
        return np.maximum(mean - half, 0.0), mean, mean + half

    def demand(self, goal: float, load: float, side: Side = "upper", *, hi: float = 1e4, tol: float = 1e-3) -> float:
        """Smallest allocation in [min_alloc, hi] whose ``side`` estimate of time is <= goal.

        The curve need not be monotone, so a log grid is scanned and the first
        crossing refined by bisection.
        """
        idx = side_index(side)
        if not (np.isfinite(goal) and np.isfinite(load) and load >= 0):
            raise ValueError("goal must be finite and load >= 0")
        grid = np.geomspace(self.min_alloc, hi, 1024)
        ok = self.bounds(grid, load)[idx] <= goal
        if not ok.any():
            return float("inf")
        first = int(np.argmax(ok))
        if first == 0:
            return float(grid[0])
        lo_x, hi_x = float(grid[first - 1]), float(grid[first])
        while hi_x - lo_x > tol:
            mid = 0.5 * (lo_x + hi_x)
            if self.bounds(np.array([mid]), load)[idx][0] <= goal:
                hi_x = mid
            else:
                lo_x = mid
        return hi_x

    def predictive_bounds(
        self, alloc: np.ndarray, load: np.ndarray | float, sigma: np.ndarray | float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interval for a new measurement. Without ``sigma``: conformal (``learners.conformal``),
        the estimate +/- the finite-sample (1 - delta) quantile of the training residuals'
        scores (a seeded sample, left out one at a time) times the prediction sd at the query;
        a Gaussian band from the residual std while that sample is too small. Real
        measurements (skewed, bimodal P99) are what a Gaussian band gets wrong: it covered
        0.943 of the held-out real run and 0.538 of its own training windows."""
        if sigma is not None:
            return super().predictive_bounds(alloc, load, sigma)
        self._refit()
        lcb, mean, ucb = self.bounds(alloc, load)
        if not self._identified or self.n_observations <= N_PARAMS:
            return lcb, mean, np.full_like(ucb, np.inf)
        a = as_alloc_matrix(alloc, 1)[:, 0]
        resid, resid_sd = self._residuals()
        band = calibrated_band(mean, self._f_sd(a, np.broadcast_to(np.asarray(load, float), a.shape)),
                               resid, resid_sd, self.delta)
        if band is None:
            z = float(stats.norm.isf(self.delta / 2))
            s = self._noise_sd()
            return np.maximum(lcb - z * s, 0.0), mean, ucb + z * s
        return np.maximum(band[0], 0.0), mean, band[1]

    def _noise_sd(self) -> float:
        """Residual std of the fit in the values' units (the stated sigmas' typical size times
        the measured inflation)."""
        dof = self.n_observations - N_PARAMS
        rss = max(self._yy - 2 * self._theta @ self._b + self._theta @ self._A @ self._theta, 0.0)
        return float(np.sqrt(rss / max(dof, 1)) * self._sigma_rms())

    def _f_sd(self, alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
        """Pointwise sd of the estimate (``_cov`` is in value units: the weights are 1/sigma^2)."""
        G = ernest_features(np.maximum(alloc, self.min_alloc), load)
        return self._noise_scale * np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", G, self._cov, G), 0.0))

    def _residuals(self) -> tuple[np.ndarray, np.ndarray]:
        """Leave-one-out residuals of the calibration sample, r / (1 - leverage) (exact for
        least squares; the NNLS fit is treated as one), and the fit's sd there."""
        a, ld, y, w = self._calib.sample.T
        G = ernest_features(np.maximum(a, self.min_alloc), ld)
        lev = w * np.einsum("ij,jk,ik->i", G, self._cov, G)
        return (y - G @ self._theta) / np.maximum(1.0 - lev, 1e-3), self._f_sd(a, ld)

    def _sigma_rms(self) -> float:
        """Root mean square of the stated sigmas (from the sum of weights 1/sigma^2)."""
        self._fold()
        return float(np.sqrt(self.n_observations / self._A[0, 0])) if self._A[0, 0] > 0 else float("nan")

    @property
    def theta(self) -> np.ndarray:
        """The fitted (t0, t1, t2, t3); zeros until the model is identified."""
        self._refit()
        return self._theta.copy()

    def explain(self) -> dict[str, object]:
        self._refit()
        out = super().explain()
        out.update(
            identified=self._identified,
            theta=[float(t) for t in self._theta],
            noise_scale=self._noise_scale,
            bound="simultaneous over all (alloc, load): chi-square ellipsoid around the NNLS fit",
        )
        return out
