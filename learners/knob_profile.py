"""Online knob profiles: (knob, cpu, load) -> latency, memory and accuracy, with confidence bounds.

Pure (numpy, scipy, cluster_mgr.model). One ``KnobProfileLearner`` per
inference job holds, per knob setting:

- service time of one request on one full core: a lognormal fit to samples
  (seeded by offline profiling, then appended from the per-request execution
  times each window reports, so interference or a slower node shows up). Its
  upper bound uses the t bound on the log-mean and the chi-square bound on the
  log-sd. Samples remember the window they came from, and the fit is the one
  with the lowest upper service quantile among the whole pool and the pool
  without its slowest window (once three windows are held): a single slow
  window (one burst of interference) cannot raise the bounds, two can.
- P99 latency at (cpu, load): a replica with ``cpu`` runs n = ceil(cpu)
  single-threaded workers at speed cpu / n (the CPU quota is shared); waiting
  follows the M/M/n (Erlang C) tail scaled by (1 + cs^2) / 2 for general service
  (Allen-Cunneen). P99 of response <= q_.995(service) + q_.995(wait) (union
  bound). Observed window P99s calibrate it: the model's mean is multiplied by
  exp(mean log residual), the upper bound by exp(UCB of the residual) when positive.
- memory: weights + n x per-request working set; deterministic per (knob, n),
  corrected to the measured value when a window reports one.
- accuracy: Wilson interval over offline held-out counts plus labelled feedback.

``KnobLatencyModel`` exposes one knob's latency as a ``learners.base.Learner``
(allocation = cpu, value = P99 ms, monotone decreasing) for controllers that
speak that interface.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from cluster_mgr.queueing import erlang_c
from learners.base import Learner, as_alloc_matrix

MB = 1024.0 * 1024.0


@lru_cache(maxsize=4096)
def _t_ppf(p: float, dof: int) -> float:
    return float(stats.t.ppf(p, dof))  # cached: the robust fit asks for it once per window held


@lru_cache(maxsize=4096)
def _chi2_ppf(p: float, dof: int) -> float:
    return float(stats.chi2.ppf(p, dof))


@dataclass(frozen=True)
class KnobPrior:
    """What offline profiling measured for one knob setting (plain data)."""

    knob: str
    latency_ms: tuple[float, ...]  # per request, one full core
    weight_bytes: int
    activation_bytes: int  # per in-flight request (per worker)
    correct: int
    total: int


def workers_for(cpu: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(workers, speed per worker) for a CPU quota: ceil(cpu) threads sharing it."""
    c = np.maximum(np.asarray(cpu, dtype=float), 1e-9)
    n = np.maximum(1.0, np.ceil(c - 1e-9))
    return n, c / n


