"""Gaussian-process UCB learner over multi-dimensional allocations (numpy/scipy only).

Matern 5/2 kernel with one lengthscale per input dimension (a shared factor
times each dimension's observed range, fitted by marginal likelihood on a
small grid), a constant prior mean, and the stated per-observation noise.
The allocation dimensions pass through an input warp chosen by the same
marginal likelihood (identity, or a log stretch of the low or the high end of
the observed range): a stationary kernel in the warped input can follow a
curve that is steep near saturation and flat beyond it without keeping a
short lengthscale everywhere. With ``log_value`` the log of each value is
corrected for its second-order bias (E log y = log f - s^2/2, s = sigma / y).

Cost stays flat as data grow: observations are merged into a bounded working
set of pseudo-points. A new observation joins the nearest pseudo-point when it
lies within ``merge_radius`` lengthscales of it (or when the set is full); a
pseudo-point keeps the centroid of its inputs and the plain mean of its values,
with noise variance sum(sigma^2) / count^2, so no information is thrown away.
(Plain, not precision-weighted, means: with log values the stated sigma is
divided by the noisy value, and weighting by it would bias the mean.) The Cholesky factor is updated incrementally: only rows from the first
changed pseudo-point on are recomputed (appends touch one row block).

Bounds are the posterior mean +/- beta * posterior std, beta = z_(1 - delta/2):
a pointwise credible interval, valid when the function is a draw of the
fitted GP. Leave-one-out residuals of the working set check that; when they
contradict the model (too large on average, or one far too large) the
misspecification flag rises and the std is inflated by the measured factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy import linalg, stats

from learners.base import Learner, Monotone, _scalar, as_alloc_matrix
from learners.conformal import Reservoir, calibrated_band

SQRT5 = float(np.sqrt(5.0))
#: lengthscale factors (times each dimension's observed range) tried by the fit
LENGTH_GRID = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
#: amplitude factors (times the values' standard deviation) tried by the fit
AMP_GRID = (0.5, 1.0, 2.0, 4.0)
FLAG_ALPHA = 1e-3
#: smallest departure (as a ratio of standard deviations) the flags report
MIN_EFFECT = 1.2
#: log-likelihood drop within which a lengthscale counts as plausible
PLAUSIBLE_NATS = 4.0
JITTER = 1e-8
#: input warps tried by the fit, per allocation dimension: (side, g). side 0 is the identity;
#: side -1 stretches the low end of the observed range (u -> log(u + g), u the position in
#: the range), side +1 the high end; smaller g stretches more. Chosen by marginal likelihood.
WARP_GRID = ((0, 0.0), (-1, 1.0), (-1, 0.3), (-1, 0.1), (-1, 0.03), (1, 1.0), (1, 0.3), (1, 0.1), (1, 0.03))


def matern52(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matern 5/2 correlation between rows of a (p, d) and b (q, d), already divided by lengthscales."""
    d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
    r = SQRT5 * np.sqrt(d2)
    return (1.0 + r + r * r / 3.0) * np.exp(-r)


