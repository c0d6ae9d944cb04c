"""Manager-side conversions between the cluster-wide data model and one PIM agent
(pure: no gRPC, no clock).

- ``plan_for_node``: an Allocation's ``pim_cores`` per job and the PlacementPlan's
  PagePlacement on one node become the per-app assignments the agent's ApplyPlan
  takes. A job's PIM cores are spread over the stacks in proportion to where its
  pages are (largest remainder, never past a stack's cores), so its cores run
  where its pages live; its shared read-only pages are copied to every stack it
  runs PIM cores on when it spans stacks (PIMCloud's page rules).
- ``telemetry_windows``: the agent's counters for one window become one
  ``cluster_mgr.model.TelemetryWindow`` per app, device counters in ``extras``
  under names prefixed ``pim.``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cluster_mgr.model import (
    LATENCY_BUCKET_EDGES_MS,
    Allocation,
    PlacementPlan,
    TelemetryWindow,
    histogram_percentile,
)
from pim_agent.device import Assignment, NodeWindow
from pim_agent.presets import DevicePreset


class PlacementError(ValueError):
    """The Allocation and PlacementPlan cannot be made into a valid plan for the node."""


def spread_cores(total: int, fractions: tuple[float, ...], per_stack: int) -> tuple[int, ...]:
    """``total`` cores over stacks in proportion to ``fractions`` (largest remainder),
    at most ``per_stack`` per stack; overflow goes to the stacks with most pages."""
    n = len(fractions)
    if total > per_stack * n:
        raise PlacementError(f"{total} PIM cores asked, {per_stack * n} exist on the node")
    f = np.asarray(fractions, float)
    want = f * total
    out = np.floor(want).astype(int)
    for s in np.argsort(-(want - out), kind="stable")[: total - int(out.sum())]:
        out[s] += 1
    order = np.argsort(-f, kind="stable")
    spill = int(np.maximum(out - per_stack, 0).sum())
    out = np.minimum(out, per_stack)
    for s in order:
        take = min(spill, per_stack - int(out[s]))
        out[s] += take
        spill -= take
    return tuple(int(x) for x in out)


def plan_for_node(
    allocation: Allocation,
    placement: PlacementPlan,
    node_id: str,
    preset: DevicePreset,
    big_cores: Mapping[str, int] | None = None,
) -> dict[str, Assignment]:
    """Per-app assignments for the PIM agent of ``node_id``.

    Jobs are those with a PagePlacement on the node. PIM cores: the job's NodeShare
    on this node when the plan has one carrying ``pim_cores``, else the
    Allocation's amount. ``big_cores`` (the node's big cores per job; Ray CPUs are
    a separate budget) defaults to none. The whole plan is checked against the
    node's cores before it is returned."""
    big_cores = dict(big_cores or {})
    n = preset.n_stacks
    shares = {s.job: s for s in placement.for_node(node_id)}
    out: dict[str, Assignment] = {}
    for pp in placement.pages:
        if pp.node_id != node_id:
            continue
        fr = tuple(float(x) for x in pp.stack_fractions)
        if len(fr) != n or any(x < -1e-9 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise PlacementError(
                f"job {pp.job!r}: page fractions must be {n} values >= 0 summing to 1"
            )
        share = shares.get(pp.job)
        amount = (
            share.resources.pim_cores
            if share is not None and share.resources.pim_cores > 0
            else allocation.get(pp.job).pim_cores
        )
        if abs(amount - round(amount)) > 1e-9:
            raise PlacementError(f"job {pp.job!r}: pim_cores must be integral, got {amount}")
        pim = spread_cores(int(round(amount)), fr, preset.pim_cores_per_stack)
        used = tuple(s for s, c in enumerate(pim) if c > 0)
        out[pp.job] = Assignment(
            int(big_cores.get(pp.job, 0)), pim, fr, used if len(used) > 1 else ()
        )
    cpu = sum(a.cpu for a in out.values())
    if cpu > preset.cpu_cores:
        raise PlacementError(f"{cpu} big cores asked, {preset.cpu_cores} exist")
    for s in range(n):
        k = sum(a.pim[s] for a in out.values())
        if k > preset.pim_cores_per_stack:
            raise PlacementError(
                f"{k} PIM cores asked on stack {s}, {preset.pim_cores_per_stack} exist"
            )
    return out


def _within(hist: tuple[int, ...], slo_ms: float | None) -> int:
    """Requests in buckets wholly at or below the SLO (a lower bound, never credits
    a bucket that straddles the target)."""
    if slo_ms is None or not hist:
        return 0
    upper = LATENCY_BUCKET_EDGES_MS[1 : len(hist) + 1]
    return int(np.asarray(hist)[upper <= slo_ms].sum())


def telemetry_windows(
    w: NodeWindow,
    node_id: str,
    seq: int,
    slo_ms: Mapping[str, float | None] | None = None,
) -> list[TelemetryWindow]:
    """One TelemetryWindow per app of the agent's window ``w`` (replica ``pim@node``)."""
    slo_ms = dict(slo_ms or {})
    node_extras: dict[str, float] = {
        "pim.cpu_utilization": w.cpu_utilization,
        "pim.migration_engine_busy": w.migration_engine_busy,
        "pim.version": float(w.version),
    }
    for s, u in enumerate(w.pim_utilization):
        node_extras[f"pim.stack{s}.utilization"] = u
    for c, bw in enumerate(w.channel_bw_gbs):
        node_extras[f"pim.channel{c}.bw_gbs"] = bw
    out = []
    for a in w.apps:
        extras = dict(node_extras)
        extras.update(
            {
                "pim.offered_rps": a.offered_rps,
                "pim.throughput_rps": a.throughput_rps,
                "pim.cpu_cores": a.cpu_cores,
                "pim.cpu_completions": float(a.cpu_completions),
                "pim.cpu_busy_s": a.cpu_busy_s,
                "pim.pages_pending": float(a.pages_pending),
                "pim.migration_progress": a.migration_progress,
                "pim.backlog": a.backlog,
            }
        )
        for s in range(len(a.pim_cores)):
            extras[f"pim.stack{s}.cores"] = a.pim_cores[s]
            extras[f"pim.stack{s}.completions"] = float(a.pim_completions[s])
            extras[f"pim.stack{s}.busy_s"] = a.pim_busy_s[s]
            extras[f"pim.stack{s}.locality"] = a.locality[s]
            extras[f"pim.stack{s}.page_fraction"] = a.page_fractions[s]
        hist = tuple(int(x) for x in a.latency_hist)
        done = sum(hist) > 0

        def pct(q: float, hist: tuple[int, ...] = hist, done: bool = done) -> float:
            return histogram_percentile(np.asarray(hist), q) if done else math.nan

        out.append(
            TelemetryWindow(
                job=a.name,
                node_id=node_id,
                replica=f"pim@{node_id}",
                seq=seq,
                start=w.time - w.interval_s,
                end=w.time,
                offered=int(round(a.offered_rps * w.interval_s)),
                completed=a.completed,
                within_slo=_within(hist, slo_ms.get(a.name)),
                latency_mean_ms=a.mean_ms if done else math.nan,
                latency_p50_ms=pct(50.0),
                latency_p95_ms=pct(95.0),
                latency_p99_ms=pct(99.0),
                cpu_used_s=a.cpu_busy_s + sum(a.pim_busy_s),
                latency_hist=hist,
                extras=extras,
            )
        )
    return out
