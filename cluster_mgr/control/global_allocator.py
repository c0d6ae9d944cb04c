"""The global allocator: the decision core that both backends (Ray and sim) run.

Each round it builds a plain ``Snapshot`` (learned models, load forecasts, the
allocation in force, measured signals), asks the policy for an Allocation,
packs it onto nodes as a PlacementPlan fenced by a new epoch, and logs
decision, allocation, plan and policy state to the RunLog, so a restarted
controller replays the log and carries on (``restore``).

Backend-neutral: no Ray, no gRPC; time comes from the injected Clock, so the
same object runs in wall-clock time under Ray and in virtual time in the sim
and in tests. Feedback arrives two ways:

* ``ingest(windows)`` / ``ingest_batch(arrow)``: replica telemetry windows
  (the Ray path). Windows are de-duplicated and gap-counted
  (``TelemetryLedger``), held until every replica's window for that telemetry
  window has had time to arrive (``grace_s``), then merged per job into one
  observation per telemetry window.
* ``observe(jobs, alloc, load, value, sigma, time)``: ready observations as
  arrays (the sim path: 1,000 jobs per window in one call).
"""

from __future__ import annotations

import json
import math
import time as _time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from allocators.base import Policy, PolicyError, Snapshot
from allocators.packing import PackingError
from cluster_mgr.clock import Clock
from cluster_mgr.control.api import Explanation
from cluster_mgr.feedback import (
    JobWindows,
    TelemetryLedger,
    aggregate,
    as_table,
    concat_job_windows,
    feedback,
    merge_job_windows,
)
from cluster_mgr.model import (
    SLO,
    TELEMETRY_WINDOW_S,
    ZERO,
    Allocation,
    JobSpec,
    NodeInfo,
    PerformanceModel,
    PlacementPlan,
    ResourceVector,
    TelemetryWindow,
    UtilitySpec,
    utility_from_reward,
)
from cluster_mgr.place import make_plan
from cluster_mgr.store import RunLog
from learners.base import Learner

LearnerFactory = Callable[[JobSpec], Learner]
Forecaster = (
    Any  # learners' forecasters: ``update(time, load)`` and ``forecast(horizon_s) -> float``
)


# --------------------------------------------------------------------------- learner bank


class LearnerBankAdapter:
    """One learner per job behind the bank interface (``learn`` over arrays, ``model(job)``).

    The learners package will ship a vectorized ``learners.bank.LearnerBank``;
    this adapter is the small stand-in the allocator talks to until then, and
    it wraps that bank unchanged once it exists (``make_bank``).
    """

    def __init__(self, factory: Callable[[str], Learner]) -> None:
        self._factory = factory
        self._learners: dict[str, Learner] = {}

    def learn(
        self,
        jobs: Sequence[str],
        alloc: np.ndarray,
        load: np.ndarray,
        value: np.ndarray,
        sigma: np.ndarray,
        time: np.ndarray | float,
    ) -> None:
        from cluster_mgr.model import Observation

        jobs = np.asarray(jobs, dtype=object)
        alloc = np.asarray(alloc, dtype=float)
        if alloc.ndim == 1:
            alloc = alloc[:, None]
        times = np.broadcast_to(np.asarray(time, dtype=float), jobs.shape)
        order = np.argsort(jobs, kind="stable")
        sj = jobs[order]
        cuts = np.flatnonzero(sj[1:] != sj[:-1]) + 1
        for part in np.split(order, cuts):
            if not len(part):
                continue
            name = str(jobs[part[0]])
            learner = self._learners.get(name)
            if learner is None:
                learner = self._learners[name] = self._factory(name)
            learner.learn_many(
                [
                    Observation(name, float(times[i]), tuple(alloc[i]), float(load[i]),
                                float(value[i]), float(sigma[i]))
                    for i in part
                ]
            )  # fmt: skip

    def __contains__(self, job: object) -> bool:
        return job in self._learners

    def model(self, job: str) -> PerformanceModel:
        return self._learners[job]

    def remove(self, job: str) -> None:
        self._learners.pop(job, None)


