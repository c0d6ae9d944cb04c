"""Where an inference job's bounds live in its JobSpec, and the runtime API to change them.

Latency bound: ``slo.target`` ms at ``slo.percentile`` (99 by default).
Memory bound: ``maximum.memory`` (GiB, as every memory amount in the model).
Changing bounds at run time (Delen's runtime bound API) is a spec update: the
controller swaps the JobSpec and the policy reads the new bounds at its next
decision (the controller may call it at once; the policy notes the change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster_mgr.model import SLO, JobSpec, ResourceVector

MIB_PER_GIB = 1024.0


@dataclass(frozen=True)
class JobBounds:
    latency_ms: float  # bound on P99 latency of a window
    memory_mb: float  # bound on the job's memory (inf: none)


def job_bounds(spec: JobSpec) -> JobBounds:
    lat = spec.slo.target if spec.slo is not None and spec.slo.metric == "latency" else math.inf
    mem = spec.bound_max("memory")
    mem_mb = math.inf if (math.isinf(mem) or mem <= 0) else mem * MIB_PER_GIB
    return JobBounds(latency_ms=lat, memory_mb=mem_mb)


def set_bounds(
    spec: JobSpec, *, latency_ms: float | None = None, memory_mb: float | None = None
) -> JobSpec:
    """A copy of ``spec`` with new bounds (None keeps the current one)."""
    changes: dict[str, object] = {}
    if latency_ms is not None:
        if not latency_ms > 0:
            raise ValueError(f"latency bound must be > 0 ms, got {latency_ms}")
        slo = spec.slo or SLO()
        changes["slo"] = SLO(
            metric="latency", target=latency_ms, percentile=slo.percentile, threshold=slo.threshold
        )
    if memory_mb is not None:
        if not memory_mb > 0:
            raise ValueError(f"memory bound must be > 0 MB, got {memory_mb}")
        base = spec.maximum if spec.maximum is not None else ResourceVector(cpu=1e9)
        changes["maximum"] = base.with_amount("memory", memory_mb / MIB_PER_GIB)
    return spec.evolve(**changes) if changes else spec
