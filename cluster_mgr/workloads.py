"""Ground-truth workload models, used only by the emulation (sim backend) and by oracles.

Pure numpy/scipy and vectorized over jobs: every function takes arrays with one
entry (or row) per job and returns arrays of the same leading shape. The
manager never reads these; it learns from the telemetry they produce.

Three families (DESIGN.md, "Facts"):

* Cilantro reward curves (``cluster_mgr.curves``): reward = mu(k * alloc / load).
  Requests are in time with probability ``reward``; to give them latencies we
  use an exponential latency law whose CDF at the SLO target equals the reward,
  so the histogram, the P99 and the reward never disagree.
* M/M/c queues: a request's sojourn time is the Erlang-C queueing delay plus an
  exponential service time. Cores are real-valued (the Erlang-B recursion is
  extended to real c through the incomplete gamma function, so latency is
  continuous and monotone in the allocation). Service rate scales with the
  emulated frequency knob as ``frequency ** freq_exponent``; PIM cores add
  ``pim_cores / pim_speedup`` CPU-equivalent cores (PIMCloud's R_i); a service
  mesh adds a per-request latency and, when not offloaded to a DPU, host CPU.
  Overload (rho >= ``RHO_MAX``) serves at capacity and times the rest out.
* Microservice graphs: each service is an M/M/c queue fed by the request mix
  through the call edges (a DAG; an edge's ``calls`` is the mean number of
  calls per visit, below 1 a probability, e.g. a cache miss). End-to-end latency
  of a request type is the sum of the sojourns along its call tree; its mean
  and variance are exact, and the distribution is moment-matched by a shifted
  gamma (a standard approximation for sums of queueing delays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from cluster_mgr import queueing
from cluster_mgr.curves import CILANTRO_FAMILIES, DEFAULT_BIAS, mu
from cluster_mgr.model import ModelError

#: Highest utilisation at which a queue is treated as stable; above it the excess times out.
RHO_MAX = 0.98
#: Smallest effective core count (a job with no CPU still "exists" but serves almost nothing).
MIN_CORES = 1e-3
_FAMILIES = tuple(sorted(CILANTRO_FAMILIES))


# --------------------------------------------------------------------------- queueing


def erlang_b(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Erlang-B blocking probability, continuous in real ``c`` (servers) for offered load ``a``
    (``cluster_mgr.queueing``; a job with no cores still counts ``MIN_CORES``)."""
    return queueing.erlang_b(np.maximum(np.asarray(c, dtype=float), MIN_CORES), a)


