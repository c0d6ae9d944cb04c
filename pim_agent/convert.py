"""Conversions between the device's dataclasses and the generated protobuf messages."""

from __future__ import annotations

import math
from types import ModuleType

from pim_agent.device import AppWindow, Assignment, NodeWindow
from pim_agent.presets import AppProfile, DevicePreset


def profile_to_pb(pb: ModuleType, p: AppProfile) -> object:
    return pb.AppProfile(
        name=p.name, kind=p.kind, slo_p99_ms=p.slo_p99_ms or 0.0,
        cpu_service_ms=p.cpu_service_ms, mem_intensity=p.mem_intensity, r_pim=p.r_pim,
        hot_gib=p.hot_gib, cold_gib=p.cold_gib, shared_fraction=p.shared_fraction,
    )  # fmt: skip


def profile_from_pb(m: object) -> AppProfile:
    return AppProfile(
        name=m.name, kind=m.kind or "lc", slo_p99_ms=m.slo_p99_ms or None,
        cpu_service_ms=m.cpu_service_ms, mem_intensity=m.mem_intensity, r_pim=m.r_pim,
        hot_gib=m.hot_gib, cold_gib=m.cold_gib, shared_fraction=m.shared_fraction,
    )  # fmt: skip


def assignment_to_pb(pb: ModuleType, app: str, a: Assignment) -> object:
    return pb.AppAssignment(
        app=app, cpu_cores=a.cpu, pim_cores=list(a.pim),
        page_fractions=list(a.pages), replica_stacks=list(a.replicas),
    )  # fmt: skip


def assignment_from_pb(m: object) -> Assignment:
    return Assignment(
        cpu=int(m.cpu_cores), pim=tuple(int(x) for x in m.pim_cores),
        pages=tuple(float(x) for x in m.page_fractions),
        replicas=tuple(int(x) for x in m.replica_stacks),
    )  # fmt: skip


def info_to_pb(pb: ModuleType, p: DevicePreset, version: int, apps: tuple[str, ...]) -> object:
    return pb.DeviceInfo(
        preset=p.name, n_stacks=p.n_stacks, stack_capacity_gib=p.stack_capacity_gib,
        channels_per_stack=p.channels_per_stack, stack_bandwidth_gbs=p.stack_bandwidth_gbs,
        pim_cores_per_stack=p.pim_cores_per_stack, cpu_cores=p.cpu_cores,
        cpu_mem_ns=p.cpu_mem_ns, pim_local_ns=p.pim_local_ns, pim_remote_ns=p.pim_remote_ns,
        page_migrate_us=p.page_migrate_us, interval_s=p.interval_s, version=version,
        apps=list(apps),
    )  # fmt: skip


def info_from_pb(m: object) -> DevicePreset:
    return DevicePreset(
        name=m.preset, n_stacks=m.n_stacks, stack_capacity_gib=m.stack_capacity_gib,
        channels_per_stack=m.channels_per_stack, stack_bandwidth_gbs=m.stack_bandwidth_gbs,
        pim_cores_per_stack=m.pim_cores_per_stack, cpu_cores=m.cpu_cores,
        cpu_mem_ns=m.cpu_mem_ns, pim_local_ns=m.pim_local_ns, pim_remote_ns=m.pim_remote_ns,
        page_migrate_us=m.page_migrate_us, interval_s=m.interval_s,
    )  # fmt: skip


def counters_to_pb(pb: ModuleType, w: NodeWindow | None) -> object:
    if w is None:
        return pb.Counters(empty=True)
    apps = [
        pb.AppCounters(
            app=a.name,
            kind=a.kind,
            offered_rps=a.offered_rps,
            throughput_rps=a.throughput_rps,
            completed=a.completed,
            p99_ms=a.p99_ms,
            mean_ms=a.mean_ms,
            latency_hist=list(a.latency_hist),
            cpu_cores=a.cpu_cores,
            pim_cores=list(a.pim_cores),
            cpu_completions=a.cpu_completions,
            cpu_busy_s=a.cpu_busy_s,
            pim_completions=list(a.pim_completions),
            pim_busy_s=list(a.pim_busy_s),
            locality=list(a.locality),
            page_fractions=list(a.page_fractions),
            pages_pending=a.pages_pending,
            migration_progress=a.migration_progress,
            backlog=a.backlog,
        )  # fmt: skip
        for a in w.apps
    ]
    return pb.Counters(
        time=w.time, interval_s=w.interval_s, version=w.version, apps=apps,
        channel_bw_gbs=list(w.channel_bw_gbs), pim_utilization=list(w.pim_utilization),
        cpu_utilization=w.cpu_utilization, migration_engine_busy=w.migration_engine_busy,
    )  # fmt: skip


def counters_from_pb(m: object) -> NodeWindow | None:
    if m.empty:
        return None
    apps = tuple(
        AppWindow(
            name=a.app,
            kind=a.kind,
            offered_rps=a.offered_rps,
            throughput_rps=a.throughput_rps,
            completed=int(a.completed),
            p99_ms=a.p99_ms if a.completed else math.nan,
            mean_ms=a.mean_ms,
            latency_hist=tuple(int(x) for x in a.latency_hist),
            cpu_cores=a.cpu_cores,
            pim_cores=tuple(a.pim_cores),
            cpu_completions=int(a.cpu_completions),
            cpu_busy_s=a.cpu_busy_s,
            pim_completions=tuple(int(x) for x in a.pim_completions),
            pim_busy_s=tuple(a.pim_busy_s),
            locality=tuple(a.locality),
            page_fractions=tuple(a.page_fractions),
            pages_pending=int(a.pages_pending),
            migration_progress=a.migration_progress,
            backlog=a.backlog,
        )  # fmt: skip
        for a in m.apps
    )
    return NodeWindow(
        time=m.time, interval_s=m.interval_s, version=int(m.version), apps=apps,
        channel_bw_gbs=tuple(m.channel_bw_gbs), pim_utilization=tuple(m.pim_utilization),
        cpu_utilization=m.cpu_utilization, migration_engine_busy=m.migration_engine_busy,
    )  # fmt: skip
