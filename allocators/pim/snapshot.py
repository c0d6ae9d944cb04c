"""Plain data a PIM policy sees and returns (pure: no Ray, no gRPC, no clock).

A PIM policy is a closed-loop controller stepped once per control interval
(100 ms): ``decide(snapshot, state) -> (plan or None, state)``; None keeps the
plan in force. ``state`` is plain JSON-able data the caller hands back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PimCapacity:
    """One node's PIM memory system as its agent describes it."""

    n_stacks: int
    pim_cores_per_stack: int
    cpu_cores: int
    stack_capacity_pages: int
    cpu_mem_ns: float = 65.0
    pim_local_ns: float = 21.0
    pim_remote_ns: float = 86.0
    interval_s: float = 0.1


@dataclass(frozen=True, slots=True)
class PimApp:
    """An app as the manager knows it: its SLO, offered load and page footprint.

    ``r_profiled`` is R_i from offline profiling (PIMCloud profiles it); None when
    unknown. Our policy never reads it: it learns each app's response online.
    """

    name: str
    latency_critical: bool
    slo_p99_ms: float | None
    load_rps: float
    hot_pages: int
    cold_pages: int = 0
    shared_pages: int = 0
    r_profiled: float | None = None


@dataclass(frozen=True, slots=True)
class AppMeasure:
    """One app's counters for the last control interval (from the agent)."""

    p99_ms: float
    throughput_rps: float
    cpu_cores: float
    pim_cores: tuple[float, ...]
    cpu_completions: int
    cpu_busy_s: float
    pim_completions: tuple[int, ...]
    pim_busy_s: tuple[float, ...]
    locality: tuple[float, ...]
    page_fractions: tuple[float, ...]
    migration_progress: float = 1.0
    backlog: float = 0.0
    latency_hist: tuple[int, ...] = ()  # on cluster_mgr.model.LATENCY_BUCKET_EDGES_MS


@dataclass(frozen=True, slots=True)
class AppPlan:
    """Big cores, PIM cores per stack, hot-page fractions per stack, replica stacks."""

    cpu: int
    pim: tuple[int, ...]
    pages: tuple[float, ...]
    replicas: tuple[int, ...] = ()

    @property
    def cores(self) -> int:
        return self.cpu + sum(self.pim)


@dataclass(frozen=True, slots=True)
class PimPlan:
    apps: Mapping[str, AppPlan]

    def get(self, name: str) -> AppPlan | None:
        return self.apps.get(name)


@dataclass(frozen=True, slots=True)
class PimSnapshot:
    time: float
    capacity: PimCapacity
    apps: tuple[PimApp, ...]
    measures: Mapping[str, AppMeasure] = field(default_factory=dict)
    current: PimPlan | None = None

    def app(self, name: str) -> PimApp:
        for a in self.apps:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def lc(self) -> tuple[PimApp, ...]:
        return tuple(a for a in self.apps if a.latency_critical)

    @property
    def be(self) -> tuple[PimApp, ...]:
        return tuple(a for a in self.apps if not a.latency_critical)

    def settled(self, name: str) -> bool:
        """True when the app's cores and pages have reached the plan in force."""
        m, cur = self.measures.get(name), self.current.get(name) if self.current else None
        if m is None or cur is None:
            return False
        cores_ok = abs(m.cpu_cores - cur.cpu) < 1e-6 and all(
            abs(a - b) < 1e-6 for a, b in zip(m.pim_cores, cur.pim, strict=True)
        )
        return cores_ok and m.migration_progress >= 1.0 - 1e-9
