"""The admin-facing control-plane interface, as plain requests and replies.

The controller (under Ray or in-process) implements ``ControlPlane``; the
admin gRPC service (cluster_mgr/admin) is a thin translation of it, and the CLI
is the gRPC client. Replies are plain dataclasses so they print, log and
compare easily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cluster_mgr.model import JobSpec


@dataclass(frozen=True)
class JobStatus:
    name: str
    kind: str
    weight: float
    priority: int
    allocation: dict[str, float]  # resource kind -> amount in force
    replicas: int
    nodes: tuple[str, ...]
    load_rps: float
    p99_ms: float  # last telemetry window (nan if no traffic)
    reward: float  # last telemetry window
    utility: float
    slo_target: float | None
    slo_met: bool | None  # None: no SLO, or no data yet


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    alive: bool
    draining: bool
    capacity: dict[str, float]
    used: dict[str, float]
    agent_ok: bool


@dataclass(frozen=True)
class Status:
    policy: str
    shadow: bool
    round: int
    epoch: int
    time: float
    next_round_in_s: float
    jobs: tuple[JobStatus, ...]
    nodes: tuple[NodeStatus, ...]
    telemetry_windows: int
    lost_windows: int
    log_uri: str


@dataclass(frozen=True)
class Explanation:
    """Why a job has what it has."""

    job: str
    allocation: dict[str, float]
    bounds: dict[str, float]  # lcb / mean / ucb of the job's performance at its allocation and load
    load_rps: float
    share_of_objective: float  # the job's weighted utility over the objective's total
    binding: tuple[str, ...]  # constraints that bind: "minimum cpu", "capacity", "pin", ...
    misspecified: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    kind: str  # "ours" | "baseline" | "oracle" | "plug-in"
    description: str
    source: str  # "built-in", entry point, or dotted path


class ControlPlane(Protocol):
    def status(self) -> Status: ...

    def submit(self, spec: JobSpec) -> None:
        """Add or update a job; raises ValueError (nothing changes) if it cannot be admitted."""

    def remove(self, name: str) -> None:
        """Remove a job; raises KeyError if unknown."""

    def drain(self, node_id: str) -> None:
        """Place no new replicas on the node and move its replicas away (make-before-break)."""

    def explain(self, job: str) -> Explanation: ...

    def policies(self) -> tuple[PolicyInfo, ...]: ...