class GPUCBLearner(Learner):
    """GP regression of a performance value (e.g. end-to-end P99 ms) on per-service allocations.

    Options: ``max_points`` (working-set bound), ``merge_radius`` (in lengthscales),
    ``log_value`` (model log(value): right for latencies, bounds stay positive),
    ``use_load`` (add load as an input; off by default because the real runs
    hold load flat), ``beta`` (width multiplier; default z_(1 - delta/2)).
    """

    name: ClassVar[str] = "gp_ucb"
    warp_grid: ClassVar[tuple[tuple[int, float], ...]] = WARP_GRID
    plausible_nats: ClassVar[float] = PLAUSIBLE_NATS
    monotone: ClassVar[Monotone] = None

    def __init__(
        self,
        *,
        delta: float = 0.05,
        seed: int = 0,
        dim: int = 1,
        max_points: int = 200,
        merge_radius: float = 0.1,
        log_value: bool = False,
        use_load: bool = False,
        beta: float | None = None,
    ) -> None:
        super().__init__(delta=delta, seed=seed, dim=dim)
        if max_points < 4:
            raise ValueError(f"max_points must be >= 4, got {max_points}")
        if not merge_radius >= 0:
            raise ValueError(f"merge_radius must be >= 0, got {merge_radius}")
        if beta is not None and not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.max_points = int(max_points)
        self.merge_radius = float(merge_radius)
        self.log_value = bool(log_value)
        self.use_load = bool(use_load)
        self.beta = float(beta) if beta is not None else float(stats.norm.isf(delta / 2))
        d = dim + (1 if use_load else 0)
        self._d = d
        self._SX = np.zeros((0, d))  # pseudo-points: sums of inputs
        self._SXX = np.zeros((0, d))  # ... of squared inputs (for the members' spread)
        self._P = np.zeros(0)  # ... member counts
        self._SS = np.zeros(0)  # ... sums of noise variances (transformed)
        self._SY = np.zeros(0)  # ... sums of values (transformed)
        self._SYY = np.zeros(0)  # ... sums of squared values (for the within-point scatter)
        self._noise_scale = 1.0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._scalars: list[tuple[float, ...]] = []  # single observations (inputs..., y, s^2), in order
        self._xlo = np.full(d, np.inf)
        self._xhi = np.full(d, -np.inf)
        self._sw = self._swy = self._swyy = 0.0
        self._ls_factor = 0.3
        self._warp: tuple[int, float] = (0, 0.0)
        self._amp = 1.0
        self._mu0 = 0.0
        self._calib = 1.0
        self._L = np.zeros((0, 0))
        self._alpha = np.zeros(0)
        self._clean = 0  # rows of _L still valid
        self._n_at_fit = 0
        self._n_at_fit_prev = 0
        # a seeded sample of (pseudo-point index, value, noise variance) in the modelled scale,
        # for the conformal prediction band
        self._cal = Reservoir(3, seed=seed)

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickle; a learner pickled before the conformal sample existed starts an empty one
        (its prediction band is Gaussian until new data fill it)."""
        self.__dict__.update(state)
        if "_cal" not in state:
            self._cal = Reservoir(3, seed=self.seed)

    # -- inputs ----------------------------------------------------------------------
    def _inputs(self, alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
        return np.column_stack([alloc, load]) if self.use_load else alloc

    def _transform(self, value: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and sigmas in the modelled scale (``check_batch`` has ruled out values <= 0)."""
        if not self.log_value:
            return value, sigma
        s = sigma / value  # delta method: sd of log(y) ~ sd(y) / y
        # E[log y] = log f - s^2 / 2 + O(s^4) for y = f + noise of sd sigma: undo the shift
        return np.log(value) + 0.5 * s * s, s

    @property
    def _lengthscales(self) -> np.ndarray:
        span = np.where(np.isfinite(self._xhi - self._xlo), self._xhi - self._xlo, 1.0)
        return self._ls_factor * np.maximum(span, 1e-9 + 1e-6 * np.abs(self._xhi))

    @property
    def _span(self) -> np.ndarray:
        span = np.where(np.isfinite(self._xhi - self._xlo), self._xhi - self._xlo, 1.0)
        return np.maximum(span, 1e-9 + 1e-6 * np.abs(self._xhi))

    def _warp_u(self, u: np.ndarray, warp: tuple[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """Warped position and its derivative for positions u (0 and 1 at the ends of the
        observed range); log-shaped inside, continued linearly outside the range."""
        side, g = warp
        if side == 0:
            return u, np.ones_like(u)
        v = u if side < 0 else 1.0 - u
        norm = math.log1p(1.0 / g)
        w = np.where(v >= 0, np.log1p(np.maximum(v, 0.0) / g), v / g) / norm
        dw = 1.0 / ((np.maximum(v, 0.0) + g) * norm)
        return (w, dw) if side < 0 else (1.0 - w, dw)

    def _Z(self, X: np.ndarray, ls: np.ndarray, warp: tuple[int, float] | None = None) -> np.ndarray:
        """Inputs in lengthscale units after the warp of the allocation dimensions."""
        warp = self._warp if warp is None else warp
        span = self._span
        lo = np.where(np.isfinite(self._xlo), self._xlo, 0.0)
        u = (X - lo) / span
        a = self.dim
        w, _ = self._warp_u(u[:, :a], warp)
        return np.column_stack([w, u[:, a:]]) * (span / ls) if X.shape[1] > a else w * (span / ls)

    def _Zdiff(self, X: np.ndarray, ls: np.ndarray, warp: tuple[int, float] | None = None) -> np.ndarray:
        """Derivative of ``_Z`` in each input at X (for the members' spread)."""
        warp = self._warp if warp is None else warp
        span = self._span
        lo = np.where(np.isfinite(self._xlo), self._xlo, 0.0)
        u = (X - lo) / span
        a = self.dim
        _, dw = self._warp_u(u[:, :a], warp)
        if X.shape[1] > a:
            dw = np.column_stack([dw, np.ones((len(X), X.shape[1] - a))])
        return dw / ls

    # -- learning --------------------------------------------------------------------
    def check_batch(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        if self.log_value and float(value.min()) <= 0:
            raise ValueError("gp_ucb with log_value=True needs values > 0")

    def _learn_batch(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        y, s = self._transform(value, sigma)
        # Queue; the working set absorbs queued data in one vectorized pass when next read.
        self._pack_scalars()  # keep arrival order
        self._pending.append((self._inputs(alloc, load), y, s**2))
        n = self.n_observations + len(y)
        if n >= max(8, 2 * self._n_at_fit):  # refit on doubling: O(log n) fits in all
            self._drain()
            self._fit_hyper(n)

    def learn_arrays(
        self,
        alloc: np.ndarray | Sequence[float],
        load: np.ndarray | Sequence[float] | float,
        value: np.ndarray | Sequence[float],
        sigma: np.ndarray | Sequence[float] | float,
    ) -> None:
        """As ``Learner.learn_arrays``; one scalar observation (a telemetry window) takes a
        plain-Python path: the same checks, then an append (the general path names problems)."""
        if self.dim != 1 or type(self).check_batch is not GPUCBLearner.check_batch:
            return super().learn_arrays(alloc, load, value, sigma)
        try:
            a, ld, v, sg = _scalar(alloc), _scalar(load), _scalar(value), _scalar(sigma)
        except TypeError:
            return super().learn_arrays(alloc, load, value, sigma)
        if not (math.isfinite(a) and math.isfinite(ld) and math.isfinite(v) and math.isfinite(sg)) \
                or a < 0 or ld < 0 or sg <= 0:
            return super().learn_arrays(alloc, load, value, sigma)
        if self.log_value:
            if v <= 0:
                raise ValueError("gp_ucb with log_value=True needs values > 0")
            sd = sg / v
            y = math.log(v) + 0.5 * sd * sd  # as in _transform
        else:
            y, sd = v, sg
        self._scalars.append((a, ld, y, sd * sd) if self.use_load else (a, y, sd * sd))
        self.n_observations += 1
        n = self.n_observations
        if n >= max(8, 2 * self._n_at_fit):  # refit on doubling, as in _learn_batch
            self._drain()
            self._fit_hyper(n)
        return None

    def _pack_scalars(self) -> None:
        """Turn queued single observations into one pending block (arrival order kept)."""
        sc = self.__dict__.get("_scalars")
        if sc:
            arr = np.array(sc, dtype=float)
            self._scalars = []
            d = self._d
            self._pending.append((arr[:, :d], arr[:, d], arr[:, d + 1]))

    def _sync(self) -> None:
        self._pack_scalars()
        if getattr(self, "_pending", None) and self._n_at_fit:
            self._drain()
            self._refresh()
            self._calibrate()

    def _drain(self) -> None:
        """Fold queued observations into the working set."""
        self._pack_scalars()
        if not self._pending:
            return
        X, y, s2 = (np.concatenate(c) for c in zip(*self._pending, strict=True))
        self._pending = []
        lo, hi = np.minimum(self._xlo, X.min(0)), np.maximum(self._xhi, X.max(0))
        if not (np.array_equal(lo, self._xlo) and np.array_equal(hi, self._xhi)):
            self._clean = 0  # lengthscales follow the observed range: every kernel entry moves
        self._xlo, self._xhi = lo, hi
        self._sw += float(len(y))
        self._swy += float(y.sum())
        self._swyy += float((y * y).sum())
        ls = self._lengthscales
        rest = np.ones(len(y), dtype=bool)
        home = np.zeros(len(y))  # the pseudo-point each observation joins
        if len(self._P):  # everything near an existing pseudo-point merges in one pass
            Z, Zc = self._Z(X, ls), self._Z(self._SX / self._P[:, None], ls)
            d2 = np.maximum((Z * Z).sum(1)[:, None] + (Zc * Zc).sum(1)[None, :] - 2 * Z @ Zc.T, 0)
            j = np.argmin(d2, axis=1)
            near = d2[np.arange(len(y)), j] <= self.merge_radius**2
            if len(self._P) >= self.max_points:
                near[:] = True
            self._merge(j[near], X[near], y[near], s2[near])
            home[near] = j[near]
            rest = ~near
        home[rest] = [self._absorb(xi, float(yi), float(si), ls)
                      for xi, yi, si in zip(X[rest], y[rest], s2[rest], strict=True)]
        self._cal.add(np.column_stack([home, y, s2]))

    def _merge(self, j: np.ndarray, X: np.ndarray, y: np.ndarray, s2: np.ndarray) -> None:
        if len(j) == 0:
            return
        m = len(self._P)
        self._P += np.bincount(j, minlength=m)
        self._SS += np.bincount(j, weights=s2, minlength=m)
        self._SY += np.bincount(j, weights=y, minlength=m)
        self._SYY += np.bincount(j, weights=y * y, minlength=m)
        for k in range(X.shape[1]):
            self._SX[:, k] += np.bincount(j, weights=X[:, k], minlength=m)
            self._SXX[:, k] += np.bincount(j, weights=X[:, k] ** 2, minlength=m)
        self._clean = min(self._clean, int(j.min()))

    def _absorb(self, x: np.ndarray, y: float, s2: float, ls: np.ndarray) -> int:
        """Merge one observation into its nearest pseudo-point or start a new one; its index."""
        m = len(self._P)
        if m:
            d2 = ((self._Z(self._SX / self._P[:, None], ls) - self._Z(x[None, :], ls)) ** 2).sum(1)
            j = int(np.argmin(d2))
            if d2[j] <= self.merge_radius**2 or m >= self.max_points:
                self._merge(np.array([j]), x[None, :], np.array([y]), np.array([s2]))
                return j
        self._SX = np.vstack([self._SX, x[None, :]])
        self._SXX = np.vstack([self._SXX, x[None, :] ** 2])
        self._P = np.append(self._P, 1.0)
        self._SS = np.append(self._SS, s2)
        self._SY = np.append(self._SY, y)
        self._SYY = np.append(self._SYY, y * y)
        return m

    @property
    def _C(self) -> np.ndarray:
        """Pseudo-point centroids."""
        return self._SX / self._P[:, None]

    @property
    def _Y(self) -> np.ndarray:
        """Pseudo-point mean values."""
        return self._SY / self._P

    def _noise_var(self) -> np.ndarray:
        """Noise variance of each pseudo-point's mean value (times the measured inflation)."""
        return self._noise_scale**2 * self._SS / self._P**2

    def _check_noise(self) -> None:
        """Members of a tight pseudo-point see nearly the same f: their scatter measures the
        noise. A chi-square test against the stated sigma; on failure, inflate it."""
        ls = self._lengthscales
        C = self._C
        spread = np.maximum(self._SXX / self._P[:, None] - C * C, 0.0)
        tight = (np.sqrt((spread * self._Zdiff(C, ls) ** 2).sum(1)) < 0.2) & (self._P >= 2)
        if not tight.any():
            return
        n, sy, syy, ss = self._P[tight], self._SY[tight], self._SYY[tight], self._SS[tight]
        scatter = float(np.maximum(syy - sy * sy / n, 0.0).sum())
        expected = float((ss * (n - 1) / n).sum())
        dof = float((n - 1).sum())
        if dof < 30 or expected <= 0:
            return
        stat = scatter / expected * dof
        if stats.chi2.sf(stat, dof) < FLAG_ALPHA:  # widen when significant, flag when also large
            self._noise_scale = float(np.sqrt(max(scatter / expected, 1.0)))
            if self._noise_scale > MIN_EFFECT:
                self._flag(f"noise {self._noise_scale:.2f}x the stated sigma (within-point scatter, chi-square)")
        else:
            self._noise_scale = 1.0

    def _spread_var(self, ls: np.ndarray, amp: float, warp: tuple[int, float] | None = None) -> np.ndarray:
        """Extra noise of each pseudo-point: its members sit around the centroid, not on it.

        Under the GP prior the average of f over the members differs from f(centroid) by a
        term of second order in r, the members' rms distance in lengthscales; its variance is
        approximated by amp^2 (1 - k(r))^2 and added, which keeps merged points honest.
        """
        C = self._C
        spread = np.maximum(self._SXX / self._P[:, None] - C * C, 0.0)
        r = np.sqrt((spread * self._Zdiff(C, ls, warp) ** 2).sum(1))[:, None]
        # The centroid cancels the first-order term; what is left is second order in r,
        # which (1 - k(r))^2 ~ (5/6)^2 r^4 tracks, and it saturates at amp^2 for far members.
        return amp * amp * (1.0 - matern52(r, np.zeros((1, 1)))[:, 0]) ** 2

    # -- hyperparameters and the factor --------------------------------------------------
    def _prior(self) -> tuple[float, float]:
        mu0 = self._swy / self._sw if self._sw > 0 else 0.0
        var = max(self._swyy / self._sw - mu0 * mu0, 0.0) if self._sw > 0 else 0.0
        noise = float(np.mean(self._noise_var())) if len(self._P) else 1.0
        # With little spread seen yet, keep the prior wide rather than trusting a tiny variance.
        return mu0, float(np.sqrt(max(var, noise, 1e-12)))

    def _kernel_matrix(self, sl: slice, ls: np.ndarray, amp: float, warp: tuple[int, float] | None = None) -> np.ndarray:
        """Covariance of pseudo-points ``sl`` including their noise and spread terms."""
        Z = self._Z(self._C[sl], ls, warp)
        K = amp * amp * matern52(Z, Z)
        K[np.diag_indices_from(K)] += (self._noise_var()[sl] + self._spread_var(ls, amp, warp)[sl]
                                       + JITTER * amp * amp)
        return K

    def _fit_hyper(self, n: int) -> None:
        """Grid search of the log marginal likelihood over lengthscale and amplitude factors."""
        self._n_at_fit_prev, self._n_at_fit = self._n_at_fit, n
        self._check_noise()
        mu0, sd = self._prior()
        span = np.maximum(np.where(np.isfinite(self._xhi - self._xlo), self._xhi - self._xlo, 1.0),
                          1e-9 + 1e-6 * np.abs(self._xhi))
        r = self._Y - mu0

        seen: dict[tuple[tuple[int, float], float, float], float] = {}

        def loglik(w: tuple[int, float], lf: float, amp: float) -> float:
            if (w, lf, amp) not in seen:  # the passes below revisit grid points
                seen[(w, lf, amp)] = _loglik(w, lf, amp)
            return seen[(w, lf, amp)]

        def _loglik(w: tuple[int, float], lf: float, amp: float) -> float:
            K = self._kernel_matrix(slice(None), lf * span, amp, w)
            try:
                cf = linalg.cho_factor(K, lower=True, check_finite=False)
            except linalg.LinAlgError:
                return -np.inf
            a = linalg.cho_solve(cf, r, check_finite=False)
            return float(-0.5 * r @ a - np.log(np.diag(cf[0])).sum())

        # Coordinate search: lengthscale at the current warp, warp at that lengthscale (and the
        # lengthscale again if the warp moved), amplitude, lengthscale: about 30 factorizations
        # instead of the 288 of the full grid.
        amp = max(self._amp, 1e-12) if self._n_at_fit_prev else sd
        best = (-np.inf, self._ls_factor, amp, self._warp)

        def line_lf(b: tuple[float, float, float, tuple[int, float]]) -> tuple[float, float, float, tuple[int, float]]:
            for lf in LENGTH_GRID:
                ll = loglik(b[3], lf, b[2])
                if ll > b[0]:
                    b = (ll, lf, b[2], b[3])
            return b

        best = line_lf(best)
        warp0 = best[3]
        for w in self.warp_grid:
            ll = loglik(w, best[1], best[2])
            if ll > best[0]:
                best = (ll, best[1], best[2], w)
        if best[3] != warp0:
            best = line_lf(best)
        for af in AMP_GRID:
            ll = loglik(best[3], best[1], af * sd)
            if ll > best[0]:
                best = (ll, best[1], af * sd, best[3])
        lls = {lf: loglik(best[3], lf, best[2]) for lf in LENGTH_GRID}
        top = max(lls.values())
        if np.isfinite(top):
            lf = min(k for k, v in lls.items() if v >= top - self.plausible_nats)
            best = (lls[lf], lf, best[2], best[3])
        self._warp = best[3]
        self._ls_factor, self._amp = best[1], best[2]
        self._mu0 = mu0
        self._clean = 0
        self._refresh()
        self._calibrate()

    def _refresh(self) -> None:
        """Bring the Cholesky factor and weights up to date, recomputing only changed rows."""
        m = len(self._P)
        k = min(self._clean, len(self._L), m)
        if k < m:
            ls = self._lengthscales
            Z = self._Z(self._C, ls)
            L = np.zeros((m, m))
            L[:k, :k] = self._L[:k, :k]
            K12 = self._amp**2 * matern52(Z[:k], Z[k:])
            K22 = self._kernel_matrix(slice(k, None), ls, self._amp)
            if k:
                L21 = linalg.solve_triangular(L[:k, :k], K12, lower=True, check_finite=False).T
                L[k:, :k] = L21
                K22 = K22 - L21 @ L21.T
            L[k:, k:] = linalg.cholesky(K22, lower=True, check_finite=False)
            self._L = L
            self._clean = m
        if m:
            self._alpha = linalg.cho_solve((self._L, True), self._Y - self._mu0, check_finite=False)

    def _calibrate(self) -> None:
        """Leave-one-out residuals of the working set against the model (closed form)."""
        m = len(self._P)
        if m < 10:
            return
        Kinv = linalg.cho_solve((self._L, True), np.eye(m), check_finite=False)
        z = self._alpha / np.sqrt(np.maximum(np.diag(Kinv), 1e-300))
        ss = float(z @ z)
        # Significant *and* large: at large n a tiny, harmless departure is significant too.
        too_big = stats.chi2.sf(ss, m) < FLAG_ALPHA and ss / m > MIN_EFFECT**2
        outlier = float(np.max(np.abs(z))) > MIN_EFFECT * stats.norm.isf(FLAG_ALPHA / (2 * m))
        if too_big or outlier:
            self._calib = max(1.0, float(np.sqrt(ss / m)), float(np.max(np.abs(z))) / stats.norm.isf(FLAG_ALPHA / (2 * m)))
            self._flag(
                "leave-one-out residuals contradict the GP (smoothness or noise): "
                f"mean z^2 = {ss / m:.2f}, max |z| = {np.max(np.abs(z)):.1f}"
            )
        else:
            # No contradiction, but plug-in hyperparameters still tend to be overconfident:
            # widen by the measured leave-one-out scale whenever it exceeds 1.
            self._calib = max(1.0, float(np.sqrt(ss / m)))

    # -- queries ---------------------------------------------------------------------
    def bounds(self, alloc: np.ndarray, load: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = as_alloc_matrix(alloc, self.dim)
        ld = np.broadcast_to(np.asarray(load, dtype=float), (len(a),))
        if not np.all(np.isfinite(ld)) or np.any(ld < 0):
            raise ValueError("load must be finite and >= 0")
        self._drain()
        if len(self._P) == 0:
            lo = 0.0 if self.log_value else -np.inf
            return np.full(len(a), lo), np.full(len(a), np.inf), np.full(len(a), np.inf)
        if self._n_at_fit == 0:
            self._fit_hyper(self.n_observations)
        mean, sd = self._posterior(a, ld)
        half = self.beta * sd
        lo, hi = mean - half, mean + half
        if self.log_value:
            return np.exp(lo), np.exp(mean), np.exp(hi)
        return lo, mean, hi

    def _posterior(self, a: np.ndarray, ld: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of f (modelled scale, sd times the LOO inflation) at (a, ld);
        the working set must be non-empty and fitted."""
        self._refresh()
        ls = self._lengthscales
        Ks = self._amp**2 * matern52(self._Z(self._inputs(a, ld), ls), self._Z(self._C, ls))
        mean = self._mu0 + Ks @ self._alpha
        v = linalg.solve_triangular(self._L, Ks.T, lower=True, check_finite=False)
        var = np.maximum(self._amp**2 - (v * v).sum(0), 0.0)
        return mean, self._calib * np.sqrt(var)

    def noise_sd(self) -> float:
        """Typical noise std of one observation in the modelled scale (log if ``log_value``),
        as stated by the data's sigmas and inflated by the measured factor."""
        self._drain()
        if self._sw <= 0:
            return float("nan")
        return float(self._noise_scale * np.sqrt(self._SS.sum() / self._P.sum()))

    def predictive_bounds(
        self, alloc: np.ndarray, load: np.ndarray | float, sigma: np.ndarray | float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interval for a new measurement (multiplicative when ``log_value``).

        Without ``sigma``: conformal (``learners.conformal``). Each observation of a seeded
        sample of the training data is scored against the GP with its own pseudo-point left
        out (closed form), as |residual| / sqrt(f_sd^2 + s^2); the band is the estimate +/- the
        scores' finite-sample (1 - delta) quantile times that sd at the query. Unlike a
        Gaussian noise band this has the measured scale of real noise (P99 windows are bimodal
        and skewed), and the estimate's uncertainty enters in quadrature instead of being
        added to a noise band (which made the band on the real runs 45 s wide). While the
        sample is too small: estimate +/- z * sqrt(f_sd^2 + noise_sd^2).
        """
        if sigma is not None:
            return super().predictive_bounds(alloc, load, sigma)
        lcb, mean, ucb = self.bounds(alloc, load)
        if len(self._P) == 0:
            return lcb, mean, ucb
        a = as_alloc_matrix(alloc, self.dim)
        m, f_sd = self._posterior(a, np.broadcast_to(np.asarray(load, dtype=float), (len(a),)))
        band = None
        if len(self._P) >= 10 and len(self._cal):
            resid, resid_sd = self._held_out_residuals()
            band = calibrated_band(m, f_sd, resid, resid_sd, self.delta)
        if band is None:
            z = float(stats.norm.isf(self.delta / 2))
            sd = np.sqrt(f_sd**2 + self.noise_sd() ** 2)
            band = (m - z * sd, m + z * sd)
        lo, hi = band
        if self.log_value:
            return np.exp(lo), mean, np.exp(hi)
        return lo, mean, hi

    def _held_out_residuals(self) -> tuple[np.ndarray, np.ndarray]:
        """Residuals of the calibration sample against the GP without the observation's
        pseudo-point (its members' values are in that point's mean), and the sd of f there."""
        m = len(self._P)
        Kinv_diag = np.diag(linalg.cho_solve((self._L, True), np.eye(m), check_finite=False))
        loo_mean = self._Y - self._alpha / Kinv_diag
        # 1 / Kinv_jj is the variance of point j's mean value given the others: f's part of it
        # is what is left after its noise and spread terms
        own = self._noise_var() + self._spread_var(self._lengthscales, self._amp) + JITTER * self._amp**2
        loo_f_sd = self._calib * np.sqrt(np.maximum(1.0 / Kinv_diag - own, 0.0))
        j, y, _ = self._cal.sample.T
        j = j.astype(np.int64)
        return y - loo_mean[j], loo_f_sd[j]

    def explain(self) -> dict[str, object]:
        self._drain()
        out = super().explain()
        out.update(
            working_set=len(self._P),
            max_points=self.max_points,
            lengthscales=[float(v) for v in self._lengthscales],
            input_warp={"side": self._warp[0], "g": self._warp[1]},
            amplitude=self._amp,
            prior_mean=self._mu0,
            calibration_inflation=self._calib,
            noise_scale=self._noise_scale,
            beta=self.beta,
            log_value=self.log_value,
            bound="pointwise posterior interval (mean +/- beta * std), inflated when LOO residuals disagree",
        )
        return out
