"""Ground-truth performance curves for the conformance kit and benchmarks (pure numpy).

- ``cilantro:<family>``: Cilantro's reward families, reward = mu(k * alloc / load).
- ``queue_slo``: M/M/c SLO attainment, reward = P(response time <= slo) with c = alloc
  servers (linear interpolation between integer c), lambda = load.
- ``queue_p99:<d>``: end-to-end P99 latency (ms) of d M/M/c stations in tandem, taken as
  the sum of the stations' P99s (a stated approximation; decreasing in every c_i).
- ``ernest``: time = t0 + t1 * load / alloc + t2 * log(alloc) + t3 * alloc.
- ``step:<base>`` and ``bump:<base>``: a base curve plus a jump (breaks Lipschitz
  and smoothness) or minus a narrow dip (breaks monotonicity), and
  ``loud:<base>``: noise three times the stated sigma, for the misspecification
  checks.

Every curve is a function of (alloc, load; theta), so an oracle that knows the
form and the noise but not theta can be built from its Jacobian in theta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from cluster_mgr.curves import DEFAULT_BIAS, mu
from cluster_mgr.queueing import erlang_c

CurveFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- queueing math


def _tail_parts(c: np.ndarray, lam: np.ndarray, mu_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Erlang-C waiting probability and the waiting-time rate c*mu - lambda (integer c)."""
    pc = erlang_c(c, lam / mu_)
    theta = c * mu_ - lam
    # theta == mu makes the hypoexponential formula 0/0; nudge it (the limit is continuous)
    return pc, np.where(np.abs(theta - mu_) < 1e-9 * mu_, mu_ * (1 + 1e-6), theta)


def _tail_at(pc: np.ndarray, th: np.ndarray, mu_: np.ndarray, t: np.ndarray) -> np.ndarray:
    """P(response > t): no wait (prob. 1 - pc) then Exp(mu) service, or Exp(th) wait plus service."""
    hypo = (th * np.exp(-mu_ * t) - mu_ * np.exp(-th * t)) / (th - mu_)
    return (1.0 - pc) * np.exp(-mu_ * t) + pc * hypo


def _tail(c: np.ndarray, lam: np.ndarray, mu_: np.ndarray, t: np.ndarray) -> np.ndarray:
    """P(response > t) in a stable M/M/c queue (integer c)."""
    pc, th = _tail_parts(c, lam, mu_)
    return _tail_at(pc, th, mu_, t)


def _interp_c(fn: Callable[[np.ndarray], np.ndarray], c: np.ndarray) -> np.ndarray:
    lo = np.floor(c)
    frac = c - lo
    return (1 - frac) * fn(lo) + frac * fn(lo + 1)


def mmc_slo_attainment(c: np.ndarray, lam: np.ndarray, mu_: float, slo: float) -> np.ndarray:
    """P(response <= slo) for c servers (real-valued, interpolated); 0 when unstable."""
    c = np.asarray(c, dtype=float)
    lam = np.broadcast_to(np.asarray(lam, dtype=float), c.shape)

    def at(ci: np.ndarray) -> np.ndarray:
        stable = ci * mu_ > lam * (1 + 1e-9)
        cs = np.where(stable, np.maximum(ci, 1), 1)
        ls = np.where(stable, lam, 0.5 * mu_)
        return np.where(stable, 1.0 - _tail(cs, ls, np.full(c.shape, mu_), np.full(c.shape, slo)), 0.0)

    return _interp_c(at, c)