def erlang_c(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Probability that an arrival waits in an M/M/c queue (1 when ``a >= c``)."""
    return queueing.erlang_c(np.maximum(np.asarray(c, dtype=float), MIN_CORES), a)


@dataclass(frozen=True)
class QueueState:
    """An M/M/c queue per row, in milliseconds, at a given arrival rate and core count.

    ``wait_p``: probability of waiting; ``theta``: rate (1/ms) of the waiting
    time when waiting; ``mu``: service rate (1/ms); ``served``: fraction of
    offered requests served (the rest time out under overload); ``offset``: a
    constant added to every request (mesh proxy, network).
    """

    wait_p: np.ndarray
    theta: np.ndarray
    mu: np.ndarray
    served: np.ndarray
    offset: np.ndarray

    def sf(self, t: np.ndarray) -> np.ndarray:
        """P(sojourn > t) for t of shape (rows,) or (rows, k)."""
        t = np.asarray(t, dtype=float)
        extra = (slice(None),) + (None,) * (t.ndim - 1)
        c, th, m = self.wait_p[extra], self.theta[extra], self.mu[extra]
        x = np.maximum(t - self.offset[extra], 0.0)
        # theta == mu makes the hypoexponential formula 0/0; nudge it (the limit is continuous).
        th = np.where(np.abs(th - m) < 1e-9 * m, m * (1.0 + 1e-6), th)
        with np.errstate(over="ignore", invalid="ignore"):
            hypo = (th * np.exp(-m * x) - m * np.exp(-th * x)) / (th - m)
        out = (1.0 - c) * np.exp(-m * x) + c * np.clip(hypo, 0.0, 1.0)
        return np.where(t < self.offset[extra], 1.0, np.clip(out, 0.0, 1.0))

    def mean(self) -> np.ndarray:
        return self.offset + 1.0 / self.mu + self.wait_p / self.theta

    def var(self) -> np.ndarray:
        # Wq is 0 w.p. 1-C and Exp(theta) w.p. C: E[Wq^2] = 2C/theta^2.
        wq_var = 2.0 * self.wait_p / self.theta**2 - (self.wait_p / self.theta) ** 2
        return 1.0 / self.mu**2 + wq_var


def mmc(
    load_rps: np.ndarray,
    service_ms: np.ndarray,
    cores: np.ndarray,
    *,
    frequency: np.ndarray | float = 1.0,
    freq_exponent: np.ndarray | float = 1.0,
    cv: np.ndarray | float = 1.0,
    offset_ms: np.ndarray | float = 0.0,
) -> QueueState:
    """The M/M/c (Allen-Cunneen-corrected for service-time CV != 1) queue for each row."""
    lam = np.maximum(np.asarray(load_rps, dtype=float), 0.0) / 1000.0  # per ms
    mu_ = np.asarray(frequency, dtype=float) ** np.asarray(freq_exponent, dtype=float) / np.asarray(
        service_ms, dtype=float
    )
    mu_ = np.broadcast_to(mu_, lam.shape).astype(float)
    c = np.maximum(np.broadcast_to(np.asarray(cores, dtype=float), lam.shape), MIN_CORES)
    cap = c * mu_
    served = np.where(lam > RHO_MAX * cap, RHO_MAX * cap / np.maximum(lam, 1e-300), 1.0)
    lam_eff = np.minimum(lam, RHO_MAX * cap)
    a = lam_eff / mu_
    wait_p = np.where(lam_eff > 0, erlang_c(c, a), 0.0)
    # Allen-Cunneen: queueing delay scales by (1 + cv^2) / 2 for general service times.
    ac = (1.0 + np.asarray(cv, dtype=float) ** 2) / 2.0
    theta = (cap - lam_eff) / ac
    offset = np.broadcast_to(np.asarray(offset_ms, dtype=float), lam.shape).astype(float)
    return QueueState(wait_p=wait_p, theta=theta, mu=mu_, served=served, offset=offset)


# --------------------------------------------------------------------------- single-queue jobs


@dataclass(frozen=True)
class QueueParams:
    """Ground truth of a latency-critical (or throughput) service as one M/M/c queue per job.

    Arrays of shape (J,). ``pim_speedup`` (R_i): PIM cores worth one CPU core
    (0: the job cannot use PIM). ``memory_intensity``: fraction of service time
    spent on memory (a plain field for the PIM device emulation). ``mesh_ms`` /
    ``mesh_cpu_ms``: per-request latency and host CPU of a sidecar proxy;
    ``mesh_dpu_ms``: latency when the DPU proxy admits the request instead.
    """

    service_ms: np.ndarray
    cv: np.ndarray
    freq_exponent: np.ndarray
    pim_speedup: np.ndarray
    memory_intensity: np.ndarray
    mesh_ms: np.ndarray
    mesh_cpu_ms: np.ndarray
    mesh_dpu_ms: np.ndarray

    def effective_cores(
        self, cpu: np.ndarray, pim: np.ndarray, mesh_rps: np.ndarray, load_rps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(CPU-equivalent cores left for the service, DPU-offloaded fraction of requests)."""
        off = np.where(load_rps > 0, np.clip(mesh_rps / np.maximum(load_rps, 1e-9), 0.0, 1.0), 1.0)
        sidecar_cores = (1.0 - off) * load_rps * self.mesh_cpu_ms / 1000.0
        pim_cores = np.where(self.pim_speedup > 0, pim / np.maximum(self.pim_speedup, 1e-9), 0.0)
        return np.maximum(cpu + pim_cores - sidecar_cores, MIN_CORES), off

    def state(
        self,
        cpu: np.ndarray,
        load_rps: np.ndarray,
        *,
        pim: np.ndarray | float = 0.0,
        mesh_rps: np.ndarray | float = 0.0,
        frequency: np.ndarray | float = 1.0,
    ) -> QueueState:
        load_rps = np.asarray(load_rps, dtype=float)
        shape = np.broadcast(np.asarray(cpu), load_rps).shape
        cpu = np.broadcast_to(np.asarray(cpu, dtype=float), shape)
        load_rps = np.broadcast_to(load_rps, shape)
        pim = np.broadcast_to(np.asarray(pim, dtype=float), shape)
        mesh_rps = np.broadcast_to(np.asarray(mesh_rps, dtype=float), shape)
        cores, off = self.effective_cores(cpu, pim, mesh_rps, load_rps)
        offset = off * self.mesh_dpu_ms + (1.0 - off) * self.mesh_ms
        return mmc(
            load_rps,
            self.service_ms,
            cores,
            frequency=frequency,
            freq_exponent=self.freq_exponent,
            cv=self.cv,
            offset_ms=offset,
        )

    def subset(self, idx: np.ndarray) -> QueueParams:
        return QueueParams(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})


