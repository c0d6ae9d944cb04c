"""Prometheus metrics of a running manager, on their own registry and HTTP address.

A private CollectorRegistry (not prometheus_client's global one) so two
managers, or a test and a manager, in one process never collide. ``update``
takes the control plane's Status (and the round's decision time when a new
round was decided) and sets every series from it; jobs that left the status
lose their series, so a removed job does not linger on a dashboard.

Series (label ``job``; allocations also ``resource``):
  cluster_mgr_job_allocation, cluster_mgr_job_replicas, cluster_mgr_job_load_rps,
  cluster_mgr_job_p99_ms, cluster_mgr_job_slo_target_ms, cluster_mgr_job_slo_met (1/0),
  cluster_mgr_job_reward, cluster_mgr_job_utility,
  cluster_mgr_round, cluster_mgr_epoch, cluster_mgr_jobs,
  cluster_mgr_round_decision_seconds (histogram),
  cluster_mgr_telemetry_windows_total, cluster_mgr_lost_windows_total (counters).
"""

from __future__ import annotations

import math
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cluster_mgr.control.api import Status

# Decisions take milliseconds (fair share) to seconds (evolutionary search).
DECISION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ManagerMetrics:
    """The metric families of one manager, on a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        job = ("job",)
        self.allocation = Gauge(
            "cluster_mgr_job_allocation",
            "Amount of a resource kind allocated to the job (cpu in CPUs, memory in GiB, mesh in req/s)",
            ("job", "resource"),
            registry=r,
        )
        self.replicas = Gauge("cluster_mgr_job_replicas", "Replicas of the job", job, registry=r)
        self.load = Gauge(
            "cluster_mgr_job_load_rps", "Offered load in the last window", job, registry=r
        )
        self.p99 = Gauge(
            "cluster_mgr_job_p99_ms", "P99 latency in the last telemetry window", job, registry=r
        )
        self.slo_target = Gauge(
            "cluster_mgr_job_slo_target_ms", "The job's SLO target", job, registry=r
        )
        self.slo_met = Gauge(
            "cluster_mgr_job_slo_met",
            "1 if the job met its SLO in the last window, 0 if not (absent: no SLO or no data)",
            job,
            registry=r,
        )
        self.reward = Gauge(
            "cluster_mgr_job_reward", "Reward in the last telemetry window", job, registry=r
        )
        self.utility = Gauge("cluster_mgr_job_utility", "Utility in [0, 1]", job, registry=r)
        self.round = Gauge("cluster_mgr_round", "Current allocation round", registry=r)
        self.epoch = Gauge("cluster_mgr_epoch", "Controller epoch", registry=r)
        self.jobs = Gauge("cluster_mgr_jobs", "Jobs under management", registry=r)
        self.decision = Histogram(
            "cluster_mgr_round_decision_seconds",
            "Time the global allocator took to decide a round",
            buckets=DECISION_BUCKETS_S,
            registry=r,
        )
        self.windows = Counter(
            "cluster_mgr_telemetry_windows", "Telemetry windows ingested", registry=r
        )
        self.lost = Counter(
            "cluster_mgr_lost_windows", "Telemetry windows lost (sequence gaps)", registry=r
        )
        self._lock = threading.Lock()
        self._last_windows = 0
        self._last_lost = 0
        self._last_decided: tuple[int, int] | None = None
        self._labels: dict[int, set[tuple[str, ...]]] = {}

    def update(self, status: Status, decision_ms: float | None = None) -> None:
        """Set every series from ``status``; ``decision_ms`` is observed once per new round."""
        with self._lock:
            self._update(status, decision_ms)

    def _update(self, status: Status, decision_ms: float | None) -> None:
        seen: dict[int, set[tuple[str, ...]]] = {}

        def put(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
            if value is None or not math.isfinite(value):
                return  # absent is more honest than a made-up 0
            gauge.labels(*labels).set(value)
            seen.setdefault(id(gauge), set()).add(labels)

        for j in status.jobs:
            for kind, amount in j.allocation.items():
                put(self.allocation, (j.name, kind), amount)
            put(self.replicas, (j.name,), float(j.replicas))
            put(self.load, (j.name,), j.load_rps)
            put(self.p99, (j.name,), j.p99_ms)
            put(self.slo_target, (j.name,), j.slo_target)
            put(self.slo_met, (j.name,), None if j.slo_met is None else float(j.slo_met))
            put(self.reward, (j.name,), j.reward)
            put(self.utility, (j.name,), j.utility)
        self._drop_stale(seen)
        self.round.set(status.round)
        self.epoch.set(status.epoch)
        self.jobs.set(len(status.jobs))
        key = (status.epoch, status.round)
        if decision_ms is not None and math.isfinite(decision_ms) and key != self._last_decided:
            self.decision.observe(decision_ms / 1000.0)
            self._last_decided = key
        # Status carries running totals; a counter only goes up, so add the increase
        # (after a controller restart the totals start again from 0: count them anew).
        self.windows.inc(_increase(self._last_windows, status.telemetry_windows))
        self.lost.inc(_increase(self._last_lost, status.lost_windows))
        self._last_windows, self._last_lost = status.telemetry_windows, status.lost_windows

    def _drop_stale(self, seen: dict[int, set[tuple[str, ...]]]) -> None:
        families = (
            self.allocation,
            self.replicas,
            self.load,
            self.p99,
            self.slo_target,
            self.slo_met,
            self.reward,
            self.utility,
        )
        for gauge in families:
            now = seen.get(id(gauge), set())
            for labels in self._labels.get(id(gauge), set()) - now:
                gauge.remove(*labels)
            self._labels[id(gauge)] = now


def _increase(before: int, now: int) -> int:
    return now - before if now >= before else now


class MetricsExporter(ManagerMetrics):
    """ManagerMetrics served over HTTP at ``bind`` ('host:port'; port 0: any free port)."""

    def __init__(self, bind: str = "127.0.0.1:9464") -> None:
        super().__init__()
        host, sep, port = bind.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"metrics: bind must be 'host:port', got {bind!r}")
        self.host = host
        self._server: Any
        self._server, self._thread = start_http_server(int(port), host, registry=self.registry)
        self.port: int = self._server.server_port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        """Stop the HTTP server and wait for its thread. Idempotent."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None