def wilson(correct: np.ndarray, total: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    p = correct / np.maximum(total, 1)
    den = 1 + z * z / total
    mid = (p + z * z / (2 * total)) / den
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / den
    return np.clip(mid - half, 0, 1), np.clip(mid + half, 0, 1)


@dataclass(frozen=True)
class Grid:
    """Estimates for every knob (rows) at every cpu of a grid (columns), at one load."""

    knobs: tuple[str, ...]
    cpus: np.ndarray  # (C,)
    latency_mean: np.ndarray  # (K, C) P99 ms
    latency_hi: np.ndarray  # (K, C)
    memory_mb: np.ndarray  # (K, C)
    accuracy: np.ndarray  # (K,)
    accuracy_lo: np.ndarray  # (K,)
    accuracy_hi: np.ndarray  # (K,)


class KnobProfileLearner:
    """Per-job online model of every knob setting; see the module docstring."""

    name = "knob_profile"

    def __init__(
        self,
        priors: Sequence[KnobPrior],
        *,
        delta: float = 0.05,
        quantile: float = 0.99,
        max_utilization: float = 0.9,
        window: int = 400,
        reference: str | None = None,
    ) -> None:
        """``reference``: the full-accuracy knob that accuracy loss is counted against
        (default: the knob holding the most weight bytes, the first of equals)."""
        if not priors:
            raise ValueError("knob_profile: at least one knob prior is needed")
        if not 0 < delta < 1 or not 0.5 < quantile < 1:
            raise ValueError("knob_profile: delta in (0, 1) and quantile in (0.5, 1) required")
        self.delta, self.quantile, self.max_utilization = delta, quantile, max_utilization
        self.knobs = tuple(p.knob for p in priors)
        self.index = {k: i for i, k in enumerate(self.knobs)}
        if len(self.index) != len(self.knobs):
            raise ValueError("knob_profile: duplicate knob ids")
        self._samples = [deque(p.latency_ms, maxlen=window) for p in priors]
        # the window each sample came from (0: offline profiling), evicted with its sample
        self._groups = [deque([0] * len(p.latency_ms), maxlen=window) for p in priors]
        self._next_group = 1
        for p in priors:
            if len(p.latency_ms) < 3 or min(p.latency_ms) <= 0:
                raise ValueError(f"knob_profile: knob {p.knob} needs >= 3 positive latency samples")
        self.weight_bytes = np.array([p.weight_bytes for p in priors], float)
        self.activation_bytes = np.array([p.activation_bytes for p in priors], float)
        self.correct = np.array([p.correct for p in priors], float)
        self.total = np.array([p.total for p in priors], float)
        self._resid: deque[tuple[int, float]] = deque(maxlen=window)  # (knob index, log residual)
        self.n_windows = 0
        if reference is not None and reference not in self.index:
            raise ValueError(f"knob_profile: reference knob {reference!r} is not among the priors")
        heaviest = int(np.argmax(self.weight_bytes))  # argmax: the first of equals
        self.reference_knob = reference if reference is not None else self.knobs[heaviest]
        # Most approximate: least memory, then least time, then most accurate (as the benchmark picks).
        prior_ms = [float(np.mean(p.latency_ms)) for p in priors]
        order = sorted(
            range(len(priors)),
            key=lambda i: (self.weight_bytes[i], prior_ms[i], -self.correct[i] / self.total[i]),
        )
        self.most_approximate_knob = self.knobs[order[0]]
        self._z_union = float(stats.norm.ppf(1 - (1 - quantile) / 2))  # the upper side's quantile
        self._fit()

    # -- learning ----------------------------------------------------------------------
    def _fit(self, only: int | None = None) -> None:
        """Lognormal parameters per knob (all, or knob ``only``), with (1 - delta) upper bounds:
        t bound on the log-mean, chi-square bound on the log-sd.

        Robust to one window: with three or more windows held, the pool without the slowest
        window (by log-mean, and by its slowest sample) is fitted too and the fit with the
        lowest upper service quantile wins. One window of 16 samples 3x slower among 400
        would otherwise raise that quantile about 1.6x (its log-sd) or to the outlier itself
        (the empirical floor), and with it the CPU the policy gives the job; a real slowdown
        shows in the next window too, and is learned then. The price: in steady state the
        slowest window is left out, a bias of one window's worth of samples (16 of 400 in
        the sim and on Ray)."""
        if only is None:
            k = len(self._samples)
            self._mu, self._sd = np.zeros(k), np.zeros(k)
            self._mu_hi, self._sd_hi = np.zeros(k), np.zeros(k)
            self._emp = np.zeros((k, 4))  # mean, mean UCB, q, q for the union bound
        for i in range(len(self._samples)) if only is None else (only,):
            raw = np.asarray(self._samples[i], float)
            grp = np.asarray(self._groups[i])
            held, inv = np.unique(grp, return_inverse=True)
            cands: list[int | None] = [None]
            if len(held) >= 3:
                # the windows that can raise the upper quantile most: the slowest on average
                # (log-mean, log-sd) and the one holding the slowest sample (empirical tail);
                # fitting every leave-one-out pool cost 20-35 ms per window at 400 samples
                logmean = np.bincount(inv, np.log(raw)) / np.bincount(inv)
                cands += sorted({int(held[np.argmax(logmean)]), int(grp[np.argmax(raw)])})
            best: tuple[float, tuple[float, float, float, float], np.ndarray] | None = None
            for g in cands:
                x = raw if g is None else raw[grp != g]
                if g is not None and len(x) < 3:
                    continue
                fit, emp = self._fit_pool(x)
                upper = max(math.exp(fit[2] + self._z_union * fit[3]), float(emp[3]))
                if best is None or upper < best[0]:
                    best = (upper, fit, emp)
            if best is not None:  # always: the whole pool is a candidate
                _, (self._mu[i], self._sd[i], self._mu_hi[i], self._sd_hi[i]), self._emp[i] = best

    def _fit_pool(self, raw: np.ndarray) -> tuple[tuple[float, float, float, float], np.ndarray]:
        """(mu, sd, mu upper bound, sd upper bound) of log samples, and the empirical floors."""
        m = len(raw)
        qu = 1 - (1 - self.quantile) / 2
        # Interference gives heavy tails a lognormal underweights: the empirical
        # mean and quantiles are floors the model may not go below.
        t = _t_ppf(1 - self.delta, m - 1)
        emp = np.array(
            [
                raw.mean(),
                raw.mean() + t * raw.std(ddof=1) / math.sqrt(m),
                np.quantile(raw, self.quantile),
                np.quantile(raw, qu),
            ]
        )
        x = np.log(raw)
        mu, sd = float(x.mean()), max(float(x.std(ddof=1)), 1e-3)
        mu_hi = mu + t * sd / math.sqrt(m)
        sd_hi = sd * math.sqrt((m - 1) / _chi2_ppf(self.delta, m - 1))
        return (mu, sd, mu_hi, sd_hi), emp

    def learn_window(
        self,
        knob: str,
        cpu: float,
        load: float,
        *,
        p99_ms: float | None = None,
        service_ms: Sequence[float] = (),
        memory_bytes: float | None = None,
        correct: int = 0,
        labelled: int = 0,
    ) -> None:
        """One window of one job served with ``knob`` at (cpu, load).

        ``service_ms`` are per-request execution times as measured (at the
        worker speed the quota gave); they are normalised to one full core.
        The samples of one call form one window: the fit may leave out one
        window's samples (see ``_fit``), so one call should be one window.
        """
        i = self.index[knob]
        if cpu <= 0 or load < 0 or labelled < correct or correct < 0:
            raise ValueError("knob_profile: cpu > 0, load >= 0 and 0 <= correct <= labelled needed")
        if p99_ms is not None and not (math.isfinite(p99_ms) and p99_ms > 0):
            raise ValueError(f"knob_profile: p99_ms must be finite and > 0, got {p99_ms}")
        # residual against the model as it was before this window's samples
        if p99_ms is not None:
            pred = self._latency(np.array([i]), np.array([cpu]), load, raw=True)[0][0, 0]
            if math.isfinite(pred) and pred > 0:
                self._resid.append((i, math.log(p99_ms / pred)))
        if service_ms:
            _, speed = workers_for(cpu)
            got = [float(s) * float(speed) for s in service_ms if s > 0]
            if got:  # one window's samples share a group: the fit may leave one window out
                self._samples[i].extend(got)
                self._groups[i].extend([self._next_group] * len(got))
                self._next_group += 1
                self._fit(i)
        if memory_bytes is not None:
            n, _ = workers_for(cpu)
            self.weight_bytes[i] = max(0.0, memory_bytes - float(n) * self.activation_bytes[i])
        self.correct[i] += correct
        self.total[i] += labelled
        self.n_windows += 1

    # -- queries ---------------------------------------------------------------------
    def n_samples(self, knob: str) -> int:
        """Service-time samples held for ``knob`` (priors and learned, within the window)."""
        return len(self._samples[self.index[knob]])

    def _calibration(self) -> tuple[float, float]:
        """(multiplier for the mean, multiplier for the upper bound) from observed residuals."""
        if len(self._resid) < 3:
            return 1.0, 1.0
        r = np.array([x for _, x in self._resid])
        m, s = r.mean(), r.std(ddof=1)
        hi = m + stats.t.ppf(1 - self.delta, len(r) - 1) * s / math.sqrt(len(r))
        return math.exp(m), math.exp(max(0.0, hi))

    def _latency(
        self, idx: np.ndarray, cpus: np.ndarray, load: float, raw: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean-side, upper-side) P99 ms for knobs idx (K,) x cpus (C,)."""
        n, speed = workers_for(cpus)
        n, speed = n[None, :], speed[None, :]
        qs = stats.norm.ppf(self.quantile)
        qu = stats.norm.ppf(1 - (1 - self.quantile) / 2)  # union bound: half the tail to each term
        out = []
        emp = self._emp[idx]
        for mu, sd, q, e_mean, e_q in (
            (self._mu[idx], self._sd[idx], qs, emp[:, 0], emp[:, 2]),
            (self._mu_hi[idx], self._sd_hi[idx], qu, emp[:, 1], emp[:, 3]),
        ):
            mu, sd = mu[:, None], sd[:, None]
            # ms at the worker speed: lognormal mean / quantile, floored by the empirical ones
            s_mean = np.maximum(np.exp(mu + sd * sd / 2), e_mean[:, None]) / speed
            s_q = np.maximum(np.exp(mu + q * sd), e_q[:, None]) / speed
            cs2 = np.exp(sd * sd) - 1.0  # squared coefficient of variation of a lognormal
            a = load * s_mean / 1e3  # offered load in workers
            rho = a / n
            pw = erlang_c(n, a)
            tail = 1 - self.quantile if q is qs else (1 - self.quantile) / 2
            drain = (n - a) / s_mean  # (n*mu - lambda) in 1/ms
            with np.errstate(divide="ignore", invalid="ignore"):
                w_q = np.where(pw > tail, np.log(pw / tail) / drain, 0.0) * (1 + cs2) / 2
            lat = s_q + w_q
            cap = 1.0 if q is qs else self.max_utilization
            out.append(np.where(rho < cap, lat, np.inf))
        if raw:
            return out[0], out[1]
        c_mean, c_hi = self._calibration()
        return out[0] * c_mean, out[1] * c_hi

    def grid(self, cpus: np.ndarray, load: float) -> Grid:
        """Every knob at every cpu of ``cpus`` at ``load`` requests/s."""
        cpus = np.asarray(cpus, float)
        idx = np.arange(len(self.knobs))
        lat_mean, lat_hi = self._latency(idx, cpus, max(load, 0.0))
        n, _ = workers_for(cpus)
        mem = (self.weight_bytes[:, None] + n[None, :] * self.activation_bytes[:, None]) / MB
        z = stats.norm.ppf(1 - self.delta / 2)
        lo, hi = wilson(self.correct, self.total, z)
        return Grid(
            knobs=self.knobs,
            cpus=cpus,
            latency_mean=lat_mean,
            latency_hi=lat_hi,
            memory_mb=mem,
            accuracy=self.correct / self.total,
            accuracy_lo=lo,
            accuracy_hi=hi,
        )

    def estimate(self, knob: str, cpu: float, load: float) -> dict[str, float]:
        g = self.grid(np.array([cpu]), load)
        i = self.index[knob]
        return {
            "latency_p99_ms": float(g.latency_mean[i, 0]),
            "latency_p99_hi_ms": float(g.latency_hi[i, 0]),
            "memory_mb": float(g.memory_mb[i, 0]),
            "accuracy": float(g.accuracy[i]),
            "accuracy_lo": float(g.accuracy_lo[i]),
            "accuracy_hi": float(g.accuracy_hi[i]),
        }

    def to_state(self) -> dict[str, object]:
        """Plain data to replay the learner after a restart."""
        return {
            "samples": {k: list(s) for k, s in zip(self.knobs, self._samples, strict=True)},
            "groups": {k: list(g) for k, g in zip(self.knobs, self._groups, strict=True)},
            "correct": self.correct.tolist(),
            "total": self.total.tolist(),
            "resid": [[self.knobs[i], r] for i, r in self._resid],
        }


class KnobLatencyModel(Learner):
    """One knob's P99 latency as a Learner: allocation = cpu, value = P99 ms (lower is better)."""

    name = "knob_latency"
    monotone = "decreasing"

    def __init__(self, profile: KnobProfileLearner, knob: str, *, delta: float = 0.05) -> None:
        super().__init__(delta=delta, dim=1)
        if knob not in profile.index:
            raise ValueError(f"knob_latency: unknown knob {knob!r}")
        self.profile, self.knob = profile, knob

    def _learn_batch(
        self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray
    ) -> None:
        if np.any(value <= 0) or np.any(alloc[:, 0] <= 0):
            raise ValueError("knob_latency: P99 and cpu must be > 0")
        for a, lo, v in zip(alloc[:, 0], load, value, strict=True):
            self.profile.learn_window(self.knob, float(a), float(lo), p99_ms=float(v))

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = as_alloc_matrix(alloc, 1)[:, 0]
        loads = np.broadcast_to(np.asarray(load, float), a.shape)
        i = np.array([self.profile.index[self.knob]])
        mean = np.empty_like(a)
        hi = np.empty_like(a)
        for j, (c, lo) in enumerate(zip(a, loads, strict=True)):
            m, h = self.profile._latency(i, np.array([max(c, 1e-6)]), float(lo))
            mean[j], hi[j] = m[0, 0], h[0, 0]
        # P99 of response >= median service time at the worker speed (no queueing, no tail)
        _, speed = workers_for(np.maximum(a, 1e-6))
        lower = np.exp(self.profile._mu[i[0]]) / speed
        return np.minimum(lower, mean), mean, hi


class KnobProfileModel(Learner):
    """A job's ``KnobProfileLearner`` behind the ``Learner`` interface.

    The allocator's learner bank holds one per inference job, so the knob
    policy finds it in ``snapshot.models`` (it has ``grid``). Knob-level
    feedback comes through ``learn_window`` (the runtime knows which knob was in
    force); the bank's reward-only observations carry no knob, so they are
    counted, not learned. ``bounds`` answers the generic question (reward =
    the window's P99 within the latency bound) for the knob last in force:
    lcb from the latency upper bound, mean from the mean, ucb from the no-queue
    median (no claim of monotonicity: see ``monotone``).
    """

    name = "knob_profile"
    # Not monotone: just above an integer CPU one more worker shares the quota, so each request
    # runs slower (the worker model of the module docstring) and the step may fall back to 0.
    monotone = None

    def __init__(
        self,
        profile: KnobProfileLearner,
        *,
        latency_bound_ms: float = math.inf,
        knob: str | None = None,
        delta: float = 0.05,
    ) -> None:
        super().__init__(delta=delta, dim=1)
        self.profile = profile
        self.knob = knob if knob is not None else profile.reference_knob
        if self.knob not in profile.index:
            raise ValueError(f"knob_profile: unknown knob {self.knob!r}")
        self.latency_bound_ms = float(latency_bound_ms)

    @property
    def knobs(self) -> tuple[str, ...]:
        return self.profile.knobs

    @property
    def reference_knob(self) -> str:
        return self.profile.reference_knob

    @property
    def most_approximate_knob(self) -> str:
        return self.profile.most_approximate_knob

    def grid(self, cpus: np.ndarray, load: float) -> Grid:
        return self.profile.grid(cpus, load)

    def learn_window(self, knob: str, cpu: float, load: float, **window: object) -> None:
        """One window served with ``knob``; see ``KnobProfileLearner.learn_window``."""
        self.profile.learn_window(knob, cpu, load, **window)  # type: ignore[arg-type]
        self.knob = knob

    def _learn_batch(
        self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray
    ) -> None:
        return None  # no knob in a reward observation: nothing to attribute it to

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.maximum(as_alloc_matrix(alloc, 1)[:, 0], 1e-6)
        loads = np.broadcast_to(np.asarray(load, float), a.shape)
        i = np.array([self.profile.index[self.knob]])
        mean = np.empty_like(a)
        hi = np.empty_like(a)
        for j, (c, ld) in enumerate(zip(a, loads, strict=True)):
            m, h = self.profile._latency(i, np.array([c]), max(float(ld), 0.0))
            mean[j], hi[j] = m[0, 0], h[0, 0]
        _, speed = workers_for(a)
        fastest = np.exp(self.profile._mu[i[0]]) / speed
        b = self.latency_bound_ms
        return (
            (hi <= b).astype(float),
            (mean <= b).astype(float),
            (fastest <= b).astype(float),
        )
