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
are read afresh), but a CPU split is costly to change (replicas are resized,
and restarted) while learned latency bounds and measured loads are noisy, so
the previous round's split is KEPT (knobs re-chosen at its CPUs) while every
job is still feasible there on the conservative side, no bound, job or the
inference CPU budget changed, and the fresh plan gains less than
``min_move_gain`` accuracy points (job-weighted, summed) over it. The state
records why a job's knob changed (``reasons``) and why the split moved or was
kept (``split``). Knob choices are returned in
``state["knobs"]`` (job -> knob id), which the runtime applies to the replicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from allocators.base import Policy, PolicyError, PolicyState, Snapshot, check_feasible
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
#: Default ``min_move_gain``: accuracy points (job-weighted, summed over inference jobs) a fresh
#: CPU split must gain over the previous one to replace it. Half a point is well inside one
#: setting's 95% accuracy interval on 800 held-out samples (about +-1.2 points at 97%), so a
#: smaller gain is not worth a replica restart; a move to a clearly better knob is still taken.
MIN_MOVE_GAIN_POINTS = 0.5


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
        min_move_gain: float | None = MIN_MOVE_GAIN_POINTS,
    ) -> None:
        """``profiles``: job -> learner (else taken from ``snapshot.models``);
        ``knobs``: job -> the knob ids allowed (default: all the learner knows);
        ``min_move_gain``: accuracy points a new CPU split must gain over keeping the previous
        one while that stays feasible (None: re-plan the split every call, no hysteresis)."""
        if min_move_gain is not None and not (math.isfinite(min_move_gain) and min_move_gain >= 0):
            raise ValueError(
                f"{self.name}: min_move_gain must be >= 0 or None, got {min_move_gain}"
            )
        self.profiles = dict(profiles or {})
        self.load_margin = load_margin
        self.allowed = dict(knobs or {})
        self.min_move_gain = min_move_gain

    # -- inputs ----------------------------------------------------------------------
    def _profile(self, snapshot: Snapshot, job: str) -> KnobModel:
        m = snapshot.models.get(job)
        if m is not None and callable(getattr(m, "grid", None)):
            return m  # type: ignore[return-value]
        if job in self.profiles:
            return self.profiles[job]
        raise PolicyError(f"{self.name}: no knob profile for inference job {job!r}")

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
        check_feasible(snapshot)
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
        held, split = self._keep_split(state, jobs, all_opts, all_meta, budget, picks)
        chosen = {
            j.name: all_meta[i][p] | {"units": all_opts[i][p][0]}
            for i, (j, p) in enumerate(zip(jobs, held or picks, strict=True))
        }
        if held is None:  # a kept split stays as it was: spreading is what noise flips
            self._spread_leftover(snapshot, jobs, chosen, loads, budget)
        amounts = {j.name: j.minimum for j in others}
        reasons = self._reasons(state, jobs, chosen, loads, cap.cpu)
        # Memory is reserved where the cluster reports it (the sim's nodes); where it reports
        # none (Ray's logical CPUs only), the bound is met by the knob alone. A knob over the
        # memory bound (state: feasible false) reserves the bound, no more.
        reserve = cap.memory > 0
        for j in jobs:
            c = chosen[j.name]
            mem_mb = min(c["memory_mb"], job_bounds(j).memory_mb) if reserve else 0.0
            amounts[j.name] = ResourceVector(
                cpu=round(c["units"] * CPU_QUANTUM, 1), memory=mem_mb / MIB_PER_GIB
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
            # the split the next call keeps unless it must move (see _keep_split)
            "cpu_units": {n: int(c["units"]) for n, c in chosen.items()},
            "budget_units": budget,
            "split": split,
        }
        return snapshot.allocation(amounts, self.name), new_state

    def _keep_split(
        self,
        state: PolicyState,
        jobs: list[JobSpec],
        opts: list[list[tuple[int, float]]],
        meta: list[list[dict[str, Any]]],
        budget: int,
        picks: list[int],
    ) -> tuple[list[int] | None, str]:
        """The option index per job that keeps the previous round's CPU split, or None to move
        to the fresh plan ``picks``; and why (``state["split"]``).

        Moves only for a change that is no noise: a job set, budget or bound change; a job
        infeasible at its previous CPUs on the conservative side (latency upper bound, memory);
        or a fresh plan better by more than ``min_move_gain`` accuracy points. Learned latency
        bounds and measured loads move every round, so without this the knapsack's ties and the
        leftover spreading (all spare CPU to the job with the least headroom) follow the noise
        and replicas restart for nothing."""
        if self.min_move_gain is None:
            return None, "replanned"
        prev = state.get("cpu_units")
        if not prev:
            return None, "initial"
        if set(prev) != {j.name for j in jobs}:
            return None, "jobs changed"
        if state.get("budget_units") != budget:
            return None, "capacity changed"
        old_bounds = state.get("bounds", {})
        for j in jobs:
            old = old_bounds.get(j.name)
            if old is None or JobBounds(*old) != job_bounds(j):
                return None, "bounds changed"
        held: list[int] = []
        for i, j in enumerate(jobs):
            at = [p for p, (u, _) in enumerate(opts[i]) if u == int(prev[j.name])]
            if not at:  # the job's cpu range (minimum, maximum) no longer holds it
                return None, "cpu range changed"
            held.append(at[0])
        if sum(opts[i][p][0] for i, p in enumerate(held)) > budget:
            return None, "capacity changed"
        bad = [j.name for i, j in enumerate(jobs) if not meta[i][held[i]]["feasible"]]
        if bad:
            return None, "infeasible: " + ", ".join(bad)
        # values are weight x accuracy (fraction): the gain in job-weighted accuracy points
        gain = 100.0 * sum(opts[i][p][1] - opts[i][h][1]
                           for i, (p, h) in enumerate(zip(picks, held, strict=True)))  # fmt: skip
        if gain > self.min_move_gain:
            return None, f"gain {gain:.2f} points"
        return held, "kept"

    def _spread_leftover(
        self,
        snapshot: Snapshot,
        jobs: list[JobSpec],
        chosen: dict[str, dict[str, Any]],
        loads: Mapping[str, float],
        budget: int,
    ) -> None:
        """Water-fill unused CPU units over the feasible jobs by latency headroom, knob unchanged.

        The job whose latency upper bound is nearest its bound (as a fraction of it) takes its
        next step to a lower upper bound, until no step fits. A step may span several units:
        just above an integer one more worker shares the quota and a request runs slower.
        Giving ALL spare CPU to the tightest job instead left the others at their knapsack
        minimum, at the edge of feasibility, where learned-bound noise tips them over and the
        split moves (see ``_keep_split``)."""
        left = budget - sum(c["units"] for c in chosen.values())
        if left <= 0:
            return
        # per job: its curve over [units now, units now + left] with the knob it has
        curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]] = {}
        for j in jobs:
            c, b = chosen[j.name], job_bounds(j)
            top = min(c["units"] + left, _units(j.bound_max("cpu")))
            if not c["feasible"] or top <= c["units"]:
                continue
            units = np.arange(c["units"], top + 1)
            g = self._profile(snapshot, j.name).grid(units * CPU_QUANTUM, loads[j.name])
            lat, mem = g.latency_hi[c["k"]], g.memory_mb[c["k"]]
            ok = (mem <= b.memory_mb) & (lat <= b.latency_ms)
            curves[j.name] = (units, lat, mem, ok, b.latency_ms)
        at = dict.fromkeys(curves, 0)
        while left > 0:
            best: tuple[float, str, int] | None = None
            for name, (_, lat, _, ok, bound) in curves.items():  # job order: ties deterministic
                i = at[name]
                ahead = slice(i + 1, i + 1 + left)
                step = np.flatnonzero(ok[ahead] & (lat[ahead] < lat[i]))
                if len(step) and (best is None or lat[i] / bound > best[0]):
                    best = (lat[i] / bound, name, i + 1 + int(step[0]))
            if best is None:
                break
            _, name, i = best
            left -= i - at[name]  # the curve's units are contiguous
            at[name] = i
        for name, i in at.items():
            units, lat, mem, _, _ = curves[name]
            if i:
                chosen[name].update(
                    units=int(units[i]), latency_hi_ms=float(lat[i]), memory_mb=float(mem[i])
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
    CPU is still optimised by the same knapsack, so only the knob co-allocation is missing.

    ``knob``: a knob id, a job -> knob id mapping, or a role the job's profile
    names: ``"full"`` (its reference, full-accuracy knob) or ``"most_approximate"``.
    """

    name: ClassVar[str] = "fixed_knob"
    kind: ClassVar[str] = "baseline"
    description: ClassVar[str] = (
        "inference jobs: one fixed knob (default full accuracy); CPU optimised for its bounds"
    )

    def __init__(
        self,
        knob: str | Mapping[str, str] = "full",
        profiles: Mapping[str, KnobModel] | None = None,
        *,
        load_margin: float = 0.1,
        name: str | None = None,
        min_move_gain: float | None = MIN_MOVE_GAIN_POINTS,
    ) -> None:
        super().__init__(profiles, load_margin=load_margin, min_move_gain=min_move_gain)
        self.knob = knob
        if name is not None:
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
        role = {"full": "reference_knob", "most_approximate": "most_approximate_knob"}.get(k)
        if role is not None:
            if not hasattr(profile, role):
                raise PolicyError(f"{self.name}: the profile of {spec.name!r} names no {k} knob")
            k = str(getattr(profile, role))
        self.allowed[spec.name] = (k,)
        return super()._options(spec, profile, load, budget, previous)


class FixedApproxKnobPolicy(FixedKnobPolicy):
    """Baseline: every inference job runs its most approximate knob (least memory, then time)."""

    name: ClassVar[str] = "fixed_knob_approx"
    description: ClassVar[str] = (
        "inference jobs: the most approximate knob; CPU optimised for its bounds"
    )

    def __init__(
        self,
        profiles: Mapping[str, KnobModel] | None = None,
        *,
        load_margin: float = 0.1,
        min_move_gain: float | None = MIN_MOVE_GAIN_POINTS,
    ) -> None:
        super().__init__(
            "most_approximate", profiles, load_margin=load_margin, min_move_gain=min_move_gain
        )
