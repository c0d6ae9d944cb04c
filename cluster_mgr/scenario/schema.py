"""A loaded, validated scenario as plain frozen dataclasses (the TOML format is in docs/scenarios.md).

The manager-facing part of each job is a ``JobSpec`` (the same type the Ray
backend gets); everything else (load, arrival, the ground-truth workload)
belongs to the emulation only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster_mgr.model import SLO, JobSpec, NodeInfo, ResourceVector, UtilitySpec
from cluster_mgr.scenario.loads import LoadSpec
from cluster_mgr.scenario.presets import DpuDevice, PimDevice
from cluster_mgr.workloads import GraphParams

WORKLOAD_MODELS = ("curve", "queue", "inference")
OBJECTIVES = ("utilitarian", "egalitarian", "nash", "p99")


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    capacity: ResourceVector  # includes pim_cores from the PIM device and mesh from the DPU
    pim: PimDevice | None = None
    dpu: DpuDevice | None = None

    def info(self, alive: bool = True) -> NodeInfo:
        return NodeInfo(self.node_id, self.capacity, alive=alive)


@dataclass(frozen=True)
class NodeEvent:
    time_s: float
    node_id: str
    action: Literal["fail", "return"]


@dataclass(frozen=True)
class JobEntry:
    """One job the manager sees, with its emulation-only ground truth and load.

    ``model`` is "curve", "queue" or "service" (a service of ``graph``).
    ``workload`` holds the validated ground-truth parameters.
    """

    spec: JobSpec
    model: str
    workload: dict[str, float | str]
    load: LoadSpec | None  # None for graph services (their load comes from the graph)
    arrival_s: float = 0.0
    departure_s: float = math.inf
    graph: str | None = None
    service: str | None = None
    timeout_ms: float = 10_000.0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class GraphEntry:
    """A microservice graph: its services are jobs named ``<graph>.<service>``.

    ``base_ms`` / ``base_sd_ms``: mean and standard deviation of the per-request
    latency outside the modelled queues (client, network, runtime), calibrated
    on the real runs. ``slo`` is the end-to-end SLO.
    """

    name: str
    params: GraphParams
    jobs: tuple[str, ...]  # job name per service, in params.services order
    slo: SLO
    utility: UtilitySpec
    weight: float
    load: LoadSpec
    base_ms: float = 0.0
    base_sd_ms: float = 0.0
    network_ms: float = 0.0
    timeout_ms: float = 10_000.0
    arrival_s: float = 0.0
    departure_s: float = math.inf


@dataclass(frozen=True)
class LatencySurge:
    """Extra network latency on one call edge of a graph during [start_s, end_s)."""

    graph: str
    src: str
    dst: str
    start_s: float
    end_s: float
    extra_ms: float


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    duration_s: float
    round_s: float
    warmup_s: float
    seed: int
    learner: str
    objective: str
    nodes: tuple[NodeSpec, ...]
    events: tuple[NodeEvent, ...]
    jobs: tuple[JobEntry, ...]
    graphs: tuple[GraphEntry, ...]
    surges: tuple[LatencySurge, ...]
    #: The per-node fast controller the sim steps every fast window ([control] local_controller;
    #: cluster_mgr.local.registry names it); "none": no fast layer, the global allocator alone.
    local_controller: str = "none"

    @property
    def specs(self) -> tuple[JobSpec, ...]:
        return tuple(j.spec for j in self.jobs)

    def capacity(self) -> ResourceVector:
        return ResourceVector.total(n.capacity for n in self.nodes)

    def with_duration(self, duration_s: float) -> Scenario:
        from dataclasses import replace

        return replace(
            self, duration_s=float(duration_s), warmup_s=min(self.warmup_s, duration_s / 2)
        )
