"""The scenario's ground truth, vectorized over every job: latency laws per window, and oracle models.

``GroundTruth`` turns the allocation in force and the offered loads into, per
job, the probability of each latency bucket, of timing out and of meeting the
SLO target: the sim samples telemetry from these. ``TruthModel`` exposes the
same truth through ``PerformanceModel.bounds`` (lcb = mean = ucb) so oracle
policies solve on the real curves through the interface learners offer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from cluster_mgr.model import LATENCY_BUCKET_EDGES_MS, JobSpec
from cluster_mgr.scenario.schema import GraphEntry, JobEntry, Scenario
from cluster_mgr.workloads import (
    CurveParams,
    QueueParams,
    QueueState,
    curve_latency_rate,
    gamma_cdf,
    mmc,
)
from learners.base import Learner

EDGES = LATENCY_BUCKET_EDGES_MS
N_EDGES = len(EDGES)


@dataclass(frozen=True)
class LatencyLaw:
    """Per row: CDF of latency at the bucket edges, SLO target and timeout, and the served fraction.

    ``cdf_edges`` (J, N_EDGES) is P(latency <= edge) among served requests;
    ``served`` the fraction not dropped by overload. Together they give every
    count the telemetry needs (see ``sim.sampling``).
    """

    cdf_edges: np.ndarray
    cdf_target: np.ndarray
    cdf_timeout: np.ndarray
    served: np.ndarray
    mean_ms: np.ndarray
    busy_cores: np.ndarray  # CPU-seconds per second the job keeps busy


def _queue_law(
    q: QueueState, target: np.ndarray, timeout: np.ndarray, busy: np.ndarray
) -> LatencyLaw:
    return LatencyLaw(
        cdf_edges=1.0 - q.sf(np.broadcast_to(EDGES, (len(target), N_EDGES))),
        cdf_target=1.0 - q.sf(target),
        cdf_timeout=1.0 - q.sf(timeout),
        served=q.served,
        mean_ms=q.mean(),
        busy_cores=busy,
    )


class GroundTruth:
    """Everything the emulation knows about the scenario's jobs, as arrays in job order."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.jobs: tuple[JobEntry, ...] = scenario.jobs
        self.names = tuple(j.name for j in self.jobs)
        self.index = {n: i for i, n in enumerate(self.names)}
        n = len(self.jobs)
        self.target = np.array([_target(j.spec) for j in self.jobs])
        self.timeout = np.array([j.timeout_ms for j in self.jobs])
        self.curve_idx = np.array(
            [i for i, j in enumerate(self.jobs) if j.model == "curve"], dtype=np.int64
        )
        self.queue_idx = np.array(
            [i for i, j in enumerate(self.jobs) if j.model == "queue"], dtype=np.int64
        )
        self.service_idx = np.array(
            [i for i, j in enumerate(self.jobs) if j.model == "service"], dtype=np.int64
        )
        self.curves = CurveParams.build([self.jobs[i].workload for i in self.curve_idx])
        self.queues = _queue_params([self.jobs[i].workload for i in self.queue_idx])
        self.graphs: tuple[GraphEntry, ...] = scenario.graphs
        # service job index per graph, in the graph's service order
        self.graph_jobs = [
            np.array([self.index[j] for j in g.jobs], dtype=np.int64) for g in self.graphs
        ]
        self.n = n
        # Non-CPU resources in force (the engine keeps these current): oracles see a job's
        # reward as a function of CPU at the PIM cores and mesh admission it holds.
        self.pim_in_force = np.zeros(n)
        self.mesh_in_force = np.zeros(n)
        self._throughput_idx = [
            k
            for k, j in enumerate(self.jobs)
            if j.spec.slo is not None and j.spec.slo.metric == "throughput"
        ]

    # -- loads --------------------------------------------------------------------------
    def loads(self, t: np.ndarray) -> np.ndarray:
        """Offered req/s per (time, job): (len(t), J). Graph services get their share of the graph's
        load through the call edges; jobs outside their [arrival, departure) get zero."""
        t = np.asarray(t, dtype=float)
        out = np.zeros((len(t), self.n))
        for i, j in enumerate(self.jobs):
            if j.load is not None:
                out[:, i] = j.load.rates(t)
        for g, idx in zip(self.graphs, self.graph_jobs, strict=True):
            out[:, idx] = g.params.service_rates(g.load.rates(t))
        for i, j in enumerate(self.jobs):
            out[:, i] *= (t >= j.arrival_s) & (t < j.departure_s)
        return out

    def graph_loads(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        out = np.zeros((len(t), len(self.graphs)))
        for k, g in enumerate(self.graphs):
            out[:, k] = g.load.rates(t) * ((t >= g.arrival_s) & (t < g.departure_s))
        return out

    # -- per-window latency laws --------------------------------------------------------
    def law(
        self,
        cpu: np.ndarray,
        load: np.ndarray,
        *,
        pim: np.ndarray | None = None,
        mesh: np.ndarray | None = None,
        frequency: np.ndarray | None = None,
    ) -> LatencyLaw:
        """The latency law of every job at allocations ``cpu`` (J,) and loads (J,) req/s."""
        n = self.n
        pim = np.zeros(n) if pim is None else pim
        mesh = np.zeros(n) if mesh is None else mesh
        freq = np.ones(n) if frequency is None else frequency
        cdf_e = np.zeros((n, N_EDGES))
        cdf_t, cdf_to, served = np.zeros(n), np.zeros(n), np.ones(n)
        mean, busy = np.zeros(n), np.zeros(n)
        parts = []
        if len(self.curve_idx):
            i = self.curve_idx
            p = self.curves.reward(cpu[i], load[i])
            rate = curve_latency_rate(p, self.target[i])
            parts.append((i, LatencyLaw(
                cdf_edges=1.0 - np.exp(-rate[:, None] * EDGES[None, :]),
                cdf_target=1.0 - np.exp(-rate * self.target[i]),
                cdf_timeout=1.0 - np.exp(-rate * self.timeout[i]),
                served=np.ones(len(i)),
                mean_ms=1.0 / rate,
                busy_cores=cpu[i],
            )))  # fmt: skip
        if len(self.queue_idx):
            i = self.queue_idx
            qp = self.queues
            q = qp.state(cpu[i], load[i], pim=pim[i], mesh_rps=mesh[i], frequency=freq[i])
            busy_ = load[i] * q.served / 1000.0 / q.mu
            parts.append((i, _queue_law(q, self.target[i], self.timeout[i], busy_)))
        if len(self.service_idx):
            i = self.service_idx
            q = self._service_queues(cpu, load, freq)
            busy_ = load[i] * q.served / 1000.0 / q.mu
            parts.append((i, _queue_law(q, self.target[i], self.timeout[i], busy_)))
        for i, law in parts:
            cdf_e[i], cdf_t[i], cdf_to[i] = law.cdf_edges, law.cdf_target, law.cdf_timeout
            served[i], mean[i], busy[i] = law.served, law.mean_ms, law.busy_cores
        return LatencyLaw(cdf_e, cdf_t, cdf_to, served, mean, busy)

    def reward(self, cpu: np.ndarray, load: np.ndarray) -> np.ndarray:
        """Expected reward of every job (J,) at allocations ``cpu`` and loads (req/s); cheap (no edges)."""
        out = np.ones(self.n)
        limit = np.where(
            [j.spec.slo is None for j in self.jobs],
            self.timeout,
            np.minimum(self.target, self.timeout),
        )
        if len(self.curve_idx):
            i = self.curve_idx
            out[i] = self.curves.reward(cpu[i], load[i])
        if len(self.queue_idx):
            i = self.queue_idx
            q = self.queues.state(
                cpu[i], load[i], pim=self.pim_in_force[i], mesh_rps=self.mesh_in_force[i]
            )
            out[i] = q.served * (1.0 - q.sf(limit[i]))
        if len(self.service_idx):
            i = self.service_idx
            q = self._service_queues(cpu, load, np.ones(self.n))
            out[i] = q.served * (1.0 - q.sf(limit[i]))
        for k in self._throughput_idx:
            slo = self.jobs[k].spec.slo
            assert slo is not None
            out[k] = min(1.0, out[k] * load[k] / slo.target)
        return np.clip(out, 0.0, 1.0)

    def _service_queues(self, cpu: np.ndarray, load: np.ndarray, freq: np.ndarray) -> QueueState:
        i = self.service_idx
        svc = [self.jobs[k].workload for k in i]
        net = np.array([self._graph_of(k).network_ms for k in i])
        return mmc(
            load[i],
            np.array([float(w["service_ms"]) for w in svc]),
            cpu[i],
            frequency=freq[i],
            freq_exponent=np.array([float(w.get("freq_exponent", 1.0)) for w in svc]),
            cv=np.array([float(w.get("cv", 1.0)) for w in svc]),
            offset_ms=net,
        )

    def _graph_of(self, k: int) -> GraphEntry:
        name = self.jobs[k].graph
        return next(g for g in self.graphs if g.name == name)

    def graph_law(
        self,
        g: int,
        cpu: np.ndarray,
        load: float,
        edge_extra: Mapping[tuple[int, int], float] | None = None,
    ) -> LatencyLaw:
        """End-to-end latency law of graph ``g`` (one row) at service CPUs ``cpu`` (S,)."""
        graph = self.graphs[g]
        mean, var, served = graph_moments(graph, cpu, load, edge_extra)
        shape, scale = _gamma(mean, var)
        w = graph.params.mix * served

        def cdf(t: np.ndarray) -> np.ndarray:
            return (w * gamma_cdf(np.asarray(t)[..., None], shape, scale)).sum(axis=-1)

        tgt, to = graph.slo.target, graph.timeout_ms
        # conditional on being served: divide by the served mass
        s = max(float(w.sum()), 1e-12)
        return LatencyLaw(
            cdf_edges=(cdf(EDGES) / s)[None, :],
            cdf_target=np.array([cdf(np.array(tgt)) / s]),
            cdf_timeout=np.array([cdf(np.array(to)) / s]),
            served=np.array([s]),
            mean_ms=np.array([float((graph.params.mix * mean).sum())]),
            busy_cores=np.zeros(1),
        )


def graph_moments(
    graph: GraphEntry,
    cpu: np.ndarray,
    load: float,
    edge_extra: Mapping[tuple[int, int], float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request type: mean, variance (ms) and served fraction, base latency and network included."""
    p = graph.params
    extra = dict(edge_extra or {})
    if graph.network_ms > 0:
        for te in p.type_edges:
            for a, b, _ in te:
                extra[(a, b)] = extra.get((a, b), 0.0) + graph.network_ms
    mean, var, served, _ = p.e2e_moments(np.maximum(cpu, 1e-3), load, edge_extra_ms=extra)
    return mean + graph.base_ms, var + graph.base_sd_ms**2, served


def _gamma(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    var = np.maximum(var, 1e-9)
    return mean**2 / var, var / np.maximum(mean, 1e-12)


def _target(spec: JobSpec) -> float:
    if spec.slo is not None and spec.slo.metric == "latency":
        return float(spec.slo.target)
    return 100.0  # throughput and best-effort jobs: latencies still get a scale for their histogram


def _queue_params(ws: list[dict]) -> QueueParams:
    def col(key: str, default: float) -> np.ndarray:
        return np.array([float(w.get(key, default)) for w in ws])

    return QueueParams(
        service_ms=col("service_ms", 1.0),
        cv=col("cv", 1.0),
        freq_exponent=col("freq_exponent", 1.0),
        pim_speedup=col("pim_speedup", 0.0),
        memory_intensity=col("memory_intensity", 0.0),
        mesh_ms=col("mesh_ms", 0.0),
        mesh_cpu_ms=col("mesh_cpu_ms", 0.0),
        mesh_dpu_ms=col("mesh_dpu_ms", 0.0),
    )


# --------------------------------------------------------------------------- oracle models


class TruthModel(Learner):
    """A job's ground-truth reward as a Learner whose bounds are exact (lcb = mean = ucb).

    Learning is a no-op: the oracle knows the curve. Reward is what the
    telemetry would report on average: the fraction of offered requests served
    within the SLO target (throughput SLO: min(1, goodput / target)).
    """

    name = "truth"
    monotone = "increasing"

    def __init__(self, truth: GroundTruth, job: str) -> None:
        super().__init__()
        self._truth = truth
        self._k = truth.index[job]

    def _learn_batch(self, alloc, load, value, sigma) -> None:  # type: ignore[no-untyped-def]
        return None

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.asarray(alloc, dtype=float)
        if a.ndim == 2:
            a = a[:, 0]
        ld = np.broadcast_to(np.asarray(load, dtype=float), a.shape)
        r = job_reward(self._truth, self._k, a, ld)
        return r, r, r


def job_reward(truth: GroundTruth, k: int, cpu: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Mean reward of job ``k`` at many (cpu, load) points (vectorized)."""
    job = truth.jobs[k]
    cpu = np.asarray(cpu, dtype=float)
    load = np.asarray(load, dtype=float)
    target, timeout = truth.target[k], truth.timeout[k]
    if job.model == "curve":
        c = truth.curves.subset(np.full(len(cpu), int(np.flatnonzero(truth.curve_idx == k)[0])))
        p = c.reward(cpu, load)
        if job.spec.slo is None:
            return np.ones_like(p)  # a curve job without SLO completes everything
        return _throughput_reward(job.spec, p, load)
    if job.model == "queue":
        pos = int(np.flatnonzero(truth.queue_idx == k)[0])
        qp = truth.queues.subset(np.full(len(cpu), pos))
        q = qp.state(cpu, load, pim=truth.pim_in_force[k], mesh_rps=truth.mesh_in_force[k])
    else:
        w = job.workload
        net = truth._graph_of(k).network_ms
        q = mmc(load, float(w["service_ms"]), cpu, freq_exponent=float(w.get("freq_exponent", 1.0)),
                cv=float(w.get("cv", 1.0)), offset_ms=net)  # fmt: skip
    # No SLO: a request succeeds when it completes (as cluster_mgr.feedback scores it).
    limit = timeout if job.spec.slo is None else min(target, timeout)
    within = q.served * (1.0 - q.sf(np.full(len(cpu), limit)))
    return _throughput_reward(job.spec, within, load)


def _throughput_reward(spec: JobSpec, within: np.ndarray, load: np.ndarray) -> np.ndarray:
    slo = spec.slo
    if slo is not None and slo.metric == "throughput":
        return np.clip(within * load / slo.target, 0.0, 1.0)
    return np.clip(within, 0.0, 1.0)


def truth_factory(truth: GroundTruth) -> Callable[[JobSpec], Learner]:
    return lambda spec: TruthModel(truth, spec.name)