def mmc_p99(c: np.ndarray, lam: np.ndarray, mu_: np.ndarray, q: float = 0.99) -> np.ndarray:
    """The q-quantile of response time for c servers (real-valued, interpolated; needs c*mu > lam)."""
    c = np.asarray(c, dtype=float)
    lam = np.broadcast_to(np.asarray(lam, dtype=float), c.shape)
    mu_ = np.broadcast_to(np.asarray(mu_, dtype=float), c.shape)

    def at(ci: np.ndarray) -> np.ndarray:
        ci = np.maximum(ci, 1)
        pc, th = _tail_parts(ci, lam, mu_)
        lo = np.zeros(c.shape)
        hi = np.full(c.shape, 50.0) / np.minimum(mu_, np.maximum(ci * mu_ - lam, 1e-9))
        for _ in range(50):  # bisection on the tail
            mid = 0.5 * (lo + hi)
            over = _tail_at(pc, th, mu_, mid) > 1 - q
            lo, hi = np.where(over, mid, lo), np.where(over, hi, mid)
        return 0.5 * (lo + hi)

    return _interp_c(at, c)


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class Truth:
    """A curve with its parameters, domain and noise model."""

    name: str
    dim: int
    fn: CurveFn
    theta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    load_range: tuple[float, float]
    noise: float
    relative_noise: bool = False
    monotone: str | None = None
    extra: dict[str, float] = field(default_factory=dict)
    loudness: float = 1.0  # true noise / stated sigma (1 unless the curve is a "loud:" breaker)

    def value(self, alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
        return self.fn(np.asarray(alloc, dtype=float).reshape(-1, self.dim), np.asarray(load, dtype=float), self.theta)

    def sigma(self, alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
        if self.relative_noise:
            return self.noise * np.abs(self.value(alloc, load))
        return np.full(len(np.asarray(load).reshape(-1)), self.noise)

    def design(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n allocations uniform over the domain and loads uniform over the load range."""
        alloc = self.lo + (self.hi - self.lo) * rng.random((n, self.dim))
        load = rng.uniform(*self.load_range, size=n) if self.load_range[1] > self.load_range[0] \
            else np.full(n, self.load_range[0])
        return alloc, load

    def sample(self, alloc: np.ndarray, load: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Noisy observations (Gaussian, ``loudness`` times the stated sigma) and the stated sigma."""
        f = self.value(alloc, load)
        s = self.sigma(alloc, load)
        return f + self.loudness * s * rng.standard_normal(len(f)), s


def _cilantro(family: str, rng: np.random.Generator) -> Truth:
    span = {"tanh": 3.0, "inverse": 10.0, "logistic": 15.0, "linear": 1.5}[family]
    bias = DEFAULT_BIAS.get(family, 0.0)
    load = float(rng.uniform(100, 1000))
    amax = float(rng.uniform(8, 64))
    k = span * load / amax  # so that k * amax / load = span: the curve saturates inside the domain

    def fn(a: np.ndarray, ld: np.ndarray, th: np.ndarray) -> np.ndarray:
        return mu(family, th[0] * a[:, 0] / np.maximum(ld, 1e-12), bias)

    return Truth(f"cilantro:{family}", 1, fn, np.array([k]), np.zeros(1), np.array([amax]), (load, load),
                 float(rng.uniform(0.02, 0.1)), monotone="increasing")


def _queue_slo(rng: np.random.Generator) -> Truth:
    amax = float(rng.uniform(8, 48))
    lam = float(rng.uniform(50, 500))
    mu_ = lam / (0.6 * amax)
    slo = 3.0 / mu_  # three mean service times: attainment tends to 1 - e^-3

    def fn(a: np.ndarray, ld: np.ndarray, th: np.ndarray) -> np.ndarray:
        return mmc_slo_attainment(a[:, 0], ld, float(th[0]), slo)

    return Truth("queue_slo", 1, fn, np.array([mu_]), np.zeros(1), np.array([amax]), (lam, lam),
                 float(rng.uniform(0.02, 0.1)), monotone="increasing", extra={"slo": slo})


def _queue_p99(d: int, rng: np.random.Generator) -> Truth:
    lam = float(rng.uniform(0.2, 1.0))  # requests per ms
    a = rng.uniform(2, 8, d)  # offered load per station, in servers
    k = np.ceil(a / 0.85)  # the domain starts at the first count with utilization <= 0.85
    mus = lam / a

    def fn(al: np.ndarray, ld: np.ndarray, th: np.ndarray) -> np.ndarray:
        ld = np.broadcast_to(ld, (len(al),))
        return sum(mmc_p99(al[:, i], ld, np.full(len(al), th[i])) for i in range(d))

    return Truth(f"queue_p99:{d}", d, fn, mus, k, 3.0 * k, (lam, lam),
                 0.05, relative_noise=True, monotone="decreasing")


def _ernest(rng: np.random.Generator) -> Truth:
    theta = np.array([rng.uniform(1, 10), rng.uniform(50, 500), rng.uniform(0, 2), rng.uniform(0, 0.2)])

    def fn(a: np.ndarray, ld: np.ndarray, th: np.ndarray) -> np.ndarray:
        x = a[:, 0]
        return th[0] + th[1] * ld / x + th[2] * np.log(x) + th[3] * x

    return Truth("ernest", 1, fn, theta, np.ones(1), np.array([64.0]), (1.0, 10.0), float(rng.uniform(0.5, 2.0)))


def _broken(kind: str, base: Truth) -> Truth:
    """``base`` with a jump (step) or a narrow dip (bump) in the middle of the first coordinate."""
    grid = base.lo + (base.hi - base.lo) * np.linspace(0, 1, 201)[:, None]
    ld0 = np.full(len(grid), base.load_range[0])
    vals = base.value(grid, ld0)
    rng_v = float(vals.max() - vals.min()) or 1.0
    mid = float(base.lo[0] + 0.5 * (base.hi[0] - base.lo[0]))
    width = float(0.04 * (base.hi[0] - base.lo[0]))
    sign = -1.0 if base.monotone == "decreasing" else 1.0

    def fn(a: np.ndarray, ld: np.ndarray, th: np.ndarray) -> np.ndarray:
        f = base.fn(a, ld, th)
        if kind == "step":
            return f + sign * 0.3 * rng_v * (a[:, 0] > mid)
        return f - sign * 0.4 * rng_v * np.exp(-(((a[:, 0] - mid) / width) ** 2))

    return Truth(f"{kind}:{base.name}", base.dim, fn, base.theta, base.lo, base.hi, base.load_range,
                 base.noise, base.relative_noise, base.monotone if kind == "step" else None)


def make_truth(name: str, rng: np.random.Generator) -> Truth:
    """A random member of the curve family ``name`` (see the module docstring)."""
    if name.startswith("loud:"):
        return replace(make_truth(name.split(":", 1)[1], rng), loudness=3.0,
                       name=name)
    if name.startswith(("step:", "bump:")):
        kind, base = name.split(":", 1)
        return _broken(kind, make_truth(base, rng))
    if name.startswith("cilantro:"):
        fam = name.split(":", 1)[1]
        if fam not in ("tanh", "inverse", "logistic", "linear"):
            raise ValueError(f"unknown Cilantro family {fam!r}")
        return _cilantro(fam, rng)
    if name == "queue_slo":
        return _queue_slo(rng)
    if name.startswith("queue_p99:"):
        return _queue_p99(int(name.split(":", 1)[1]), rng)
    if name == "ernest":
        return _ernest(rng)
    raise ValueError(
        f"unknown curve {name!r}; known: cilantro:<tanh|inverse|logistic|linear>, queue_slo, "
        "queue_p99:<d>, ernest, step:<curve>, bump:<curve>, loud:<curve>"
    )


def oracle_width(truth: Truth, alloc: np.ndarray, load: np.ndarray, query: np.ndarray,
                 query_load: np.ndarray, z: float) -> np.ndarray:
    """Width of the interval an oracle gets that knows the form and the noise, not theta.

    Weighted least squares in theta, linearized at the true theta (the Fisher
    information of the design): width(x) = 2 z sqrt(g(x)' (J' W J)^-1 g(x)),
    with J, g the Jacobians of the curve in theta at the design and at x.
    """

    def jac(a: np.ndarray, ld: np.ndarray) -> np.ndarray:
        cols = []
        for i in range(len(truth.theta)):
            h = 1e-5 * max(abs(truth.theta[i]), 1e-3)
            tp, tm = truth.theta.copy(), truth.theta.copy()
            tp[i] += h
            tm[i] -= h
            cols.append((truth.fn(a, ld, tp) - truth.fn(a, ld, tm)) / (2 * h))
        return np.column_stack(cols)

    J = jac(alloc, load)
    w = 1.0 / truth.sigma(alloc, load) ** 2
    info = (J * w[:, None]).T @ J
    cov = np.linalg.pinv(info)
    G = jac(query, query_load)
    return 2 * z * np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", G, cov, G), 0.0))
