"""What a LocalController reads every fast window: arrays over (nodes, services).

The Ray backend fills one row from a NodeAgent's fast windows and the node
proxy's Envoy stats; the sim backend fills every node's row at once. All times
are milliseconds, rates requests/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NodeSignals:
    """One fast window of telemetry for N nodes x S services.

    ``exec_p99_ms``: P99 of a service's own time (queueing + processing);
    ``exec_mean_ms`` its mean; ``upstream_ms``: mean time from request start to
    the request reaching the service (SurgeGuard's time-from-start);
    ``arrival_rps``: requests reaching the service; ``queue_len``: requests
    waiting or in service; ``queue_delay_ms``: mean wait before service;
    ``throttled_frac``: fraction of the window the CPU quota throttled;
    ``utilization``: busy cores / quota. ``p99_ms`` (N,) is the node's
    end-to-end request P99 and ``slo_ms`` (N,) its target.
    """

    window: int
    time: float
    services: tuple[str, ...]
    exec_p99_ms: np.ndarray
    exec_mean_ms: np.ndarray
    upstream_ms: np.ndarray
    arrival_rps: np.ndarray
    queue_len: np.ndarray
    queue_delay_ms: np.ndarray
    throttled_frac: np.ndarray
    utilization: np.ndarray
    p99_ms: np.ndarray
    slo_ms: np.ndarray
    offered_rps: np.ndarray
    rejected_frac: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.exec_p99_ms.shape  # type: ignore[return-value]

    def take(self, idx: np.ndarray | slice) -> NodeSignals:
        """The rows of some nodes (a batched controller steps a slice of the cluster)."""
        kw = {
            k: getattr(self, k)[idx]
            for k in self.__dataclass_fields__
            if isinstance(getattr(self, k), np.ndarray)
        }
        return NodeSignals(window=self.window, time=self.time, services=self.services, **kw)
