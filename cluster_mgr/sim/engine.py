"""The sim backend: the real GlobalAllocator, policy, learners and placement on a virtual clock.

Per telemetry window (1 s of virtual time), vectorized over every job:

1. node failures / returns and job arrivals / departures that fall in the window;
2. a round when the allocator says one is due (``GlobalAllocator.step``: the
   same snapshot, policy, packing and decision log as the Ray backend); a new
   plan is enforced from the next window on (a replica start takes about a
   window), the very first placement of a job at once;
3. the ground truth at the allocation in force gives every job a latency law,
   from which request counts and latency histograms are sampled (Poisson
   thinning: deterministic for the seed);
4. the window becomes telemetry rows in the one Arrow schema, written to the
   RunLog in parts of many windows, and fed to the allocator either through
   ``ingest_batch`` (the Ray backend's path: ledger, aggregation, feedback,
   signals) or through the vectorized ``observe`` path.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from allocators.base import Policy, PolicyError
from allocators.packing import PackingError
from cluster_mgr.clock import ManualClock
from cluster_mgr.control.global_allocator import Decision, GlobalAllocator
from cluster_mgr.feedback import reward_sigma
from cluster_mgr.model import (
    N_LATENCY_BUCKETS,
    TELEMETRY_WINDOW_S,
    JobSpec,
    NodeInfo,
    PlacementPlan,
    utility_from_reward,
)
from cluster_mgr.scenario.schema import Scenario
from cluster_mgr.sim.fastlayer import FastLayer
from cluster_mgr.sim.inference import attach as attach_inference
from cluster_mgr.sim.result import RunResult
from cluster_mgr.sim.sampling import WindowCounts, sample_window
from cluster_mgr.sim.truth import GroundTruth, truth_factory
from cluster_mgr.sim.truthstats import TruthStats
from cluster_mgr.store import RunLog
from cluster_mgr.telemetry import TELEMETRY_SCHEMA
from learners.base import Learner

Feed = Literal["auto", "telemetry", "observe"]
#: Above this many jobs "auto" feeds the vectorized observe path (the telemetry path below it).
AUTO_OBSERVE_JOBS = 200
Progress = Callable[[int, int], None]


def make_policy(name: str, options: dict[str, Any] | None = None) -> Policy:
    from allocators.registry import get_policy

    return get_policy(name, **(options or {}))


def learner_factory(name: str) -> Callable[[JobSpec], Learner]:
    """The learners package's learner ``name`` for every job (``learners.make_learner``)."""
    from learners import make_learner

    make_learner(name)  # an unknown name fails here, before the run starts
    return lambda spec: make_learner(name)


@dataclass(frozen=True)
class SimOptions:
    policy: str
    policy_options: dict[str, Any] | None = None
    seed: int | None = None
    duration_s: float | None = None
    out_dir: Path | None = None
    feed: Feed = "auto"
    #: windows handed to the allocator per call (and flushed before every round)
    observe_batch: int = 10
    part_rows: int = 200_000  # telemetry rows per RunLog part (many windows per part at scale)
    truth_every: int | None = None  # windows between truth-metric evaluations (None: by job count)
    learner: str | None = None
    #: the fast per-node controller (None: the scenario's [control] local_controller); with
    #: "none" no fast layer runs unless ``fast_trace`` asks for the plan alone at 100 ms
    local_controller: str | None = None
    fast_trace: bool = False


