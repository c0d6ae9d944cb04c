"""Knob + CPU co-allocation for inference jobs, and the fixed-knob baselines.

Per round, for each inference job and each CPU amount c on the 0.1 grid, the
feasible knobs are those whose learned P99 latency UPPER bound at (c, load x
(1 + load_margin)) is within the job's latency bound and whose memory at c
(weights + one working set per worker) is within its memory bound. The job's
value at c is the best mean accuracy among them (weighted by the job weight);
an exact knapsack over CPU units then picks one c per job within capacity,
maximising the summed value, so the accuracy lost is least. A job with no
feasible option gets the option that violates its bounds least (reported).
CPU left over goes to the jobs closest to their latency bound, where it
lowers the latency upper bound without breaking the memory bound.

The policy re-plans every call from the snapshot (load, capacity and bounds
are read afresh), so a change in any of them is reconsidered at once; the
state records why a job's choice changed. Knob choices are returned in
``state["knobs"]`` (job -> knob id), which the runtime applies to the replicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from allocators.base import Policy, PolicyState, Snapshot
from allocators.inference.bounds import MIB_PER_GIB, JobBounds, job_bounds
from allocators.inference.solver import solve
from cluster_mgr.model import CPU_QUANTUM, Allocation, JobKind, JobSpec, ResourceVector


class KnobGrid(Protocol):
    """Estimates for every knob (rows) at every cpu of a grid (columns); see learners.knob_profile.Grid."""

    knobs: tuple[str, ...]
    latency_hi: np.ndarray  # (K, C) P99 upper bound, ms
    memory_mb: np.ndarray  # (K, C)
    accuracy: np.ndarray  # (K,)
    accuracy_lo: np.ndarray  # (K,)


class KnobModel(Protocol):
    """What the policy needs of a knob profile (learners.knob_profile.KnobModel has it)."""

    def grid(self, cpus: np.ndarray, load: float) -> KnobGrid: ...


#: Value given to an option that misses a bound: below any feasible accuracy.
_INFEASIBLE = -10.0
#: Keep the current knob unless another is better by more than this (accuracy, fraction).
_HYSTERESIS = 0.0005


def _units(x: float) -> int:
    return int(math.floor(x / CPU_QUANTUM + 1e-9))


class KnobPolicy(Policy):
    name: ClassVar[str] = "inference_knobs"
    kind: ClassVar[str] = "ours"
    description: ClassVar[str] = (
        "co-allocates accuracy knobs and CPU: meets latency and memory bounds at least accuracy loss"
    )
    source: ClassVar[str] = "BlinkNet / Delen / AxTrain"
    resources: ClassVar[tuple[str, ...]] = ("cpu", "memory")

    def __init__(
        self,
        profiles: Mapping[str, KnobModel] | None = None,
        *,
        load_margin: float = 0.1,
        knobs: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``profiles``: job -> learner (else taken from ``snapshot.models``);
        ``knobs``: job -> the knob ids allowed (default: all the learner knows)."""
        self.profiles = dict(profiles or {})
        self.load_margin = load_margin
        self.allowed = dict(knobs or {})

    # -- inputs ----------------------------------------------------------------------
    def _profile(self, snapshot: Snapshot, job: str) -> KnobModel:
        m = snapshot.models.get(job)
        if m is not None and callable(getattr(m, "grid", None)):
            return m  # type: ignore[return-value]
        if job in self.profiles:
            return self.profiles[job]
        raise KeyError(f"{self.name}: no knob profile for inference job {job!r}")

    def _load(self, snapshot: Snapshot, job: str) -> float:
        forecast = snapshot.loads.get(job, 0.0)
        measured = snapshot.signals.get(job, {}).get("load", 0.0)
        return max(forecast, measured) * (1.0 + self.load_margin)

    # -- per-job options -------------------------------------------------------------
    def _options(
        self,
        spec: JobSpec,
        profile: KnobModel,
        load: float,
        budget: int,
        previous: str | None,
    ) -> tuple[list[tuple[int, float]], list[dict[str, Any]]]:
        lo = max(1, _units(spec.minimum.cpu))
        hi = min(budget, _units(min(spec.bound_max("cpu"), budget * CPU_QUANTUM)))
        units = np.arange(lo, max(lo, hi) + 1)
        g = profile.grid(units * CPU_QUANTUM, load)
        allowed = self.allowed.get(spec.name)
        rows = np.array([k in allowed for k in g.knobs]) if allowed else np.ones(len(g.knobs), bool)
        b = job_bounds(spec)
        ok = (g.latency_hi <= b.latency_ms) & (g.memory_mb <= b.memory_mb) & rows[:, None]
        acc = np.where(rows, g.accuracy, -np.inf)
        prev = g.knobs.index(previous) if previous in g.knobs else -1
        with np.errstate(invalid="ignore"):
            violation = np.maximum(g.latency_hi / b.latency_ms, g.memory_mb / b.memory_mb)
        violation = np.where(rows[:, None], np.nan_to_num(violation, nan=1e9, posinf=1e9), np.inf)
        opts: list[tuple[int, float]] = []
        meta: list[dict[str, Any]] = []
        for c, u in enumerate(units):
            feas = ok[:, c]
            if feas.any():
                score = np.where(feas, acc, -np.inf)
                k = int(np.argmax(score))
                if prev >= 0 and feas[prev] and acc[prev] >= acc[k] - _HYSTERESIS:
                    k = prev  # no churn for a gain inside the hysteresis band
                value = spec.weight * float(acc[k])
            else:
                k = int(np.argmin(violation[:, c]))
                value = _INFEASIBLE - float(min(violation[k, c], 1e6))
            opts.append((int(u), value))
            meta.append(
                {
                    "knob": g.knobs[k],
                    "feasible": bool(feas.any()),
                    "latency_hi_ms": float(g.latency_hi[k, c]),
                    "memory_mb": float(g.memory_mb[k, c]),
                    "accuracy": float(g.accuracy[k]),
                    "accuracy_lo": float(g.accuracy_lo[k]),
                    "k": k,
                }
            )
        return opts, meta

    # -- decision --------------------------------------------------------------------
    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        jobs = [j for j in snapshot.jobs if j.kind == JobKind.INFERENCE]
        others = [j for j in snapshot.jobs if j.kind != JobKind.INFERENCE]
        cap = snapshot.capacity
        # other jobs keep their minimums; inference jobs share the rest
        budget = _units(max(0.0, cap.cpu - sum(j.minimum.cpu for j in others)))
        prev_knobs: dict[str, str] = dict(state.get("knobs", {}))
        loads = {j.name: self._load(snapshot, j.name) for j in jobs}
        all_opts, all_meta = [], []
        for j in jobs:
            o, m = self._options(
                j, self._profile(snapshot, j.name), loads[j.name], budget, prev_knobs.get(j.name)
            )
            all_opts.append(o)
            all_meta.append(m)
        picks = solve(all_opts, budget) if jobs else []
        if picks is None:  # even the minimums do not fit: cheapest option each
            picks = [0] * len(jobs)
        chosen = {
            j.name: all_meta[i][p] | {"units": all_opts[i][p][0]}
            for i, (j, p) in enumerate(zip(jobs, picks, strict=True))
        }
        self._spread_leftover(snapshot, jobs, chosen, loads, budget)
        amounts = {j.name: j.minimum for j in others}
        reasons = self._reasons(state, jobs, chosen, loads, cap.cpu)
        for j in jobs:
            c = chosen[j.name]
            amounts[j.name] = ResourceVector(
                cpu=round(c["units"] * CPU_QUANTUM, 1), memory=c["memory_mb"] / MIB_PER_GIB
            )
        new_state: PolicyState = {
            "knobs": {n: c["knob"] for n, c in chosen.items()},
            "feasible": {n: c["feasible"] for n, c in chosen.items()},
            "predicted": {
                n: {k: c[k] for k in ("latency_hi_ms", "memory_mb", "accuracy", "accuracy_lo")}
                for n, c in chosen.items()
            },
            "bounds": {j.name: [job_bounds(j).latency_ms, job_bounds(j).memory_mb] for j in jobs},
            "loads": loads,
            "capacity_cpu": cap.cpu,
            "reasons": reasons,
        }
        return snapshot.allocation(amounts, self.name), new_state

    def _spread_leftover(
        self,
        snapshot: Snapshot,
        jobs: list[JobSpec],
        chosen: dict[str, dict[str, Any]],
        loads: Mapping[str, float],
        budget: int,
    ) -> None:
        """Give unused CPU units to the jobs with the least latency headroom, knob unchanged."""
        left = budget - sum(c["units"] for c in chosen.values())
        order = sorted(
            jobs, key=lambda j: -chosen[j.name]["latency_hi_ms"] / job_bounds(j).latency_ms
        )
        for j in order:
            if left <= 0:
                break
            c, b = chosen[j.name], job_bounds(j)
            if not c["feasible"]:
                continue
            prof = self._profile(snapshot, j.name)
            top = min(c["units"] + left, _units(j.bound_max("cpu")))
            units = np.arange(c["units"], top + 1)
            if len(units) <= 1:
                continue
            g = prof.grid(units * CPU_QUANTUM, loads[j.name])
            k = c["k"]
            lat, mem = g.latency_hi[k], g.memory_mb[k]
            ok = (mem <= b.memory_mb) & (lat <= b.latency_ms)
            best = int(np.argmin(np.where(ok, lat, np.inf)))
            if ok[best] and lat[best] < c["latency_hi_ms"]:
                left -= int(units[best] - c["units"])
                c.update(
                    units=int(units[best]),
                    latency_hi_ms=float(lat[best]),
                    memory_mb=float(mem[best]),
                )

    def _reasons(
        self,
        state: PolicyState,
        jobs: list[JobSpec],
        chosen: Mapping[str, Mapping[str, Any]],
        loads: Mapping[str, float],
        cap_cpu: float,
    ) -> dict[str, str]:
        """Why each job's knob changed (or 'kept'): bounds, load, capacity or first decision."""
        out = {}
        for j in jobs:
            before = state.get("knobs", {}).get(j.name)
            if before is None:
                out[j.name] = "initial"
                continue
            if before == chosen[j.name]["knob"]:
                out[j.name] = "kept"
                continue
            b = job_bounds(j)
            old_b = state.get("bounds", {}).get(j.name)
            old_load = state.get("loads", {}).get(j.name, loads[j.name])
            if old_b is not None and JobBounds(*old_b) != b:
                out[j.name] = "bounds changed"
            elif abs(loads[j.name] - old_load) > 1e-9:
                out[j.name] = "load changed"
            elif abs(state.get("capacity_cpu", cap_cpu) - cap_cpu) > 1e-9:
                out[j.name] = "capacity changed"
            else:
                out[j.name] = "profile learned"
        return out


class FixedKnobPolicy(KnobPolicy):
    """Baseline: every job runs one fixed knob (e.g. full accuracy, or the most approximate);
    CPU is still optimised by the same knapsack, so only the knob co-allocation is missing."""

    kind: ClassVar[str] = "baseline"
    description: ClassVar[str] = "one fixed knob setting per job; CPU optimised for its bounds"

    def __init__(
        self,
        knob: str | Mapping[str, str],
        profiles: Mapping[str, KnobModel] | None = None,
        *,
        load_margin: float = 0.1,
        name: str = "fixed_knob",
    ) -> None:
        super().__init__(profiles, load_margin=load_margin)
        self.knob = knob
        self.name = name  # type: ignore[misc]

    def _options(
        self,
        spec: JobSpec,
        profile: KnobModel,
        load: float,
        budget: int,
        previous: str | None,
    ) -> tuple[list[tuple[int, float]], list[dict[str, Any]]]:
        k = self.knob if isinstance(self.knob, str) else self.knob[spec.name]
        self.allowed[spec.name] = (k,)
        return super()._options(spec, profile, load, budget, previous)
