"""Shared helpers of the Ray integration tests: a multi-node Cluster on one machine, and waiting."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psutil
import ray
from ray.cluster_utils import Cluster

from tests import waiting

STORE = 100 * 1024**2  # a small object store per node (2-core, shared machine)
# Dead nodes are reported within ~1.5 s instead of Ray's default 30 s+.
FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_initial_delay_ms": 0,
}


@contextmanager
def multi_node_cluster(namespace: str, node_cpus: int, workers: int = 3) -> Iterator[tuple[Cluster, list[Any]]]:
    """A head and ``workers`` worker nodes advertising ``node_cpus`` logical CPUs each, with
    this process connected as a driver; everything is shut down on exit."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": node_cpus,
            "object_store_memory": STORE,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    nodes = [c.add_node(num_cpus=node_cpus, object_store_memory=STORE) for _ in range(workers)]
    ray.init(address=c.address, namespace=namespace)
    try:
        yield c, nodes
    finally:
        shutdown_cluster(c)


def shutdown_cluster(c: Cluster | None = None, timeout_s: float = 60.0) -> None:
    """Disconnect, shut ``c`` down (or the local instance ``ray.init`` started), and wait until
    every Ray process this test process started has exited.

    Ray's shutdown stops the raylets and GCS; their workers (agents, replicas) notice and exit on
    their own, seconds later. On two cores, a next module's cluster starting while a few dozen
    workers still exit can miss Ray's 30 s raylet start-up deadline; waiting here makes each
    module start on a quiet machine, and leaves no Ray process behind."""
    mine = [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]
    ray.shutdown()
    if c is not None:
        c.shutdown()
    _, alive = psutil.wait_procs(mine, timeout=timeout_s)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def _is_ray(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "ray" in cmd


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """tests.waiting.wait_for, polling less often: each poll here is a Ray call."""
    return waiting.wait_for(cond, timeout, what, every)