class Simulation:
    def __init__(
        self, scenario: Scenario, options: SimOptions, progress: Progress | None = None
    ) -> None:
        if options.duration_s is not None:
            scenario = scenario.with_duration(options.duration_s)
        self.sc = scenario
        self.opt = options
        self.progress = progress
        self.feed = options.feed
        if self.feed == "auto":
            self.feed = "observe" if len(scenario.jobs) > AUTO_OBSERVE_JOBS else "telemetry"
        self._obs: list[tuple[np.ndarray, ...]] = []
        self._pending_windows = 0
        self._tel: _TelemetryWriter | None = None
        self.truth_every = options.truth_every or (5 if len(scenario.jobs) <= 100 else 30)
        self.seed = scenario.seed if options.seed is None else int(options.seed)
        # inference jobs: bounds and loads resolved against the measured model (sim/inference.py)
        scenario, self.inference = attach_inference(scenario, self.seed)
        self.sc = scenario
        self.rng = np.random.default_rng(self.seed)
        self.truth = GroundTruth(scenario)
        self.stats = TruthStats(self.truth)
        self.clock = ManualClock(0.0)
        self.policy = make_policy(options.policy, options.policy_options)
        self.kind = str(getattr(self.policy, "kind", "baseline"))
        if self.kind == "oracle":
            factory = truth_factory(self.truth)
        else:
            factory = learner_factory(options.learner or scenario.learner)
        if self.inference is not None:  # inference jobs learn knob profiles (knob_profile)
            factory = self.inference.learner_factory(factory)
            self.inference.give_profiles(self.policy)
        self.log: RunLog | None = None
        if options.out_dir is not None:
            Path(options.out_dir).mkdir(parents=True, exist_ok=True)
            self.log = RunLog(str(Path(options.out_dir) / "log"), writer="sim")
        present0 = [j.spec for j in scenario.jobs if j.arrival_s <= 0.0 < j.departure_s]
        self.ga = GlobalAllocator(
            present0,
            self.policy,
            factory,
            self.clock,
            self.log,
            round_s=scenario.round_s,
            seed=self.seed,
        )
        self.alive = {n.node_id: True for n in scenario.nodes}
        self._nodes: tuple[NodeInfo, ...] | None = None
        self._cap_cpu = 0.0
        self.present = np.array([j.arrival_s <= 0.0 < j.departure_s for j in scenario.jobs])
        local = options.local_controller or self.sc.local_controller
        self.fast: FastLayer | None = None  # fast windows of local control (sim/fastlayer.py)
        if self.sc.graphs and (local != "none" or options.fast_trace):
            self.fast = FastLayer(self.sc, local, self.seed)

    # -- helpers ------------------------------------------------------------------------
    def nodes(self) -> tuple[NodeInfo, ...]:
        """The nodes as the manager sees them (rebuilt only when a node fails or returns)."""
        if self._nodes is None:
            self._nodes = tuple(n.info(self.alive[n.node_id]) for n in self.sc.nodes)
            self._cap_cpu = float(sum(n.capacity.cpu for n in self._nodes if n.schedulable))
        return self._nodes

    @property
    def capacity_cpu(self) -> float:
        self.nodes()
        return self._cap_cpu

    def _enforced(self, plan: PlacementPlan | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CPUs, PIM cores and mesh rate per job that the plan holds on alive nodes."""
        n = self.truth.n
        cpu, pim, mesh = np.zeros(n), np.zeros(n), np.zeros(n)
        if plan is None:
            return cpu, pim, mesh
        idx = self.truth.index
        for s in plan.shares:
            k = idx.get(s.job)
            if k is None or not self.alive.get(s.node_id, False):
                continue
            cpu[k] += s.resources.cpu
            pim[k] += s.resources.pim_cores
            mesh[k] += s.resources.mesh
        return cpu, pim, mesh

    def _step(self, failures: list[str]) -> Decision | None:
        try:
            return self.ga.step(self.nodes())
        except (
            PolicyError,
            PackingError,
            ValueError,
        ) as exc:  # logged by the allocator; keep the plan
            failures.append(str(exc))
            return None

    # -- the run ------------------------------------------------------------------------
    def run(self) -> RunResult:
        wall0 = _time.perf_counter()
        sc, truth = self.sc, self.truth
        win = TELEMETRY_WINDOW_S
        n_win = int(math.ceil(sc.duration_s / win))
        times = np.arange(n_win) * win
        loads = truth.loads(times + win / 2)  # (W, J) req/s at each window's midpoint
        gloads = truth.graph_loads(times + win / 2)
        apps = _Apps(sc, truth)
        rec = _Recorder(n_win, apps, sc.warmup_s)
        tel = self._tel = _TelemetryWriter(self.log, truth.names, self.opt.part_rows)
        failures: list[str] = []
        events = list(sc.events)
        jobs_by_time = sorted(
            [(j.arrival_s, "submit", j) for j in sc.jobs if j.arrival_s > 0]
            + [(j.departure_s, "remove", j) for j in sc.jobs if math.isfinite(j.departure_s)],
            key=lambda e: e[0],
        )
        in_force: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        pending: PlacementPlan | None = None
        plan: PlacementPlan | None = None
        fast_plan: PlacementPlan | None = None
        rounds: list[tuple[float, float, int, np.ndarray]] = []
        for w in range(n_win):
            t = float(times[w])
            self.clock.sleep_until(t)
            changed = False
            while events and events[0].time_s < t + win:
                e = events.pop(0)
                self.alive[e.node_id] = e.action == "return"
                self._nodes = None
                if self.log is not None:
                    self.log.append_event(t, f"node_{e.action}", e.node_id, {})
                changed = True
            while jobs_by_time and jobs_by_time[0][0] < t + win:
                _, what, j = jobs_by_time.pop(0)
                k = truth.index[j.name]
                if what == "submit":
                    self.ga.submit(j.spec)
                    self.present[k] = True
                else:
                    self.ga.remove(j.name)
                    self.present[k] = False
                changed = True
            if self.inference is not None and self.inference.begin_window(t, win, self.ga):
                changed = True  # a runtime bound change: the job's spec was swapped
            if pending is not None:  # the plan decided last window is enforced now
                plan, pending = pending, None
                in_force = self._enforced(plan)
            elif changed and in_force is not None:
                in_force = self._enforced(plan)  # failed nodes take their shares with them
            if changed or self.ga.due():
                self._flush_observations()  # the round sees every window so far
                d = self._step(failures)
                if d is not None:
                    if self.inference is not None:  # the chosen knobs travel with the plan
                        self.inference.decided(d.plan.epoch, d.policy_state)
                    cpu_dec = np.array([d.allocation.get(n).cpu for n in truth.names])
                    rounds.append((t, d.decision_ms, d.moves, cpu_dec))
                    if in_force is None:  # first placement: the jobs start on it
                        plan = d.plan
                        in_force = self._enforced(plan)
                    else:
                        pending = d.plan
            if self.fast is not None and plan is not None and (plan is not fast_plan or changed):
                self.fast.set_plan(plan, self.alive)  # the budgets and targets of the plan in force
                fast_plan = plan
            cpu, pim, mesh = in_force if in_force is not None else (np.zeros(truth.n),) * 3
            truth.pim_in_force[:], truth.mesh_in_force[:] = pim, mesh
            load = loads[w] * self.present
            fast_laws = None
            if self.fast is not None and plan is not None:  # ten fast windows under local control
                cpu, freq, fast_laws = self.fast.window(t, cpu, truth.index)
                law = truth.law(cpu, load, pim=pim, mesh=mesh, frequency=freq)
            else:
                law = truth.law(cpu, load, pim=pim, mesh=mesh)
            counts = sample_window(law, load * win, truth.target, truth.timeout, self.rng)
            if self.inference is not None:  # inference rows: emulated from measured profiles
                self.inference.window(t, win, plan, cpu, load, counts, law.busy_cores,
                                      self.present, sc.warmup_s)  # fmt: skip
            graph_counts = self._graphs(w, t, cpu, gloads[w], fast_laws)
            tel.add(w, t, win, counts, cpu, law.busy_cores, self.present)
            if self.feed == "observe":
                self._observe(counts, cpu, load, t + win)
            self._pending_windows += 1
            if self._pending_windows >= self.opt.observe_batch:
                self._flush_observations()
            rec.record(
                w,
                t,
                counts,
                graph_counts,
                cpu,
                pim,
                load,
                gloads[w],
                self.present,
                self.capacity_cpu,
            )
            if w % self.truth_every == 0:
                rec.truth_metrics(w, self.stats, cpu, load, self.present)
            if self.progress is not None:
                self.progress(w + 1, n_win)
        self.clock.sleep_until(n_win * win)
        self._flush_observations()
        tel.flush()
        rec.fill_truth(self.truth_every)
        res = rec.result(
            policy=self.opt.policy,
            kind=self.kind,
            scenario=sc,
            seed=self.seed,
            rounds=rounds,
            names=list(truth.names),
            failures=len(failures),
            max_load=self.stats.max_load(apps),
            wall_s=_time.perf_counter() - wall0,
        )
        if self.inference is not None:
            res.extra["inference"] = self.inference.summary()
        return res

    def _graphs(
        self, w: int, t: float, cpu: np.ndarray, gload: np.ndarray, fast_laws: list | None = None
    ) -> list[WindowCounts]:
        out = []
        for g, idx in enumerate(self.truth.graph_jobs):
            graph = self.truth.graphs[g]
            extra = {}
            p = graph.params
            pos = {s: i for i, s in enumerate(p.services)}
            for s in self.sc.surges:
                if s.graph == graph.name and s.start_s <= t < s.end_s:
                    key = (pos[s.src], pos[s.dst])
                    extra[key] = extra.get(key, 0.0) + s.extra_ms
            law = (self.truth.graph_law(g, cpu[idx], float(gload[g]), extra) if fast_laws is None
                   else fast_laws[g])  # fmt: skip
            out.append(
                sample_window(
                    law,
                    np.array([gload[g] * TELEMETRY_WINDOW_S]),
                    np.array([graph.slo.target]),
                    np.array([graph.timeout_ms]),
                    self.rng,
                )
            )
        return out

    def _observe(self, c: WindowCounts, cpu: np.ndarray, load: np.ndarray, t_end: float) -> None:
        """The vectorized observe path: reward and sigma exactly as cluster_mgr.feedback scores them."""
        keep = c.offered > 0
        if not keep.any():
            return
        names = np.asarray(self.truth.names, dtype=object)[keep]
        offered = c.offered[keep].astype(float)
        reward = c.within[keep] / offered
        specs = [self.truth.jobs[k].spec for k in np.flatnonzero(keep)]
        for i, s in enumerate(specs):
            if s.slo is not None and s.slo.metric == "throughput":
                reward[i] = min(1.0, c.within[keep][i] / TELEMETRY_WINDOW_S / s.slo.target)
            elif s.slo is None:
                reward[i] = c.completed[keep][i] / offered[i]
        sigma = reward_sigma(reward, offered)
        self._obs.append(
            (
                names,
                cpu[keep],
                offered / TELEMETRY_WINDOW_S,
                reward,
                sigma,
                np.full(len(names), t_end),
            )
        )

    def _flush_observations(self) -> None:
        """Hand buffered windows to the allocator in one call: telemetry tables to ``ingest_batch``
        (the Ray path), or observation arrays to ``observe``. Learners and signals are only read at
        rounds, and every round flushes first, so batching changes no decision."""
        self._pending_windows = 0
        if self._tel is not None:
            table = self._tel.take()
            if table is not None and self.feed == "telemetry":
                self.ga.ingest_batch(table)
            self._tel.write(table)
        if not self._obs:
            return
        cols = [np.concatenate(c) for c in zip(*self._obs, strict=True)]
        self._obs = []
        names, cpu, load, reward, sigma, times = cols
        self.ga.observe(names, cpu[:, None], load, reward, sigma, times)


# --------------------------------------------------------------------------- apps


class _Apps:
    """Index maps from jobs and graphs to apps (see sim.result)."""

    def __init__(self, sc: Scenario, truth: GroundTruth) -> None:
        self.job_app = [k for k, j in enumerate(sc.jobs) if j.model != "service"]
        self.names = [sc.jobs[k].name for k in self.job_app] + [g.name for g in sc.graphs]
        self.n_jobs_apps = len(self.job_app)
        specs = [sc.jobs[k].spec for k in self.job_app]
        self.weight = np.array([s.weight for s in specs] + [g.weight for g in sc.graphs])
        slos = [s.slo for s in specs] + [g.slo for g in sc.graphs]
        self.metric = [s.metric if s is not None else "none" for s in slos]
        self.target = np.array([s.target if s is not None else math.nan for s in slos])
        self.threshold = np.array([s.reward_threshold if s is not None else 1.0 for s in slos])
        self.scaling = [s.utility.scaling for s in specs] + [g.utility.scaling for g in sc.graphs]
        self.graph_jobs = truth.graph_jobs
        self.n = len(self.names)


# --------------------------------------------------------------------------- telemetry rows


class _TelemetryWriter:
    """Telemetry rows in the shared Arrow schema, built for many windows at once.

    ``add`` keeps a window's columns as numpy arrays; ``take`` turns every
    pending window into one table (one Arrow conversion per batch, not per
    window); ``write`` appends tables to the RunLog in parts of ``part_rows``.
    """

    def __init__(self, log: RunLog | None, names: tuple[str, ...], part_rows: int) -> None:
        self.log = log
        self.names = np.asarray(names, dtype=object)
        self.replicas = np.asarray([f"{n}/sim" for n in names], dtype=object)
        self.part_rows = part_rows
        self.pending: list[dict[str, np.ndarray]] = []
        self.buffer: list[pa.Table] = []
        self.rows = 0

    def add(
        self, w: int, t: float, win: float, c: WindowCounts, cpu: np.ndarray, busy: np.ndarray,
        present: np.ndarray,
    ) -> None:  # fmt: skip
        keep = present.astype(bool)  # absent jobs (not yet arrived, or gone) send no telemetry
        n = int(keep.sum())
        if n == 0:
            return
        self.pending.append(
            {
                "job": self.names[keep],
                "replica": self.replicas[keep],
                "seq": np.full(n, w, dtype=np.int64),
                "start": np.full(n, t),
                "end": np.full(n, t + win),
                "offered": c.offered[keep].astype(np.int64),
                "completed": c.completed[keep].astype(np.int64),
                "timed_out": c.timed_out[keep].astype(np.int64),
                "within_slo": c.within[keep].astype(np.int64),
                "latency_mean_ms": c.mean_ms()[keep],
                "latency_p50_ms": c.percentile(50.0)[keep],
                "latency_p95_ms": c.percentile(95.0)[keep],
                "latency_p99_ms": c.percentile(99.0)[keep],
                "cpu_quota": cpu[keep].astype(float),
                "cpu_used_s": np.minimum(busy, cpu)[keep] * win,
                "throttled_s": np.where(busy > cpu, win, 0.0)[keep],
                "hist": c.hist[keep],
            }
        )

    def take(self) -> pa.Table | None:
        if not self.pending:
            return None
        cols = {k: np.concatenate([p[k] for p in self.pending]) for k in self.pending[0]}
        self.pending = []
        n = len(cols["job"])
        hist = cols.pop("hist")
        offsets = np.arange(0, (n + 1) * N_LATENCY_BUCKETS, N_LATENCY_BUCKETS, dtype=np.int32)
        zeros_i = np.zeros(n, dtype=np.int64)
        nan = np.full(n, np.nan)
        arrays = {
            "job": pa.array(cols["job"], pa.string()),
            "node_id": pa.array(np.full(n, "sim", dtype=object), pa.string()),
            "replica": pa.array(cols["replica"], pa.string()),
            **{k: pa.array(cols[k]) for k in ("seq", "start", "end", "offered", "completed")},
            "rejected": pa.array(zeros_i),
            **{k: pa.array(cols[k]) for k in ("timed_out", "within_slo", "latency_mean_ms",
                                              "latency_p50_ms", "latency_p95_ms", "latency_p99_ms")},
            "exec_ms_mean": pa.array(nan),
            "upstream_ms_mean": pa.array(nan),
            **{k: pa.array(cols[k]) for k in ("cpu_quota", "cpu_used_s", "throttled_s")},
            "frequency": pa.array(np.ones(n)),
            "concurrency": pa.array(zeros_i),
            "latency_hist": pa.ListArray.from_arrays(pa.array(offsets), pa.array(hist.reshape(-1), pa.int64())),
            "extras": pa.MapArray.from_arrays(
                pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()), pa.array([], pa.float64())
            ),
        }  # fmt: skip
        return pa.Table.from_arrays(list(arrays.values()), schema=TELEMETRY_SCHEMA)

    def write(self, table: pa.Table | None) -> None:
        if self.log is None or table is None:
            return
        self.buffer.append(table)
        self.rows += table.num_rows
        if self.rows >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        if self.log is not None and self.buffer:
            self.log.append("telemetry", pa.concat_tables(self.buffer))
        self.buffer, self.rows = [], 0


# --------------------------------------------------------------------------- recording


class _Recorder:
    def __init__(self, n_win: int, apps: _Apps, warmup_s: float) -> None:
        self.apps = apps
        a = apps.n
        shape = (n_win, a)
        self.times = np.zeros(n_win)
        self.offered = np.zeros(shape, dtype=np.int64)
        self.completed = np.zeros(shape, dtype=np.int64)
        self.within = np.zeros(shape, dtype=np.int64)
        self.timed_out = np.zeros(shape, dtype=np.int64)
        self.p50 = np.full(shape, np.nan)
        self.p99 = np.full(shape, np.nan)
        self.present = np.zeros(shape, dtype=bool)
        self.app_cpu = np.zeros(shape)
        self.app_load = np.zeros(shape)
        self.hist_sum = np.zeros((a, N_LATENCY_BUCKETS), dtype=np.int64)
        self.warmup_s = warmup_s
        self.fair_utility = np.full(shape, np.nan)
        self.resource_loss = np.full(n_win, np.nan)
        self.cpu_used = np.zeros(n_win)
        self.pim_used = np.zeros(n_win)
        self.capacity = np.zeros(n_win)
        self.truth_utility = np.full(shape, np.nan)
        self.n_win = n_win

    def record(
        self,
        w: int,
        t: float,
        c: WindowCounts,
        gc: list[WindowCounts],
        cpu: np.ndarray,
        pim: np.ndarray,
        load: np.ndarray,
        gload: np.ndarray,
        present: np.ndarray,
        capacity_cpu: float,
    ) -> None:
        ap = self.apps
        ja = ap.job_app
        nj = ap.n_jobs_apps
        self.times[w] = t
        offered = np.concatenate([c.offered[ja]] + [g.offered for g in gc])
        self.offered[w] = offered
        self.completed[w] = np.concatenate([c.completed[ja]] + [g.completed for g in gc])
        self.within[w] = np.concatenate([c.within[ja]] + [g.within for g in gc])
        self.timed_out[w] = np.concatenate([c.timed_out[ja]] + [g.timed_out for g in gc])
        hist = np.concatenate([c.hist[ja]] + [g.hist for g in gc]) if gc else c.hist[ja]
        self.p50[w] = np.concatenate([c.percentile(50.0)[ja]] + [g.percentile(50.0) for g in gc])
        self.p99[w] = np.concatenate([c.percentile(99.0)[ja]] + [g.percentile(99.0) for g in gc])
        if t >= self.warmup_s:
            self.hist_sum += hist
        pres = np.concatenate(
            [present[ja], [bool(present[idx].any()) for idx in ap.graph_jobs]]
        ).astype(bool)
        self.present[w] = pres
        self.app_cpu[w, :nj] = cpu[ja]
        self.app_load[w, :nj] = load[ja]
        for g, idx in enumerate(ap.graph_jobs):
            self.app_cpu[w, nj + g] = cpu[idx].sum()
            self.app_load[w, nj + g] = gload[g]
        self.cpu_used[w] = cpu.sum()
        self.pim_used[w] = pim.sum()
        self.capacity[w] = capacity_cpu

    def truth_metrics(
        self, w: int, stats: TruthStats, cpu: np.ndarray, load: np.ndarray, present: np.ndarray
    ) -> None:
        fair, actual, loss = stats.fairness_and_loss(
            cpu, load, present, self.capacity[w], self.apps
        )
        self.fair_utility[w] = fair
        self.truth_utility[w] = actual
        self.resource_loss[w] = loss

    def fill_truth(self, every: int) -> None:
        """Windows between truth evaluations carry the last value (a step function)."""
        if every <= 1:
            return
        for w in range(self.n_win):
            if w % every:
                self.fair_utility[w] = self.fair_utility[w - w % every]
                self.truth_utility[w] = self.truth_utility[w - w % every]
                self.resource_loss[w] = self.resource_loss[w - w % every]

    def result(
        self, *, policy: str, kind: str, scenario: Scenario, seed: int, rounds: list, names: list[str],
        failures: int, max_load: np.ndarray, wall_s: float,
    ) -> RunResult:  # fmt: skip
        ap = self.apps
        with np.errstate(invalid="ignore", divide="ignore"):
            reward = np.where(self.offered > 0, self.within / np.maximum(self.offered, 1), np.nan)
            for a, m in enumerate(ap.metric):
                if m == "throughput":
                    reward[:, a] = np.minimum(
                        1.0, self.within[:, a] / TELEMETRY_WINDOW_S / ap.target[a]
                    )
                elif m == "none":
                    reward[:, a] = np.where(
                        self.offered[:, a] > 0,
                        self.completed[:, a] / np.maximum(self.offered[:, a], 1),
                        np.nan,
                    )
        utility = np.full_like(reward, np.nan)
        for a in range(ap.n):
            r = reward[:, a]
            utility[:, a] = np.where(
                np.isnan(r),
                np.nan,
                utility_from_reward(np.nan_to_num(r), ap.threshold[a], ap.scaling[a]),
            )
        utility[~self.present] = np.nan
        return RunResult(
            policy=policy, policy_kind=kind, scenario=scenario.name, seed=seed,
            window_s=TELEMETRY_WINDOW_S, warmup_s=scenario.warmup_s, objective=scenario.objective,
            app_names=list(ap.names), app_weight=ap.weight, app_metric=list(ap.metric),
            app_target=ap.target, app_threshold=ap.threshold, app_scaling=list(ap.scaling),
            times=self.times, offered=self.offered, completed=self.completed, within=self.within,
            timed_out=self.timed_out, p50_ms=self.p50, p99_ms=self.p99, reward=reward, utility=utility,
            present=self.present, app_cpu=self.app_cpu, app_load=self.app_load, hist=self.hist_sum,
            fair_utility=self.fair_utility, truth_utility=self.truth_utility, resource_loss=self.resource_loss, max_load=max_load,
            cpu_used=self.cpu_used, pim_used=self.pim_used, capacity_cpu=self.capacity,
            round_times=np.array([r[0] for r in rounds]), decision_ms=np.array([r[1] for r in rounds]),
            moves=np.array([r[2] for r in rounds], dtype=np.int64),
            round_cpu=np.stack([r[3] for r in rounds]) if rounds else np.zeros((0, len(names))),
            job_names=names, failures=failures, wall_s=wall_s,
        )  # fmt: skip


def run_scenario(
    scenario: Scenario, options: SimOptions, progress: Progress | None = None
) -> RunResult:
    return Simulation(scenario, options, progress).run()
