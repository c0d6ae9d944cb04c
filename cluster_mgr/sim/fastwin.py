"""The sim's fast-window (100 ms) layer: one emulation of microservice graphs under fast knobs.

Rows are per-node slices of graph *instances*: row r holds, for every service
of the graph, the fast knobs (quota, frequency, concurrency, rate limit, PIM
cores) of that service's replicas on one node (quota 0: not hosted there).
An instance's load is routed over its rows in proportion to the capacity each
row gives a service (mesh weights follow capacity), so a service's replicas
act as one pooled queue: cores add up, and the pooled frequency factor is the
capacity-weighted mean of the rows' ``f ** freq_exponent``. The sim engine
runs one instance per graph with one row per node; the surge benchmark's unit
tests run one instance per row (a node holding a whole copy of the graph).

Per-service latency is ground truth from ``cluster_mgr.workloads`` (M/M/c with
frequency scaling, end-to-end moments along the call trees, gamma-matched
P99). On top of that steady-state law the emulator keeps one piece of state
per (instance, service), a fluid backlog: while arrivals exceed what the
quota can serve the excess queues (rather than vanishing), and it drains only
when capacity comes back, so a late or too-small scale-up pays for the backlog
it let build. That is what makes recovery time differ between controllers.

Knobs act as the fast path does: knobs set at the end of window w are in
force for all of window w + 1. Arrivals (Poisson per window) and measurement
noise come from ``default_rng((seed, window))``: deterministic for a seed, and
every policy sees the same offered load and noise draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cluster_mgr.local.knobs import Knobs
from cluster_mgr.local.profile import TAIL_Q, upstream_delay
from cluster_mgr.local.signals import NodeSignals
from cluster_mgr.model import FAST_WINDOW_S
from cluster_mgr.workloads import RHO_MAX, GraphParams, QueueState, build_graph, quantile_from_cdf

#: P99 reported when more than 1% of requests are rejected (they are SLO misses).
TIMEOUT_FACTOR = 10.0

EdgeExtra = dict[tuple[int, int], np.ndarray]


class FastLoad(Protocol):
    """What drives the emulation: offered load and network surges per instance over time."""

    seed: int
    noise: float

    @property
    def n_instances(self) -> int: ...

    def mean_rps(self, t: float) -> np.ndarray:
        """Mean offered req/s per instance at time ``t`` (I,)."""

    def edge_extra(self, t: float) -> EdgeExtra:
        """Added ms per call on (parent, child) edges, per instance (I,)."""


@dataclass(frozen=True)
class SurgeEvent:
    """A load surge (``factor`` x offered load) or a network surge (``extra_ms`` on an edge).

    ``node`` is the instance the event hits (a node holding a copy of the graph).
    """

    node: int
    kind: str  # "load" | "network"
    start_s: float
    end_s: float
    factor: float = 1.0
    extra_ms: float = 0.0
    edge: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class SurgeScenario:
    """A constant base load per instance with surge events on top (a ``FastLoad``)."""

    base_rps: np.ndarray  # (I,)
    duration_s: float
    events: tuple[SurgeEvent, ...] = ()
    seed: int = 0
    #: Measurement noise (lognormal sigma) on latencies; arrivals are Poisson per window.
    noise: float = 0.03

    @property
    def n_instances(self) -> int:
        return len(self.base_rps)

    @property
    def n_windows(self) -> int:
        return int(round(self.duration_s / FAST_WINDOW_S))

    def mean_rps(self, t: float) -> np.ndarray:
        f = np.ones(self.n_instances)
        for e in self.events:
            if e.kind == "load" and e.start_s <= t < e.end_s:
                f[e.node] *= e.factor
        return self.base_rps * f

    def edge_extra(self, t: float) -> EdgeExtra:
        out: EdgeExtra = {}
        for e in self.events:
            if e.kind == "network" and e.start_s <= t < e.end_s:
                arr = out.setdefault(e.edge, np.zeros(self.n_instances))
                arr[e.node] += e.extra_ms
        return out


@dataclass
class InstanceLaw:
    """The last window's end-to-end law per instance: request-type moments (I, T) and P99 (I,)."""

    means: np.ndarray
    varis: np.ndarray
    served: np.ndarray
    rejected: np.ndarray
    p99_ms: np.ndarray
    offered_rps: np.ndarray