# --------------------------------------------------------------------------- curve jobs


@dataclass(frozen=True)
class CurveParams:
    """Cilantro reward curves, one per job: family index into ``_FAMILIES``, k, bias, noise."""

    family: np.ndarray  # int index into FAMILIES
    k: np.ndarray
    bias: np.ndarray
    noise: np.ndarray

    @staticmethod
    def build(specs: Sequence[Mapping[str, float | str | None]]) -> CurveParams:
        fam, k, bias, noise = [], [], [], []
        for s in specs:
            name = str(s.get("family", "tanh"))
            if name not in CILANTRO_FAMILIES:
                raise ModelError(f"unknown curve family {name!r}; expected one of {_FAMILIES}")
            coeff = s.get("coeff") or CILANTRO_FAMILIES[name]
            fam.append(_FAMILIES.index(name))
            k.append(float(coeff) / float(s.get("scale") or 1.0))
            b = s.get("bias")
            bias.append(float(b) if b is not None else DEFAULT_BIAS.get(name, 0.0))
            noise.append(float(s.get("noise") or 0.0))
        return CurveParams(
            np.array(fam, dtype=np.int64), np.array(k), np.array(bias), np.array(noise)
        )

    def reward(self, alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
        """Success probability per row; ``alloc`` and ``load`` broadcast against (J,) or (J, m)."""
        alloc = np.asarray(alloc, dtype=float)
        extra = (slice(None),) + (None,) * (alloc.ndim - 1)
        x = self.k[extra] * alloc / np.maximum(np.asarray(load, dtype=float), 1e-9)
        out = np.empty(np.broadcast(x, self.family[extra]).shape)
        fam = np.broadcast_to(self.family[extra], out.shape)
        xb = np.broadcast_to(x, out.shape)
        bias = np.broadcast_to(self.bias[extra], out.shape)
        for i, name in enumerate(_FAMILIES):
            m = fam == i
            if m.any():
                out[m] = (
                    mu(name, xb[m], 0.0)
                    if name != "logistic"
                    else 1.0 / (1.0 + np.exp(bias[m] - xb[m]))
                )
        return np.clip(out, 0.0, 1.0)

    def subset(self, idx: np.ndarray) -> CurveParams:
        return CurveParams(self.family[idx], self.k[idx], self.bias[idx], self.noise[idx])


def curve_latency_rate(p_within: np.ndarray, target_ms: np.ndarray) -> np.ndarray:
    """Rate (1/ms) of the exponential latency law with P(latency <= target) = p_within."""
    p = np.clip(p_within, 1e-9, 1.0 - 1e-12)
    return -np.log1p(-p) / target_ms


# --------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class GraphParams:
    """A microservice graph: services (queues), call edges (a DAG) and a request mix.

    ``visits[t, s]``: mean visits of service s per request of type t (from the
    call edges); ``edges``: (parent, child, calls) index triples, topologically
    ordered parents-first; ``roots[t]``: entry service of type t.
    """

    services: tuple[str, ...]
    service_ms: np.ndarray  # (S,)
    cv: np.ndarray  # (S,)
    freq_exponent: np.ndarray  # (S,)
    types: tuple[str, ...]
    mix: np.ndarray  # (T,) sums to 1
    roots: np.ndarray  # (T,) service index
    type_edges: tuple[tuple[tuple[int, int, float], ...], ...]  # per type: (parent, child, calls)
    topo: tuple[int, ...]  # services in topological order (parents first)
    visits: np.ndarray  # (T, S)
    on_path: np.ndarray  # (S,) bool: some request type visits the service

    def service_rates(self, load_rps: float | np.ndarray) -> np.ndarray:
        """Arrival rate (req/s) at each service: (S,) for a scalar load, (n, S) for (n,)."""
        per_req = self.mix @ self.visits  # (S,)
        return np.multiply.outer(np.asarray(load_rps, dtype=float), per_req)

    def e2e_moments(
        self,
        cpu: np.ndarray,
        load_rps: float,
        *,
        frequency: np.ndarray | float = 1.0,
        edge_extra_ms: Mapping[tuple[int, int], float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, QueueState]:
        """Per request type: (mean ms, variance ms^2, served fraction), and the per-service queues.

        ``cpu`` may be (S,) or (n, S) (n candidate allocations at the same load).
        """
        cpu = np.asarray(cpu, dtype=float)
        lam = np.broadcast_to(self.service_rates(load_rps), cpu.shape)
        q = mmc(
            lam,
            np.broadcast_to(self.service_ms, cpu.shape),
            cpu,
            frequency=frequency,
            freq_exponent=np.broadcast_to(self.freq_exponent, cpu.shape),
            cv=np.broadcast_to(self.cv, cpu.shape),
        )
        s_mean, s_var = q.mean(), q.var()
        extra = edge_extra_ms or {}
        lead = cpu.shape[:-1]
        means = np.zeros(lead + (len(self.types),))
        varis = np.zeros_like(means)
        served = np.ones_like(means)
        for t, edges in enumerate(self.type_edges):
            # Subtree moments bottom-up: T(s) = S(s) + sum_e B_e * (extra_e + T(child)).
            m = {s: s_mean[..., s].copy() for s in self.topo}
            v = {s: s_var[..., s].copy() for s in self.topo}
            ok = {s: q.served[..., s].copy() for s in self.topo}
            for parent, child, calls in reversed(edges):
                cm = m[child] + extra.get((parent, child), 0.0)
                cv_ = v[child]
                if calls <= 1.0:  # Bernoulli(calls) call (a cache miss, an optional call)
                    m[parent] = m[parent] + calls * cm
                    v[parent] = v[parent] + calls * cv_ + calls * (1.0 - calls) * cm**2
                    ok[parent] = ok[parent] * (1.0 - calls * (1.0 - ok[child]))
                else:  # a fixed number of sequential calls
                    m[parent] = m[parent] + calls * cm
                    v[parent] = v[parent] + calls * cv_
                    ok[parent] = ok[parent] * ok[child] ** calls
            r = int(self.roots[t])
            means[..., t], varis[..., t], served[..., t] = m[r], v[r], ok[r]
        return means, varis, served, q

    def e2e_cdf(
        self, t_ms: np.ndarray, means: np.ndarray, varis: np.ndarray, served: np.ndarray
    ) -> np.ndarray:
        """Mixture CDF over request types at times ``t_ms`` (k,), for moments of shape (..., T).

        Timed-out requests (1 - served) never complete in time: they add no mass.
        """
        shape_k, scale = _gamma_fit(means, varis)
        t = np.asarray(t_ms, dtype=float)
        cdf = gamma_cdf(
            t[..., None, :] if t.ndim > 1 else t[None, :], shape_k[..., None], scale[..., None]
        )
        # cdf: (..., T, k); weight by mix and served fraction.
        w = (self.mix * served)[..., None]
        return (w * cdf).sum(axis=-2)


def gamma_cdf(t: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """CDF of a gamma law (the regularized lower incomplete gamma; no scipy.stats import)."""
    return special.gammainc(shape, np.maximum(np.asarray(t, dtype=float), 0.0) / scale)


def _gamma_fit(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    var = np.maximum(var, 1e-12)
    return mean**2 / var, var / np.maximum(mean, 1e-12)


def build_graph(
    services: Sequence[Mapping[str, object]],
    edges: Sequence[Mapping[str, object]],
    requests: Sequence[Mapping[str, object]],
) -> GraphParams:
    """Build a GraphParams from plain dicts (validated by the scenario loader).

    services: {name, service_ms, cv?, freq_exponent?}; edges: {from, to, calls?,
    requests? (types the edge applies to; all when absent)}; requests: {name,
    weight, entry}. Raises ModelError on an unknown service or a cycle.
    """
    names = tuple(str(s["name"]) for s in services)
    index = {n: i for i, n in enumerate(names)}
    types = tuple(str(r["name"]) for r in requests)
    mix = np.array([float(r["weight"]) for r in requests])
    if mix.sum() <= 0:
        raise ModelError("request mix weights must sum to more than 0")
    mix = mix / mix.sum()
    for e in edges:
        for end in ("from", "to"):
            if str(e[end]) not in index:
                raise ModelError(f"edge {e['from']}->{e['to']}: unknown service {e[end]!r}")
    topo = _toposort(
        len(names), [(index[str(e["from"])], index[str(e["to"])]) for e in edges], names
    )
    rank = {s: i for i, s in enumerate(topo)}
    type_edges = []
    visits = np.zeros((len(types), len(names)))
    roots = np.zeros(len(types), dtype=np.int64)
    for t, r in enumerate(requests):
        entry = str(r["entry"])
        if entry not in index:
            raise ModelError(f"request type {types[t]!r}: unknown entry service {entry!r}")
        roots[t] = index[entry]
        te = [
            (index[str(e["from"])], index[str(e["to"])], float(e.get("calls", 1.0)))
            for e in edges
            if not e.get("requests") or types[t] in e["requests"]
        ]
        te.sort(key=lambda x: rank[x[0]])
        # Only edges reachable from the entry belong to this request type's call tree.
        reach = {roots[t]: 1.0}
        kept = []
        for p, c, calls in te:
            if p in reach:
                reach[c] = reach.get(c, 0.0) + reach[p] * calls
                kept.append((p, c, calls))
        for s, v in reach.items():
            visits[t, s] = v
        type_edges.append(tuple(kept))
    return GraphParams(
        services=names,
        service_ms=np.array([float(s["service_ms"]) for s in services]),
        cv=np.array([float(s.get("cv", 1.0)) for s in services]),
        freq_exponent=np.array([float(s.get("freq_exponent", 1.0)) for s in services]),
        types=types,
        mix=mix,
        roots=roots,
        type_edges=tuple(type_edges),
        topo=tuple(topo),
        visits=visits,
        on_path=(mix @ visits) > 0,
    )


def _toposort(n: int, edges: Sequence[tuple[int, int]], names: Sequence[str]) -> list[int]:
    """Kahn's algorithm; a cycle raises ModelError naming the services on it."""
    children: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for p, c in edges:
        children[p].append(c)
        indeg[c] += 1
    order = [i for i in range(n) if indeg[i] == 0]
    k = 0
    while k < len(order):
        for c in children[order[k]]:
            indeg[c] -= 1
            if indeg[c] == 0:
                order.append(c)
        k += 1
    if len(order) < n:
        cyc = sorted(names[i] for i in range(n) if indeg[i] > 0)
        raise ModelError(f"call graph has a cycle through {cyc}")
    return order


# --------------------------------------------------------------------------- quantiles


def quantile_from_cdf(cdf, q: float, lo: np.ndarray, hi: np.ndarray, iters: int = 60) -> np.ndarray:
    """Vectorized geometric bisection for x with cdf(x) = q, per row, within [lo, hi]."""
    lo = np.maximum(np.asarray(lo, dtype=float), 1e-6)
    hi = np.maximum(np.asarray(hi, dtype=float), lo * 1.0001)
    for _ in range(iters):
        mid = np.sqrt(lo * hi)
        below = cdf(mid) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.sqrt(lo * hi)
