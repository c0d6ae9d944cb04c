"""Inference jobs in the sim backend: emulated windows from the MEASURED knob profiles.

Per inference job (scenario workload model "inference", see
docs/scenarios.md) the emulation holds:

- the measured profiles of every knob setting (real accuracy on 800 held-out
  digits, real per-request latency on one core, real bytes), measured once per
  machine and cached (``actors.inference.measured``);
- a ``KnobProfileModel`` (the knob_profile learner) that the allocator's
  learner bank holds and the inference policies read; it is seeded with the
  offline profiles and learns online from every window here;
- an FCFS queue over ceil(cpu) workers at speed cpu / ceil(cpu) whose worker
  free-times carry over windows: Poisson arrivals, service times drawn from
  the measured latency samples of the knob IN FORCE (the knob the enforced
  plan's decision chose; a policy that chooses none runs the full model).

Bounds given relative to the model (``latency_x``, ``load_unit =
"full_cores"``) are resolved against the measured full-model request time
when the run starts; bound changes are job-spec updates submitted to the
allocator at their time (Delen's runtime bound API). The window's counts
replace the generic sampler's rows for these jobs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cluster_mgr.model import SLO, JobSpec, PlacementPlan
from cluster_mgr.scenario.schema import JobEntry, Scenario
from cluster_mgr.sim.sampling import WindowCounts, bucket_of
from learners.base import Learner
from learners.knob_profile import MB, KnobPrior, KnobProfileLearner, KnobProfileModel, workers_for

#: Per-request execution times and labelled samples a window reports to the learner.
SERVICE_SAMPLES = 16
LABELLED = 32
#: Re-plan between rounds when a job's measured load drifts from the load its plan was made
#: for by this fraction AND by more than Poisson noise (sigmas of the planned count).
REPLAN_DRIFT = 0.1
REPLAN_SIGMAS = 3.0


class WorkerQueue:
    """FCFS over n workers; worker free-times carry over window boundaries."""

    def __init__(self) -> None:
        self.free: list[float] = [0.0]

    def resize(self, n: int, now: float) -> None:
        busy = sorted(self.free)
        self.free = (busy + [now] * n)[:n] if n > len(busy) else busy[:n]
        heapq.heapify(self.free)

    def serve(self, arrivals: np.ndarray, service_s: np.ndarray) -> np.ndarray:
        """Latency (s) of each request, in arrival order."""
        out = np.empty_like(arrivals)
        for i, (a, s) in enumerate(zip(arrivals, service_s, strict=True)):
            start = max(a, heapq.heappop(self.free))
            heapq.heappush(self.free, start + s)
            out[i] = start + s - a
        return out


@dataclass
class _Job:
    k: int  # index in the scenario's jobs
    entry: JobEntry
    profiles: dict[str, Any]  # knob id -> KnobProfile
    reference: str
    full_ms: float
    model: KnobProfileModel
    changes: list[tuple[float, dict[str, float]]]
    rng: np.random.Generator
    queue: WorkerQueue = field(default_factory=WorkerQueue)
    knob: str = ""
    windows: int = 0
    ok: int = 0
    latency_ok: int = 0
    memory_ok: int = 0
    loss_pts: float = 0.0
    switches: int = 0
    rate: float = 0.0  # measured req/s of the last window
    planned: float | None = None  # measured req/s when the plan in force was decided


def _priors(profiles: list[Any]) -> list[KnobPrior]:
    return [
        KnobPrior(p.knob, p.latency_ms, p.weight_bytes, p.activation_bytes, p.correct, p.total)
        for p in profiles
    ]


def has_inference(scenario: Scenario) -> bool:
    return any(j.model == "inference" for j in scenario.jobs)


class InferenceEmulator:
    """See the module docstring. ``attach`` builds one when a scenario has inference jobs."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        from actors.inference.knobs import full_setting
        from actors.inference.measured import measured_profiles, train_config

        self.jobs: list[_Job] = []
        jobs = list(scenario.jobs)
        for k, entry in enumerate(scenario.jobs):
            if entry.model != "inference":
                continue
            w = entry.workload
            cfg = train_config(w)
            profs = measured_profiles(cfg, str(w.get("knob_space", "full")),
                                      reps=int(w.get("profile_reps", 12)))  # fmt: skip
            ref = full_setting(len(cfg.widths)).id
            by_id = {p.knob: p for p in profs}
            full_ms = by_id[ref].latency_p50_ms
            entry = self._resolve(entry, full_ms)
            jobs[k] = entry
            learner = KnobProfileLearner(_priors(profs), reference=ref)
            model = KnobProfileModel(learner, latency_bound_ms=_latency(entry.spec))
            changes = [
                (float(c["at_s"]), _relative(c, full_ms))
                for c in w.get("bound_changes", ())  # type: ignore[union-attr]
            ]
            rng = np.random.default_rng([seed, k, 7919])
            self.jobs.append(_Job(k, entry, by_id, ref, full_ms, model, changes, rng))
        self.scenario = replace(scenario, jobs=tuple(jobs))
        self.by_name = {j.entry.name: j for j in self.jobs}
        self._knobs: dict[int, dict[str, str]] = {}  # plan epoch -> knob per job
        self._now = 0.0

    # -- set-up ---------------------------------------------------------------------------
    @staticmethod
    def _resolve(entry: JobEntry, full_ms: float) -> JobEntry:
        """Bounds and load given relative to the full model, in ms and req/s."""
        w, spec = entry.workload, entry.spec
        if "latency_x" in w:
            slo = spec.slo or SLO()
            target = float(w["latency_x"]) * full_ms
            spec = spec.evolve(slo=replace(slo, target=target))
        load = entry.load
        if load is not None and w.get("load_unit") == "full_cores":
            f = 1e3 / full_ms  # requests/s one full-model core serves
            load = replace(load, rate=load.rate * f, to=load.to * f, scale=load.scale * f)
        timeout = entry.timeout_ms
        if timeout >= 1e9:  # the loader's default (10x a not-yet-known bound): 10x the real one
            timeout = 10.0 * _latency(spec)
        return replace(entry, spec=spec, load=load, timeout_ms=timeout)

    def learner_factory(self, base: Callable[[JobSpec], Learner]) -> Callable[[JobSpec], Learner]:
        """Inference jobs get their knob_profile model; every other job the scenario's learner."""
        return lambda spec: (
            self.by_name[spec.name].model if spec.name in self.by_name else base(spec)
        )

    def give_profiles(self, policy: Any) -> None:
        """Knob policies read a job's profile before the bank has seen its first window."""
        profiles = getattr(policy, "profiles", None)
        if isinstance(profiles, dict):
            profiles.update({n: j.model for n, j in self.by_name.items()})

    # -- the run -----------------------------------------------------------------------
    def begin_window(self, t: float, win: float, ga: Any) -> bool:
        """Submit the bound changes due in [t, t + win); True if any was."""
        from allocators.inference.bounds import set_bounds

        changed = False
        for j in self.jobs:
            if j.planned is not None and _drifted(j.rate, j.planned, win):
                j.planned = None  # one re-plan per drift; the decision resets it
                changed = True
            while j.changes and j.changes[0][0] < t + win:
                _, c = j.changes.pop(0)
                live = {s.name: s for s in ga.jobs}
                spec = set_bounds(live.get(j.entry.name, j.entry.spec),
                                  latency_ms=c.get("latency_ms"), memory_mb=c.get("memory_mb"))  # fmt: skip
                j.entry = replace(j.entry, spec=spec)
                j.model.latency_bound_ms = _latency(spec)
                if j.entry.name in live:  # a job not yet arrived gets the new bounds on arrival
                    ga.submit(spec)
                changed = True
        return changed

    def decided(self, epoch: int, policy_state: dict[str, Any]) -> None:
        """The knobs a decision chose travel with its plan (enforced with it)."""
        knobs = policy_state.get("knobs")
        self._knobs[epoch] = dict(knobs) if isinstance(knobs, dict) else {}
        for j in self.jobs:
            j.planned = j.rate

    def window(
        self,
        t: float,
        win: float,
        plan: PlacementPlan | None,
        cpu: np.ndarray,
        load: np.ndarray,
        counts: WindowCounts,
        busy: np.ndarray,
        present: np.ndarray,
        warmup_s: float,
    ) -> None:
        """Emulate one window of every inference job; overwrite its rows of ``counts``."""
        knobs = self._knobs.get(plan.epoch, {}) if plan is not None else {}
        counts._q = None  # percentiles are recomputed from the rows written here
        for j in self.jobs:
            k = j.k
            if not present[k]:
                continue
            knob = knobs.get(j.entry.name, j.knob or j.reference)
            if knob not in j.profiles:
                knob = j.reference
            j.switches += bool(j.knob) and knob != j.knob  # the first knob is no switch
            j.knob = knob
            prof = j.profiles[knob]
            n, speed = workers_for(max(float(cpu[k]), 1e-9))
            j.queue.resize(int(n), t)
            m = int(j.rng.poisson(max(float(load[k]), 0.0) * win))
            j.rate = m / win
            arrivals = np.sort(t + j.rng.random(m) * win)
            svc_ms = j.rng.choice(np.asarray(prof.latency_ms), size=m) / float(speed)
            if cpu[k] <= 0:
                lat_ms = np.full(m, np.inf)
            else:
                lat_ms = j.queue.serve(arrivals, svc_ms / 1e3) * 1e3
            spec = j.entry.spec
            bound_ms, timeout = _latency(spec), j.entry.timeout_ms
            timed_out = lat_ms > timeout
            done = lat_ms[~timed_out]
            hist = np.bincount(bucket_of(done), minlength=counts.hist.shape[1])
            hist[bucket_of(np.array([timeout]))[0]] += int(timed_out.sum())
            counts.hist[k] = hist
            counts.offered[k] = m
            counts.completed[k] = len(done)
            counts.timed_out[k] = int(timed_out.sum())
            counts.within[k] = int((done <= bound_ms).sum())
            busy[k] = float(svc_ms.sum() / 1e3 * speed / win) if m else 0.0
            p99 = float(np.percentile(np.minimum(lat_ms, timeout), 99)) if m else 0.0
            mem_mb = prof.memory_bytes(int(n)) / MB
            lat_ok, mem_ok = p99 <= bound_ms, mem_mb <= spec.bound_max("memory") * 1024
            if t >= warmup_s:
                j.windows += 1
                j.latency_ok += lat_ok
                j.memory_ok += mem_ok
                j.ok += lat_ok and mem_ok
                j.loss_pts += (j.profiles[j.reference].accuracy - prof.accuracy) * 100
            if cpu[k] > 0:
                labels = j.rng.integers(0, prof.total, size=min(m, LABELLED))
                j.model.learn_window(
                    knob, float(cpu[k]), m / win,
                    p99_ms=p99 if m else None,
                    service_ms=list(svc_ms[:SERVICE_SAMPLES]),
                    memory_bytes=float(prof.memory_bytes(int(n))),
                    correct=int(prof.correct_mask[labels].sum()),
                    labelled=len(labels),
                )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """summary.json's ``inference`` section: windows meeting both bounds, accuracy loss."""
        per_job = {}
        for j in self.jobs:
            w = max(j.windows, 1)
            per_job[j.entry.name] = {
                "windows": j.windows,
                "within_bounds_fraction": j.ok / w,
                "latency_ok_fraction": j.latency_ok / w,
                "memory_ok_fraction": j.memory_ok / w,
                "mean_accuracy_loss": j.loss_pts / w,
                "knob_switches": j.switches,
                "last_knob": j.knob,
                "full_model_ms": j.full_ms,
            }
        total = sum(j.windows for j in self.jobs)
        return {
            "within_bounds_fraction": sum(j.ok for j in self.jobs) / total if total else None,
            "mean_accuracy_loss": sum(j.loss_pts for j in self.jobs) / total if total else None,
            "per_job": per_job,
        }


def _drifted(rate: float, planned: float, win: float) -> bool:
    noise = REPLAN_SIGMAS * math.sqrt(max(planned * win, 1.0)) / win
    return abs(rate - planned) > max(REPLAN_DRIFT * planned, noise)


def _latency(spec: JobSpec) -> float:
    return float(spec.slo.target) if spec.slo is not None else math.inf


def _relative(change: dict[str, float], full_ms: float) -> dict[str, float]:
    out = {k: v for k, v in change.items() if k in ("latency_ms", "memory_mb")}
    if "latency_x" in change:
        out["latency_ms"] = change["latency_x"] * full_ms
    return out


def attach(scenario: Scenario, seed: int) -> tuple[Scenario, InferenceEmulator | None]:
    """The scenario with inference bounds and loads resolved, and its emulator (None: no such jobs)."""
    if not has_inference(scenario):
        return scenario, None
    emu = InferenceEmulator(scenario, seed)
    return emu.scenario, emu


__all__ = ["InferenceEmulator", "WorkerQueue", "attach", "has_inference"]
