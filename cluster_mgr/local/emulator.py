"""Fast-window (100 ms) emulation of N nodes, each running one microservice graph.

Per-service latency is ground truth from ``cluster_mgr.workloads`` (M/M/c with
frequency scaling, end-to-end moments along the call trees, gamma-matched
P99). On top of that steady-state law the emulator keeps one piece of state per
service, a fluid backlog: while arrivals exceed what the quota can serve the
excess queues (rather than vanishing), and it drains only when capacity comes
back, so a late or too-small scale-up pays for the backlog it let build. That
is what makes recovery time differ between controllers.

Knobs act as the fast path does: quota, frequency, concurrency, rate limit and
PIM cores set at the end of window w are in force for all of window w + 1.
Load and measurement noise come from ``default_rng((seed, window))``, so every
policy sees exactly the same offered load and noise draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cluster_mgr.local.knobs import Knobs
from cluster_mgr.local.profile import TAIL_Q, upstream_delay
from cluster_mgr.local.signals import NodeSignals
from cluster_mgr.model import FAST_WINDOW_S
from cluster_mgr.workloads import RHO_MAX, GraphParams, QueueState, quantile_from_cdf

#: P99 reported when more than 1% of requests are rejected (they are SLO misses).
TIMEOUT_FACTOR = 10.0


@dataclass(frozen=True)
class SurgeEvent:
    """A load surge (``factor`` x offered load) or a network surge (``extra_ms`` on an edge)."""

    node: int
    kind: str  # "load" | "network"
    start_s: float
    end_s: float
    factor: float = 1.0
    extra_ms: float = 0.0
    edge: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class SurgeScenario:
    base_rps: np.ndarray  # (N,)
    duration_s: float
    events: tuple[SurgeEvent, ...] = ()
    seed: int = 0
    #: Measurement noise (lognormal sigma) on latencies; arrivals are Poisson per window.
    noise: float = 0.03

    @property
    def n_nodes(self) -> int:
        return len(self.base_rps)

    @property
    def n_windows(self) -> int:
        return int(round(self.duration_s / FAST_WINDOW_S))

    def load_factor(self, t: float) -> np.ndarray:
        f = np.ones(self.n_nodes)
        for e in self.events:
            if e.kind == "load" and e.start_s <= t < e.end_s:
                f[e.node] *= e.factor
        return f

    def edge_extra(self, t: float) -> dict[tuple[int, int], np.ndarray]:
        out: dict[tuple[int, int], np.ndarray] = {}
        for e in self.events:
            if e.kind == "network" and e.start_s <= t < e.end_s:
                arr = out.setdefault(e.edge, np.zeros(self.n_nodes))
                arr[e.node] += e.extra_ms
        return out


@dataclass
class GraphEmulator:
    """N nodes x S services of one graph; ``step(knobs)`` runs one fast window."""

    graph: GraphParams
    scenario: SurgeScenario
    slo_ms: np.ndarray  # (N,)
    pim_speedup: np.ndarray | None = None  # (S,) PIM cores worth one CPU core; 0: cannot use
    #: Copies of the scenario's nodes side by side (one per policy): same load, same noise.
    copies: int = 1
    window: int = 0
    backlog: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        s = len(self.graph.services)
        self.backlog = np.zeros((self.scenario.n_nodes * self.copies, s))
        self.slo_ms = np.resize(np.asarray(self.slo_ms, dtype=float), self.n_nodes)
        if self.pim_speedup is None:
            self.pim_speedup = np.zeros(s)

    @property
    def n_nodes(self) -> int:
        return self.scenario.n_nodes * self.copies

    @property
    def time(self) -> float:
        return self.window * FAST_WINDOW_S

    def effective_cores(self, knobs: Knobs) -> np.ndarray:
        r = np.asarray(self.pim_speedup)
        pim = np.where(r > 0, knobs.pim_cores / np.maximum(r, 1e-9), 0.0)
        return np.minimum(knobs.quota + pim, knobs.concurrency)

    def step(self, knobs: Knobs) -> NodeSignals:
        g, sc, dt = self.graph, self.scenario, FAST_WINDOW_S
        t = self.time
        rng = np.random.default_rng((sc.seed, self.window))
        k = self.copies
        mean_rps = sc.base_rps * sc.load_factor(t)
        offered = np.tile(rng.poisson(mean_rps * dt) / dt, k)
        roots = np.unique(g.roots)
        limit = knobs.rate_limit[:, roots].min(axis=1)
        admitted = np.minimum(offered, limit)
        rejected = np.where(offered > 0, 1.0 - admitted / np.maximum(offered, 1e-9), 0.0)
        lam = g.service_rates(admitted)  # (N, S)
        cores = self.effective_cores(knobs)
        f = knobs.frequency
        cap = cores * f**g.freq_exponent / g.service_ms * 1000.0
        old = self.backlog
        new = np.maximum(old + (lam - RHO_MAX * cap) * dt, 0.0)
        self.backlog = new
        # Requests arriving behind a backlog wait for it to drain first (fluid delay, ms).
        backlog_ms = 0.5 * (old + new) / np.maximum(RHO_MAX * cap, 1e-9) * 1000.0
        extras = {e: np.tile(v, k) for e, v in sc.edge_extra(t).items()}
        edge_extra = {
            (p, c): extras.get((p, c), 0.0) + backlog_ms[:, c]
            for edges in g.type_edges
            for p, c, _ in edges
        }
        means, varis, _, q = g.e2e_moments(cores, admitted, frequency=f, edge_extra_ms=edge_extra)
        means = means + backlog_ms[:, g.roots]
        served = np.ones_like(means)  # the backlog keeps overload requests instead of dropping them
        p99 = self._e2e_p99(means, varis, served, rejected)
        exec_p99, exec_mean, wait_ms = self._service_tails(q, backlog_ms)
        up = upstream_delay(g, wait_ms, 1.0 / q.mu, extras)
        n0, n_s = sc.n_nodes, lam.shape[1]
        noise = np.tile(np.exp(rng.normal(0.0, sc.noise, size=(4, n0, n_s))), (1, k, 1))
        node_noise = np.tile(np.exp(rng.normal(0.0, sc.noise, size=n0)), k)
        lam_eff = np.minimum(lam, RHO_MAX * cap)
        sig = NodeSignals(
            window=self.window,
            time=t,
            services=g.services,
            exec_p99_ms=exec_p99 * noise[0],
            exec_mean_ms=exec_mean * noise[1],
            upstream_ms=up * noise[2],
            arrival_rps=lam,
            queue_len=new + lam_eff / 1000.0 * exec_mean,
            queue_delay_ms=wait_ms * noise[3],
            throttled_frac=np.where(new > 0, 1.0, q.wait_p),
            utilization=lam_eff / np.maximum(cap, 1e-9),
            p99_ms=p99 * node_noise,
            slo_ms=self.slo_ms,
            offered_rps=offered,
            rejected_frac=rejected,
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


def hotel_search_graph() -> GraphParams:
    """Eight services of DeathStarBench hotelReservation on the search and recommend paths.

    Calls follow DESIGN.md (frontend -> search -> geo, then rate; frontend ->
    reservation; frontend -> profile; recommend: frontend -> recommendation ->
    profile); cache misses go to the database with probability 0.2. Service
    times are sub-millisecond as in the Cilantro runs.
    """
    from cluster_mgr.workloads import build_graph

    services: Sequence[dict[str, object]] = (
        {"name": "frontend", "service_ms": 0.4, "cv": 1.0, "freq_exponent": 1.0},
        {"name": "search", "service_ms": 0.5, "cv": 1.0, "freq_exponent": 1.0},
        {"name": "geo", "service_ms": 0.6, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "rate", "service_ms": 0.7, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "mongodb-rate", "service_ms": 1.5, "cv": 1.2, "freq_exponent": 0.6},
        {"name": "reservation", "service_ms": 0.6, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "profile", "service_ms": 0.6, "cv": 1.0, "freq_exponent": 0.9},
        {"name": "recommendation", "service_ms": 0.5, "cv": 1.0, "freq_exponent": 1.0},
    )
    edges = (
        {"from": "frontend", "to": "search", "requests": ["search"]},
        {"from": "search", "to": "geo"},
        {"from": "search", "to": "rate"},
        {"from": "rate", "to": "mongodb-rate", "calls": 0.2},
        {"from": "frontend", "to": "reservation", "requests": ["search"]},
        {"from": "frontend", "to": "profile"},
        {"from": "frontend", "to": "recommendation", "requests": ["recommend"]},
    )
    requests = (
        {"name": "search", "weight": 0.6, "entry": "frontend"},
        {"name": "recommend", "weight": 0.4, "entry": "frontend"},
    )
    return build_graph(services, edges, requests)
