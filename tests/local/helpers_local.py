"""Hand-made signals for controller rule tests."""

from __future__ import annotations

import numpy as np

from cluster_mgr.local.signals import NodeSignals


def signals(
    exec_p99: np.ndarray,
    *,
    window: int = 0,
    upstream: np.ndarray | None = None,
    arrival: np.ndarray | None = None,
    p99: float = 10.0,
    slo: float = 20.0,
    queue_delay: np.ndarray | None = None,
    utilization: np.ndarray | None = None,
    throttled: np.ndarray | None = None,
) -> NodeSignals:
    e = np.atleast_2d(np.asarray(exec_p99, dtype=float))
    z = np.zeros_like(e)
    arr = z + 100.0 if arrival is None else np.atleast_2d(arrival)
    return NodeSignals(
        window=window,
        time=window * 0.1,
        services=tuple(f"s{i}" for i in range(e.shape[1])),
        exec_p99_ms=e,
        exec_mean_ms=e / 3.0,
        upstream_ms=z if upstream is None else np.atleast_2d(upstream),
        arrival_rps=arr,
        queue_len=arr / 1000.0 * e / 3.0,
        queue_delay_ms=z if queue_delay is None else np.atleast_2d(queue_delay),
        throttled_frac=z if throttled is None else np.atleast_2d(throttled),
        utilization=z + 0.5 if utilization is None else np.atleast_2d(utilization),
        p99_ms=np.array([p99]),
        slo_ms=np.array([slo]),
        offered_rps=np.array([100.0]),
        rejected_frac=np.zeros(1),
    )
