"""The manager side of one PIM node: every control interval, read the agent's
counters, build a PimSnapshot, ask a PIM policy, and push its plan (versioned).

``tick()`` is one interval. With ``drive=True`` it also advances the agent's
emulated time (Step RPC), which is how tests and the benchmark run in virtual
time; under Ray the agent steps itself on the wall clock and the loop only reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from allocators.pim.base import PimPolicy, PimState
from allocators.pim.snapshot import AppMeasure, AppPlan, PimApp, PimCapacity, PimPlan, PimSnapshot
from pim_agent.client import PimClient
from pim_agent.device import Assignment, NodeWindow
from pim_agent.presets import PAGE_BYTES, AppProfile, DevicePreset


def capacity_of(p: DevicePreset) -> PimCapacity:
    return PimCapacity(
        n_stacks=p.n_stacks,
        pim_cores_per_stack=p.pim_cores_per_stack,
        cpu_cores=p.cpu_cores,
        stack_capacity_pages=int(p.stack_capacity_gib * 1024**3 // PAGE_BYTES),
        cpu_mem_ns=p.cpu_mem_ns,
        pim_local_ns=p.pim_local_ns,
        pim_remote_ns=p.pim_remote_ns,
        interval_s=p.interval_s,
    )


def measure_of(a: object) -> AppMeasure:
    return AppMeasure(
        p99_ms=a.p99_ms, throughput_rps=a.throughput_rps, cpu_cores=a.cpu_cores,
        pim_cores=a.pim_cores, cpu_completions=a.cpu_completions, cpu_busy_s=a.cpu_busy_s,
        pim_completions=a.pim_completions, pim_busy_s=a.pim_busy_s, locality=a.locality,
        page_fractions=a.page_fractions, migration_progress=a.migration_progress,
        backlog=a.backlog, latency_hist=tuple(a.latency_hist),
    )  # fmt: skip


def app_view(p: AppProfile, load_rps: float, profiled: bool) -> PimApp:
    """What the manager knows of an app: SLO, load, footprint (and R_i if profiled)."""
    hot = p.hot_pages
    return PimApp(
        name=p.name, latency_critical=p.kind == "lc", slo_p99_ms=p.slo_p99_ms,
        load_rps=load_rps, hot_pages=hot, cold_pages=p.cold_pages,
        shared_pages=int(p.shared_fraction * hot), r_profiled=p.r_pim if profiled else None,
    )  # fmt: skip


@dataclass
class PimControlLoop:
    client: PimClient
    policy: PimPolicy
    profiles: dict[str, AppProfile]
    drive: bool = True
    state: PimState = field(default_factory=dict)
    current: PimPlan | None = None
    version: int = 0
    rejections: list[str] = field(default_factory=list)
    time: float = 0.0

    def __post_init__(self) -> None:
        preset, self.version, _ = self.client.info()
        self.capacity = capacity_of(preset)
        self.state = self.policy.initial_state()

    def tick(self) -> NodeWindow | None:
        w = self.client.step() if self.drive else self.client.counters()
        measures = {a.name: measure_of(a) for a in w.apps} if w is not None else {}
        offered = {a.name: a.offered_rps for a in w.apps} if w is not None else {}
        apps = tuple(
            app_view(p, offered.get(n, 0.0), profiled=True) for n, p in self.profiles.items()
        )
        self.time = w.time if w is not None else self.time
        snap = PimSnapshot(self.time, self.capacity, apps, measures, self.current)
        plan, self.state = self.policy.decide(snap, self.state)
        if plan is not None:
            self.push(plan)
        return w

    def push(self, plan: PimPlan) -> bool:
        merged = dict(self.current.apps) if self.current else {}
        merged.update(plan.apps)
        changes = {
            n: Assignment(p.cpu, p.pim, p.pages, p.replicas)
            for n, p in plan.apps.items()
            if self.current is None or self.current.get(n) != p
        }
        if not changes:
            self.current = PimPlan(merged)
            return True
        out = self.client.apply(changes, self.version + 1)
        if out.accepted:
            self.version = out.version
            self.current = PimPlan(merged)
        else:
            self.rejections.append(out.reason)
            self.version = max(self.version, out.version)
        return out.accepted


def to_app_plan(a: Assignment) -> AppPlan:
    return AppPlan(a.cpu, a.pim, a.pages, a.replicas)