def make_bank(factory: Callable[[str], Learner]) -> Any:
    """The learners package's LearnerBank when it exists, else the adapter above."""
    try:
        from learners.bank import LearnerBank  # type: ignore[import-not-found]
    except ImportError:
        return LearnerBankAdapter(factory)
    return LearnerBank(factory)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    allocation: Allocation
    plan: PlacementPlan
    decision_ms: float
    moves: int
    policy_state: dict[str, Any]
    shadow: bool = False


@dataclass
class JobFeedback:
    """The last telemetry window seen for a job (what status and signals report)."""

    time: float = math.nan
    load: float = 0.0
    reward: float = math.nan
    p99_ms: float = math.nan
    cpu: float = 0.0


@dataclass
class _Counters:
    windows: int = 0
    late: int = 0
    observations: int = 0
    extra: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the allocator


class GlobalAllocator:
    def __init__(
        self,
        jobs: Sequence[JobSpec],
        policy: Policy,
        learner_factory: LearnerFactory | None,
        clock: Clock,
        log: RunLog | None = None,
        round_s: float = 30.0,
        seed: int = 0,
        shadow: bool = False,
        forecaster_factory: Callable[[JobSpec], Forecaster] | None = None,
        window_s: float = TELEMETRY_WINDOW_S,
        grace_s: float | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.log = log
        self.round_s = float(round_s)
        self.seed = int(seed)
        self.shadow = bool(shadow)
        self.window_s = float(window_s)
        # A telemetry window is final once every replica's copy has had time to
        # arrive: one window to close plus one NodeAgent push period.
        self.grace_s = 2.0 * self.window_s if grace_s is None else float(grace_s)
        self._jobs: dict[str, JobSpec] = {j.name: j for j in jobs}
        self._learner_factory = learner_factory
        self._bank = make_bank(self._make_learner) if learner_factory is not None else None
        self._forecaster_factory = forecaster_factory
        self._forecasters: dict[str, Forecaster] = {}
        self.ledger = TelemetryLedger()
        # telemetry window index -> partial per-job sums not yet final (see ingest_batch)
        self._pending: dict[int, list[JobWindows]] = {}
        self._final_before = -(2**62)  # windows with an index below this are final
        self._last_fb: dict[str, JobFeedback] = {}
        self._counters = _Counters()
        self.round = 0
        self.epoch = 0
        self.last: Allocation | None = None
        self.plan: PlacementPlan | None = None
        self.policy_state: dict[str, Any] = policy.initial_state()
        self.draining: set[str] = set()
        self.nodes: tuple[NodeInfo, ...] = ()
        self.last_decision: Decision | None = None
        self._in_force: tuple[Allocation | None, PlacementPlan | None, dict[str, Any]] | None = None
        self._next_round_at = clock.now()  # the first round is due at once: place the jobs
        self._dirty = True

    # -- jobs --------------------------------------------------------------------------
    @property
    def jobs(self) -> tuple[JobSpec, ...]:
        return tuple(self._jobs[n] for n in sorted(self._jobs))

    def _make_learner(self, name: str) -> Learner:
        assert self._learner_factory is not None
        spec = self._jobs.get(name) or JobSpec(name=name)
        return self._learner_factory(spec)

    def submit(self, spec: JobSpec) -> None:
        """Add or update a job; ValueError (nothing changes) if the minimums cannot all fit."""
        if not isinstance(spec, JobSpec):
            raise ValueError(f"submit expects a JobSpec, got {type(spec).__name__}")
        if self.nodes:
            cap = ResourceVector.total(n.capacity for n in self.nodes if n.schedulable)
            others = [j.minimum for n, j in self._jobs.items() if n != spec.name]
            over = ResourceVector.total([*others, spec.minimum]).over(cap)
            if over:
                raise ValueError(
                    f"job {spec.name}: minimums would exceed capacity ({over}); nothing changed"
                )
        self._jobs[spec.name] = spec
        self._event("submit", spec.name, {"spec": spec_to_dict(spec)})
        self._dirty = True  # a new job gets resources at the next step, not a round later

    def remove(self, name: str) -> None:
        if name not in self._jobs:
            raise KeyError(name)
        del self._jobs[name]
        if self._bank is not None and name in self._bank:
            self._bank.remove(name)
        self._forecasters.pop(name, None)
        self._last_fb.pop(name, None)
        self._event("remove", name, {})
        self._dirty = True

    def request_round(self, reason: str = "") -> None:
        """Make the next ``due()`` true (a node died or joined: do not wait a whole round)."""
        self._dirty = True

    def drain(self, node_id: str) -> None:
        self.draining.add(node_id)
        self._event("drain", node_id, {})
        self._dirty = True

    def undrain(self, node_id: str) -> None:
        self.draining.discard(node_id)
        self._event("undrain", node_id, {})
        self._dirty = True

    # -- feedback ----------------------------------------------------------------------
    def ingest(self, windows: Sequence[TelemetryWindow]) -> int:
        return self.ingest_batch(as_table(windows))

    def ingest_batch(self, data: pa.Table | pa.RecordBatch, admitted: bool = False) -> int:
        """Admit replica windows (dropping ones seen before); returns how many were new.

        ``admitted=True``: the caller already passed ``data`` through ``self.ledger``
        (the Ray controller does, to log only new windows).

        The batch is reduced at once to partial per-(job, window) sums (``aggregate``), so
        pending windows hold a few arrays per job, not the raw rows (which, under Ray, are
        views of object-store buffers: holding them for ``grace_s`` pinned the store). A
        window that arrives after its telemetry window was settled is late: it is still
        learned, as its own observation, and counted (``counters["late"]``)."""
        table = as_table(data) if admitted else self.ledger.admit(as_table(data))
        n = table.num_rows
        if n:
            self.ingest_partials(aggregate(table, self.window_s), settle=False)
        self.settle()
        return n

    def ingest_partials(self, jw: JobWindows, settle: bool = True) -> int:
        """Partial per-(job, window) sums of admitted replica windows (``aggregate`` output,
        e.g. one NodeAgent's, of windows it de-duplicated and logged itself); returns how many
        replica windows they hold."""
        n = int(jw.replicas.sum()) if len(jw) else 0
        if n:
            self._counters.windows += n
            late = jw.index < self._final_before
            if late.any():
                self._counters.late += int(jw.replicas[late].sum())
                self._learn_windows(jw.select(late))
                jw = jw.select(~late)
            for k in np.unique(jw.index).tolist():
                self._pending.setdefault(int(k), []).append(jw.select(jw.index == k))
        if settle:
            self.settle()
        return n

    def settle(self, now: float | None = None) -> int:
        """Merge and learn every pending telemetry window that is final; returns how many."""
        now = self.clock.now() if now is None else now
        cutoff = int(math.floor((now - self.grace_s) / self.window_s))
        self._final_before = max(self._final_before, cutoff)
        final = [k for k in self._pending if k < self._final_before]
        if not final:
            return 0
        jw = merge_job_windows([p for k in sorted(final) for p in self._pending.pop(k)])
        self._learn_windows(jw)
        return len(jw)

    def flush(self) -> int:
        """Treat every pending window as final (shutdown, tests, log replay)."""
        self._final_before = 2**62
        return self.settle(self.clock.now())

    def _learn_windows(self, jw: JobWindows) -> None:
        known = np.array([j in self._jobs for j in jw.job], dtype=bool)
        jw = jw.select(known) if len(jw) else jw
        if not len(jw):
            return
        fallback = {n: a.cpu for n, a in self.last.amounts.items()} if self.last else {}
        fb = feedback(jw, self._jobs, fallback, self.window_s)
        if len(fb):
            self._remember(fb.job, fb.alloc[:, 0], fb.load, fb.value, fb.time, fb.p99_ms)
            self.observe(fb.job, fb.alloc, fb.load, fb.value, fb.sigma, fb.time)

    def observe(
        self,
        jobs: Sequence[str] | np.ndarray,
        alloc: np.ndarray,
        load: np.ndarray,
        value: np.ndarray,
        sigma: np.ndarray,
        time: np.ndarray | float,
    ) -> None:
        """Feed ready observations (arrays, one row per job-window) to learners and forecasters."""
        jobs = np.asarray(jobs, dtype=object)
        if not len(jobs):
            return
        self._counters.observations += len(jobs)
        if self._bank is not None:
            self._bank.learn(jobs, np.asarray(alloc, float), np.asarray(load, float),
                             np.asarray(value, float), np.asarray(sigma, float), time)  # fmt: skip
        times = np.broadcast_to(np.asarray(time, dtype=float), jobs.shape)
        a = np.asarray(alloc, float)
        self._remember(jobs, a[:, 0] if a.ndim == 2 else a, np.asarray(load, float),
                       np.asarray(value, float), times, None)  # fmt: skip
        if self._forecaster_factory is not None:
            for j, t, ld in zip(jobs, times, load, strict=True):
                if j not in self._jobs:
                    continue
                fc = self._forecasters.get(j)
                if fc is None:
                    fc = self._forecasters[j] = self._forecaster_factory(self._jobs[j])
                fc.update(float(t), float(ld))

    def _remember(self, jobs, cpu, load, value, times, p99) -> None:  # type: ignore[no-untyped-def]
        for i, j in enumerate(jobs):
            fb = self._last_fb.get(j)
            if fb is None:
                fb = self._last_fb[j] = JobFeedback()
            if not (float(times[i]) > fb.time) and not math.isnan(fb.time):
                continue  # a late window (older, or a straggler of the latest) does not overwrite it
            fb.time, fb.load, fb.reward, fb.cpu = (
                float(times[i]),
                float(load[i]),
                float(value[i]),
                float(cpu[i]),
            )
            if p99 is not None:
                fb.p99_ms = float(p99[i])

    def feedback_of(self, job: str) -> JobFeedback:
        return self._last_fb.get(job, JobFeedback())

    @property
    def counters(self) -> dict[str, int]:
        return {
            "windows": self._counters.windows,
            "late": self._counters.late,
            "duplicates": self.ledger.duplicates,
            "lost": self.ledger.lost,
            "observations": self._counters.observations,
        }

    # -- rounds ------------------------------------------------------------------------
    def due(self) -> bool:
        return self._dirty or self.clock.now() >= self._next_round_at

    @property
    def next_round_at(self) -> float:
        return self._next_round_at

    def model(self, job: str) -> PerformanceModel | None:
        if self._bank is None or job not in self._bank:
            return None
        return self._bank.model(job)

    def forecast(self, job: str) -> float:
        """Load for the coming round: the forecaster's, else the last observed load."""
        fc = self._forecasters.get(job)
        if fc is not None:
            try:
                return float(fc.forecast(self.round_s))
            except (
                Exception
            ):  # a forecaster without enough data yet: fall back, do not fail a round
                pass
        return self.feedback_of(job).load

    def snapshot(self, nodes: Sequence[NodeInfo]) -> Snapshot:
        nodes = tuple(
            NodeInfo(n.node_id, n.capacity, n.alive, True, n.address, n.labels)
            if n.node_id in self.draining and not n.draining
            else n
            for n in nodes
        )
        models = {}
        for name in self._jobs:
            m = self.model(name)
            if m is not None:
                models[name] = m
        signals = {}
        for name in self._jobs:
            fb = self.feedback_of(name)
            if not math.isnan(fb.time):
                sig = {"load": fb.load, "reward": fb.reward}
                if not math.isnan(fb.p99_ms):
                    sig["p99_ms"] = fb.p99_ms
                signals[name] = sig
        return Snapshot(
            time=self.clock.now(),
            round=self.round + 1,
            nodes=nodes,
            jobs=self.jobs,
            models=models,
            loads={name: self.forecast(name) for name in self._jobs},
            last=self.last,
            seed=self.seed,
            epoch=self.epoch + 1,
            signals=signals,
        )

    def step(self, nodes: Sequence[NodeInfo]) -> Decision:
        """One round: decide, pack, log. Raises PolicyError / PackingError (logged, nothing changes)."""
        t0 = _time.perf_counter()
        self.settle()
        snap = self.snapshot(nodes)
        self.nodes = snap.nodes
        try:
            alloc, state = self.policy.decide(snap, dict(self.policy_state))
            result = make_plan(alloc, snap.jobs, snap.nodes, self.plan, snap.epoch, snap.round)
        except (PolicyError, PackingError, ValueError) as exc:
            self._event(
                "decision_failed", self.policy.name, {"round": snap.round, "error": str(exc)}
            )
            self._next_round_at = self.clock.now() + self.round_s
            self._dirty = False
            raise
        decision_ms = (_time.perf_counter() - t0) * 1e3
        # what was in force before: a plan the participants refuse (abort_plan) falls back to it
        self._in_force = (self.last, self.plan, self.policy_state)
        self.round, self.epoch = snap.round, snap.epoch
        self.last, self.plan, self.policy_state = alloc, result.plan, state
        self._next_round_at = self.clock.now() + self.round_s
        self._dirty = False
        decision = Decision(alloc, result.plan, decision_ms, result.moves, state, self.shadow)
        self.last_decision = decision
        if self.log is not None:
            self.log.append_decision(
                round=self.round,
                epoch=self.epoch,
                time=snap.time,
                policy=self.policy.name,
                allocation=alloc.to_dict(),
                plan=result.plan.to_dict(),
                policy_state=state,
                decision_ms=decision_ms,
                enforced=False,
                note="shadow: decided and logged, not enforced" if self.shadow else "",
            )
        return decision

    def abort_plan(self, epoch: int, votes: Mapping[str, str]) -> None:
        """The plan of ``epoch`` was refused in the prepare phase (``votes``: who said no and
        why): the allocation, plan and policy state in force before it stay in force. The epoch
        is not reused (a refused plan's epoch stays fenced); the event lets ``restore`` skip it."""
        if self.plan is not None and self.plan.epoch == epoch and self._in_force is not None:
            self.last, self.plan, self.policy_state = self._in_force
            self._in_force = None
        self._event("plan_aborted", f"epoch {epoch}", {"epoch": int(epoch), "votes": dict(votes)})

    # -- explanations ------------------------------------------------------------------
    def explain(self, job: str) -> Explanation:
        if job not in self._jobs:
            raise KeyError(job)
        spec = self._jobs[job]
        amount = self.last.get(job) if self.last else ZERO
        fb = self.feedback_of(job)
        load = self.forecast(job)
        bounds: dict[str, float] = {}
        notes: list[str] = []
        misspecified = False
        model = self.model(job)
        if model is not None and load > 0:
            lo, mid, hi = model.bounds(np.array([amount.cpu]), np.array([load]))
            bounds = {"lcb": float(lo[0]), "mean": float(mid[0]), "ucb": float(hi[0])}
            misspecified = bool(getattr(model, "misspecified", False))
            if misspecified:
                notes.append(str(getattr(model, "misspecification_reason", "")))
        elif model is None:
            notes.append("no learner: the policy decides without a performance model")
        else:
            notes.append("no traffic observed yet")
        binding = []
        if amount.cpu <= spec.minimum.cpu + 1e-9 and spec.minimum.cpu > 0:
            binding.append("minimum cpu")
        if spec.maximum is not None and amount.cpu >= spec.maximum.cpu - 1e-9:
            binding.append("maximum cpu")
        if self.last is not None and self.nodes:
            cap = ResourceVector.total(n.capacity for n in self.nodes if n.schedulable)
            if self.last.total().cpu >= cap.cpu - 0.1 - 1e-9:
                binding.append("capacity")
        if spec.pins:
            binding.append("pin")
        share = 0.0
        utils = {}
        for name, s in self._jobs.items():
            r = self.feedback_of(name).reward
            if not math.isnan(r):
                utils[name] = s.weight * float(
                    utility_from_reward(r, s.reward_threshold, s.utility.scaling)
                )
        total = sum(utils.values())
        if total > 0:
            share = utils.get(job, 0.0) / total
        if not math.isnan(fb.p99_ms):
            notes.append(f"last window p99 {fb.p99_ms:.1f} ms, reward {fb.reward:.3f}")
        return Explanation(
            job=job,
            allocation=amount.as_dict(nonzero=True),
            bounds=bounds,
            load_rps=load,
            share_of_objective=share,
            binding=tuple(binding),
            misspecified=misspecified,
            notes=tuple(notes),
        )

    # -- durability --------------------------------------------------------------------
    def _event(self, kind: str, subject: str, detail: Mapping[str, Any]) -> None:
        if self.log is not None:
            self.log.append_event(self.clock.now(), kind, subject, detail)

    def restore(self, log: RunLog | None = None, telemetry_parts: Sequence[str] | None = None) -> int:
        """Rebuild from a run log: jobs (submit/remove/drain events), learners (replayed
        telemetry: every part, or ``telemetry_parts``), the last allocation, plan and policy
        state that were not aborted. The epoch resumes at the last logged one, so the next plan
        is last + 1 and agents refuse anything the previous incarnation can still send (every
        plan is logged before any agent sees it). Returns windows replayed."""
        log = log or self.log
        if log is None:
            raise ValueError("restore needs a RunLog")
        events = log.read("events").to_pylist()
        aborted: set[int] = set()
        for e in sorted(events, key=lambda r: r["time"]):
            detail = json.loads(e["detail"] or "{}")
            if e["kind"] == "plan_aborted" and "epoch" in detail:
                aborted.add(int(detail["epoch"]))
            elif e["kind"] == "submit" and "spec" in detail:
                self._jobs[e["subject"]] = spec_from_dict(detail["spec"])
            elif e["kind"] == "remove":
                self._jobs.pop(e["subject"], None)
            elif e["kind"] == "drain":
                self.draining.add(e["subject"])
            elif e["kind"] == "undrain":
                self.draining.discard(e["subject"])
        decisions = log.read_decisions()
        good = [d for d in decisions if int(d["epoch"]) not in aborted]
        if good:  # the last plan that was not refused is the one in force
            d = good[-1]
            self.last = Allocation.from_dict(d["allocation"])
            self.plan = PlacementPlan.from_dict(d["plan"])
            self.policy_state = d["policy_state"] or {}
        if decisions:
            self.round = max(int(r["round"]) for r in decisions)
            # every plan is logged before any agent sees it, so the next one (last + 1) is newer
            # than anything the previous incarnation can still send: agents refuse older epochs
            self.epoch = max(int(r["epoch"]) for r in decisions)
        telemetry = log.read("telemetry", telemetry_parts)
        saved_log, self.log = self.log, None  # replay must not re-log
        try:
            self.ingest_batch(telemetry)
            self.flush()
        finally:
            self.log = saved_log
        self._final_before = int(math.floor((self.clock.now() - self.grace_s) / self.window_s))
        self._dirty = True
        return telemetry.num_rows


# --------------------------------------------------------------------------- spec (de)serialisation


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["kind"] = str(spec.kind)
    d["minimum"] = spec.minimum.as_dict(nonzero=True)
    d["maximum"] = spec.maximum.as_dict(nonzero=True) if spec.maximum is not None else None
    d["workload"] = dict(spec.workload)
    d["pins"] = list(spec.pins)
    return d


def spec_from_dict(d: Mapping[str, Any]) -> JobSpec:
    d = dict(d)
    slo = d.get("slo")
    return JobSpec(
        name=d["name"],
        kind=d.get("kind", "latency_critical"),
        slo=SLO(**slo) if slo else None,
        utility=UtilitySpec(**(d.get("utility") or {})),
        weight=float(d.get("weight", 1.0)),
        priority=int(d.get("priority", 0)),
        minimum=ResourceVector.from_dict(d.get("minimum") or {}),
        maximum=ResourceVector.from_dict(d["maximum"]) if d.get("maximum") is not None else None,
        pins=tuple(d.get("pins") or ()),
        replica_cpus=float(d.get("replica_cpus", 1.0)),
        workload=dict(d.get("workload") or {}),
    )


__all__ = [
    "Decision",
    "GlobalAllocator",
    "JobFeedback",
    "LearnerBankAdapter",
    "concat_job_windows",
    "make_bank",
    "spec_from_dict",
    "spec_to_dict",
]