@dataclass
class GraphEmulator:
    """Instances of one graph over rows (per-node slices); ``step(knobs)`` runs one fast window.

    ``row_instance`` (R,) maps rows to instances (default: one row per instance).
    ``base_ms`` / ``base_sd_ms`` / ``network_ms`` (per instance) are the graph's
    latency outside the modelled queues, as the sim's ground truth has them.
    """

    graph: GraphParams
    load: FastLoad
    slo_ms: np.ndarray  # (I,)
    pim_speedup: np.ndarray | None = None  # (S,) PIM cores worth one CPU core; 0: cannot use
    row_instance: np.ndarray | None = None
    base_ms: np.ndarray | float = 0.0
    base_sd_ms: np.ndarray | float = 0.0
    network_ms: np.ndarray | float = 0.0
    window: int = 0
    backlog: np.ndarray = field(init=False)
    last: InstanceLaw | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        n_i, s = self.load.n_instances, len(self.graph.services)
        self.backlog = np.zeros((n_i, s))
        self.slo_ms = np.resize(np.asarray(self.slo_ms, dtype=float), n_i)
        if self.pim_speedup is None:
            self.pim_speedup = np.zeros(s)
        if self.row_instance is None:
            self.row_instance = np.arange(n_i)
        self.row_instance = np.asarray(self.row_instance, dtype=np.int64)
        # (I, R) one-hot: pooled sums over an instance's rows are one matrix product.
        self._pool = (self.row_instance[None, :] == np.arange(n_i)[:, None]).astype(float)

    @property
    def n_rows(self) -> int:
        return len(self.row_instance)  # type: ignore[arg-type]

    @property
    def time(self) -> float:
        return self.window * FAST_WINDOW_S

    def effective_cores(self, knobs: Knobs) -> np.ndarray:
        r = np.asarray(self.pim_speedup)
        pim = np.where(r > 0, knobs.pim_cores / np.maximum(r, 1e-9), 0.0)
        return np.minimum(knobs.quota + pim, knobs.concurrency)

    def step(self, knobs: Knobs) -> NodeSignals:
        g, ld, dt = self.graph, self.load, FAST_WINDOW_S
        t = self.time
        rng = np.random.default_rng((ld.seed, self.window))
        ri, pool = self.row_instance, self._pool
        offered = rng.poisson(ld.mean_rps(t) * dt) / dt  # (I,)
        roots = np.unique(g.roots)
        row_limit = knobs.rate_limit[:, roots].min(axis=1)
        # Each row's proxy admits up to its limit; rows not hosting an entry service admit nothing.
        row_limit = np.where(self.effective_cores(knobs)[:, roots].sum(axis=1) > 0, row_limit, 0.0)
        limit = np.bincount(ri, weights=row_limit, minlength=len(pool))
        admitted = np.minimum(offered, limit)
        rejected = np.where(offered > 0, 1.0 - admitted / np.maximum(offered, 1e-9), 0.0)
        lam = g.service_rates(admitted)  # (I, S)
        eff = self.effective_cores(knobs)  # (R, S)
        speed = eff * knobs.frequency**g.freq_exponent  # nominal-core equivalents
        cores = pool @ eff  # pooled cores (I, S)
        cap_units = pool @ speed
        # Pooled frequency: the capacity-weighted speed factor, back in frequency units.
        fe = np.where(cores > 0, cap_units / np.maximum(cores, 1e-12), 1.0)
        f = np.where(g.freq_exponent > 0, fe ** (1.0 / np.maximum(g.freq_exponent, 1e-12)), 1.0)
        cap = cap_units / g.service_ms * 1000.0  # req/s
        old = self.backlog
        new = np.maximum(old + (lam - RHO_MAX * cap) * dt, 0.0)
        self.backlog = new
        # Requests arriving behind a backlog wait for it to drain first (fluid delay, ms).
        backlog_ms = 0.5 * (old + new) / np.maximum(RHO_MAX * cap, 1e-9) * 1000.0
        extras = ld.edge_extra(t)
        net = np.broadcast_to(np.asarray(self.network_ms, float), admitted.shape)
        edge_extra = {
            (p, c): extras.get((p, c), 0.0) + net + backlog_ms[:, c]
            for edges in g.type_edges
            for p, c, _ in edges
        }
        means, varis, _, q = g.e2e_moments(cores, admitted, frequency=f, edge_extra_ms=edge_extra)
        means = means + backlog_ms[:, g.roots] + np.asarray(self.base_ms, float)[..., None]
        varis = varis + (np.asarray(self.base_sd_ms, float) ** 2)[..., None]
        served = np.ones_like(means)  # the backlog keeps overload requests instead of dropping them
        p99 = self._e2e_p99(means, varis, served, rejected)
        exec_p99, exec_mean, wait_ms = self._service_tails(q, backlog_ms)
        up = upstream_delay(g, wait_ms, 1.0 / q.mu, extras)
        n_i, n_s = lam.shape
        noise = np.exp(rng.normal(0.0, ld.noise, size=(4, n_i, n_s)))[:, ri]
        node_noise = np.exp(rng.normal(0.0, ld.noise, size=n_i))
        lam_eff = np.minimum(lam, RHO_MAX * cap)
        # A row's share of a service's traffic is its share of the pooled capacity.
        share = speed / np.maximum(cap_units[ri], 1e-12)
        hosted = eff > 0
        util = lam_eff / np.maximum(cap, 1e-9)

        def rows(x: np.ndarray) -> np.ndarray:  # per-instance values, zero where not hosted
            return np.where(hosted, x[ri], 0.0)

        self.last = InstanceLaw(means, varis, served, rejected, p99 * node_noise, offered)
        sig = NodeSignals(
            window=self.window,
            time=t,
            services=g.services,
            exec_p99_ms=rows(exec_p99) * noise[0],
            exec_mean_ms=rows(exec_mean) * noise[1],
            upstream_ms=rows(up) * noise[2],
            arrival_rps=lam[ri] * share,
            queue_len=(new + lam_eff / 1000.0 * exec_mean)[ri] * share,
            queue_delay_ms=rows(wait_ms) * noise[3],
            throttled_frac=rows(np.where(new > 0, 1.0, q.wait_p)),
            utilization=rows(util),
            p99_ms=(p99 * node_noise)[ri],
            slo_ms=self.slo_ms[ri],
            offered_rps=offered[ri],
            rejected_frac=rejected[ri],
        )
        self.window += 1
        return sig

    def _e2e_p99(
        self, means: np.ndarray, varis: np.ndarray, served: np.ndarray, rejected: np.ndarray
    ) -> np.ndarray:
        g = self.graph
        # Rejected requests are misses: the P99 of all requests is the q/(1-r) quantile of admitted.
        q_eff = TAIL_Q / np.maximum(1.0 - rejected, 1e-9)
        ok = q_eff < 1.0
        q_use = np.where(ok, q_eff, 0.5)

        def cdf(x: np.ndarray) -> np.ndarray:
            return g.e2e_cdf(x[:, None], means, varis, served)[:, 0] - (q_use - TAIL_Q)

        hi = means.max(axis=1) * 50.0
        p = quantile_from_cdf(cdf, TAIL_Q, means.min(axis=1) * 0.05, hi, iters=40)
        return np.where(ok, p, self.slo_ms * TIMEOUT_FACTOR)

    @staticmethod
    def _service_tails(
        q: QueueState, backlog_ms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shape = q.mu.shape
        flat = QueueState(*(np.ravel(getattr(q, k)) for k in ("wait_p", "theta", "mu", "served",
                                                              "offset")))  # fmt: skip
        lo = 0.01 / flat.mu
        p = quantile_from_cdf(lambda x: 1.0 - flat.sf(x), TAIL_Q, lo, 200.0 / flat.mu, iters=30)
        wait = q.wait_p / q.theta + backlog_ms
        return p.reshape(shape) + backlog_ms, q.mean() + backlog_ms, wait


#: Eight services of DeathStarBench hotelReservation on the search and recommend paths
#: (DESIGN.md's calls; cache misses to the database with probability 0.2; sub-ms service times
#: as in the Cilantro runs). Plain dicts, the scenario format's own shape.
HOTEL_SEARCH: dict[str, Sequence[dict[str, object]]] = {
    "services": (
        {"name": "frontend", "service_ms": 0.4, "cv": 1.0, "freq_exponent": 1.0},
        {"name": "search", "service_ms": 0.5, "cv": 1.0, "freq_exponent": 1.0},
        {"name": "geo", "service_ms": 0.6, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "rate", "service_ms": 0.7, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "mongodb-rate", "service_ms": 1.5, "cv": 1.2, "freq_exponent": 0.6},
        {"name": "reservation", "service_ms": 0.6, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "profile", "service_ms": 0.6, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "recommendation", "service_ms": 0.5, "cv": 1.0, "freq_exponent": 1.0},
    ),
    "edges": (
        {"from": "frontend", "to": "search", "requests": ["search"]},
        {"from": "search", "to": "geo"},
        {"from": "search", "to": "rate"},
        {"from": "rate", "to": "mongodb-rate", "calls": 0.2},
        {"from": "frontend", "to": "reservation", "requests": ["search"]},
        {"from": "frontend", "to": "profile"},
        {"from": "frontend", "to": "recommendation", "requests": ["recommend"]},
    ),
    "requests": (
        {"name": "search", "weight": 0.6, "entry": "frontend"},
        {"name": "recommend", "weight": 0.4, "entry": "frontend"},
    ),
}


def hotel_search_graph() -> GraphParams:
    """``HOTEL_SEARCH`` as GraphParams."""
    h = HOTEL_SEARCH
    return build_graph(h["services"], h["edges"], h["requests"])
