"""The per-node LocalController hosted inside a NodeAgent (docs/local_control.md, issue 8).

Every fast window (100 ms, on the injectable clock: SystemClock under Ray) the
host's thread

1. reads the window that just closed at each of its node's replicas
   (``Replica.fast_since``: per fast window the replica's own-time P99 and
   mean, time-from-start, arrivals, queue length and wait, throttled time and
   the knobs in force), sums them per job (a job is a "service" of the node),
2. builds ``NodeSignals`` (one row) and steps a ``NodeControlLoop`` with the
   node budget the global allocator set in the last committed plan (the
   job's CPU share on this node; before any commit, what its replicas hold),
3. enforces the resulting ``FastAction``s through the fast path only
   (``NodeAgentCore.set_job_knobs``: quota, frequency, concurrency; a
   ``rate_limit`` action goes to the node's mesh participant when there is
   one); a knob is enforced when the replica acknowledged it,
4. records the window in a history (signals, targets, actions, the window
   in which the replicas acked), reports per telemetry window one
   TelemetryWindow per job with ``local.*`` extras, and sends the controller
   one event per job per telemetry window in which it acted.

The profile the controller sizes with is measured, not read from the workload
model: the mean work per request at frequency 1 (the replicas' CPU time per
completion times their frequency), EWMA over windows, a coefficient of
variation (``cv`` option, 1.0) and the frequency exponent (1.0: the emulated
knob scales service rate linearly). Per-job targets: ``exec_target_frac`` x the
job's latency SLO for its own-time P99 (a job here is one service, so its own
time is its latency at the replica), and time-from-start within
max(1.2 x measured, measured + ``upstream_slack_ms``). Jobs without a latency
SLO are left alone.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import ray

from cluster_mgr.clock import Clock, SystemClock
from cluster_mgr.local.controller import NodeControlLoop
from cluster_mgr.local.knobs import FastAction, Knobs, NodeBudget
from cluster_mgr.local.planner import RoundPlan
from cluster_mgr.local.profile import ServiceProfile
from cluster_mgr.local.registry import make_controller
from cluster_mgr.local.signals import NodeSignals
from cluster_mgr.model import TelemetryWindow

HISTORY = 3000  # fast windows kept (5 min)


def job_profile(jobs: tuple[str, ...], work_ms: np.ndarray, upstream_ms: np.ndarray,
                exec_target_ms: np.ndarray, cv: float, freq_exponent: float) -> ServiceProfile:  # fmt: skip
    """Independent single-service jobs: no call edges; profiled exec P99 = half the target
    (SurgeGuard's targets are 2x the profiled execution time)."""
    s = len(jobs)
    return ServiceProfile(
        services=jobs, service_ms=np.asarray(work_ms, float), cv=np.full(s, float(cv)),
        freq_exponent=np.full(s, float(freq_exponent)), ancestors=np.zeros((s, s), bool),
        path_len=np.ones(s, np.int64), exec_p99_ms=np.asarray(exec_target_ms, float) / 2.0,
        upstream_ms=np.asarray(upstream_ms, float),
    )  # fmt: skip


def reaction_windows(history: list[dict[str, Any]], job: str, starts: list[float],
                     fast_s: float, horizon: int = 30, signal: str = "viol") -> list[int | None]:  # fmt: skip
    """Per surge starting at each of ``starts`` (wall clock): fast windows from the first
    window at or after the start whose signals show a violation of the job's target to the
    first window in which a scale-up of that job was enforced (acked by its replicas), as
    DESIGN.md counts reaction time. None: no violation within ``horizon`` windows (not an
    event), or a violation that no scale-up answered within ``horizon`` windows.
    ``signal``: the violation's flag in the history, ``viol`` (own-time P99 over its
    target: load surges) or ``late`` (time-from-start over its target: network surges)."""
    by_w = {h["window"]: h for h in history}
    out: list[int | None] = []
    for s in starts:
        w0 = math.floor(s / fast_s)
        v = next((w for w in range(w0, w0 + horizon)
                  if w in by_w and by_w[w]["jobs"].get(job, {}).get(signal)), None)  # fmt: skip
        if v is None:
            out.append(None)
            continue
        fixed = [h["acked_window"] for h in history if h["window"] >= v - 1
                 and h.get("acked_window") is not None and h["acked_window"] >= v
                 and any(a["job"] == job and a["up"] for a in h["actions"])]  # fmt: skip
        f = min(fixed) if fixed else None
        out.append(f - v if f is not None and f - v <= horizon else None)
    return out


class LocalHost:
    """One node's LocalController, driven by ``run`` in its own thread (see the module doc)."""

    def __init__(self, agent: Any, options: dict[str, Any] | None = None,
                 clock: Clock | None = None) -> None:  # fmt: skip
        o = dict(options or {})
        self.agent = agent  # NodeAgentCore
        self.clock = clock or SystemClock()
        self.kind = str(o.get("controller", "ours"))
        self.fast_s = float(agent.fast_window_s)
        self.window_s = float(agent.window_s)
        self.exec_frac = float(o.get("exec_target_frac", 0.8))
        self.upstream_slack_ms = float(o.get("upstream_slack_ms", 10.0))
        self.cv = float(o.get("cv", 1.0))
        self.freq_exponent = float(o.get("freq_exponent", 1.0))
        self.freq_min, self.freq_max = float(o.get("freq_min", 0.5)), float(o.get("freq_max", 1.5))
        self.read_timeout_s = float(o.get("read_timeout_s", 0.6 * self.fast_s))
        self.seed = int(o.get("seed", 0))
        self.known_work_ms: dict[str, float] = {k: float(v) for k, v in
                                                 dict(o.get("work_ms", {})).items()}  # fmt: skip
        self.lock = threading.Lock()
        self.budget: dict[str, float] = {}  # job -> CPUs of the last committed plan on this node
        self.budget_epoch = -1
        self.work_ms: dict[str, float] = dict(self.known_work_ms)
        self.upstream_ms: dict[str, float] = {}
        self.last_seen: dict[str, int] = {}  # replica -> last fast window read
        self.loop: NodeControlLoop | None = None
        self.plan: RoundPlan | None = None
        self.services: tuple[str, ...] = ()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.steps = 0
        self.skipped = 0  # fast windows not stepped (a step that overran its window)
        self.missed = 0
        self.errors = 0
        self.last_error = ""
        self._tw: dict[str, dict[str, float]] = {}  # job -> sums over the open telemetry window
        self._tw_idx = math.floor(self.clock.now() / self.window_s)
        self.telemetry_out: list[TelemetryWindow] = []  # taken by the agent each push
        self._out_lock = threading.Lock()

    # -- the global layer's budget ----------------------------------------------------
    def set_budget(self, epoch: int, desired: dict[str, dict[str, Any]]) -> None:
        """The committed plan's share of each job on this node (its CPUs): the node budget."""
        with self.lock:
            self.budget = {j: float(sum(d.get("sizes", ()))) for j, d in desired.items()}
            self.budget_epoch = epoch
            self.plan = None  # re-planned at the next window (on_round)

    # -- one fast window ----------------------------------------------------------------
    def _read(self, w: int) -> dict[str, dict[str, float]]:
        """The closed window ``w`` of every replica, summed per job (latency-SLO jobs only)."""
        with self.agent.lock:
            reps = [(n, self.agent.replicas[n], dict(i)) for n, i in self.agent.infos.items()
                    if n in self.agent.replicas and i.get("slo_ms")]  # fmt: skip
        refs = {n: (h.fast_since.remote(self.last_seen.get(n, w - 2)), i) for n, h, i in reps}
        got: dict[str, list[tuple[dict[str, float], dict[str, Any]]]] = {}
        ready, _ = ray.wait([r for r, _ in refs.values()], num_returns=len(refs),
                            timeout=self.read_timeout_s)  # fmt: skip
        ready_set = set(ready)
        for n, (ref, info) in refs.items():
            if ref not in ready_set:
                self.missed += 1
                continue
            try:
                ws = ray.get(ref)
            except Exception:  # a replica being stopped: the agent forgets it
                continue
            mine = [x for x in ws if x["window"] <= w]
            if not mine:
                continue
            self.last_seen[n] = mine[-1]["window"]
            got.setdefault(info["job"], []).append((mine[-1], info))
        out: dict[str, dict[str, float]] = {}
        for job, rows in got.items():
            offered = sum(r["offered"] for r, _ in rows)
            done = sum(r["completed"] for r, _ in rows)

            def wmean(key: str, weight: str, rows: Any = rows) -> float:
                num = sum(r[key] * r[weight] for r, _ in rows if r[weight] and not math.isnan(r[key]))
                den = sum(r[weight] for r, _ in rows if r[weight] and not math.isnan(r[key]))
                return num / den if den else math.nan

            p99s = [r["p99_ms"] for r, _ in rows if not math.isnan(r["p99_ms"])]
            quota = sum(r["cpu_quota"] for r, _ in rows)
            out[job] = {
                "offered": offered, "completed": done,
                "rejected": sum(r["rejected"] + r["timed_out"] for r, _ in rows),
                "p99_ms": max(p99s) if p99s else math.nan,  # the worst replica's: conservative
                "mean_ms": wmean("mean_ms", "completed"),
                "work_ms": wmean("work_ms", "completed"),
                "upstream_ms": wmean("upstream_ms", "offered"),
                "queue_delay_ms": wmean("queue_delay_ms", "completed"),
                "queue_len": sum(r["busy"] + r["waiting"] for r, _ in rows),
                "busy": sum(r["busy"] for r, _ in rows),
                "throttled_s": sum(r["throttled_s"] for r, _ in rows),
                "quota": quota,
                "frequency": float(np.mean([r["frequency"] for r, _ in rows])),
                "concurrency": sum(r["concurrency"] for r, _ in rows),
                "replicas": len(rows),
                "size": sum(float(i["size"]) for _, i in rows),
                "slo_ms": float(rows[0][1]["slo_ms"]),
            }  # fmt: skip
        return out

    def _learn_profile(self, sig: dict[str, dict[str, float]]) -> None:
        for job, x in sig.items():
            if job not in self.known_work_ms and x["completed"] >= 3 and not math.isnan(x["work_ms"]):
                prev = self.work_ms.get(job)
                self.work_ms[job] = x["work_ms"] if prev is None else 0.95 * prev + 0.05 * x["work_ms"]
            prev = self.upstream_ms.get(job)
            # calm windows only: the profiled baseline; a window late against it is a network
            # surge, which must stay a violation rather than become the profile
            if (not math.isnan(x["upstream_ms"]) and x["p99_ms"] <= self.exec_frac * x["slo_ms"]
                    and (prev is None or x["upstream_ms"] <= self._upstream_target(prev))):
                self.upstream_ms[job] = x["upstream_ms"] if prev is None else (
                    0.95 * prev + 0.05 * x["upstream_ms"])  # fmt: skip

    def _upstream_target(self, profiled_ms: float) -> float:
        """SurgeGuard's time-from-start target: 1.2x profiled, at least ``upstream_slack_ms`` over."""
        return max(1.2 * profiled_ms, profiled_ms + self.upstream_slack_ms)

    def _round_plan(self, jobs: tuple[str, ...], sig: dict[str, dict[str, float]]) -> RoundPlan:
        share = np.array([[self.budget.get(j, sig[j]["size"]) for j in jobs]])
        share = np.minimum(share, np.array([[sig[j]["size"] for j in jobs]]))  # what is reserved
        target = np.array([[self.exec_frac * sig[j]["slo_ms"] for j in jobs]])
        up = np.array([self.upstream_ms.get(j, 1.0) for j in jobs])
        up_t = np.maximum(1.2 * up, up + self.upstream_slack_ms)[None, :]
        budget = NodeBudget(share.sum(axis=1), np.array([self.freq_min]), np.array([self.freq_max]),
                            np.zeros(1))  # fmt: skip
        return RoundPlan(max(self.budget_epoch, 0), share, target, up_t, budget)

    def _signals(self, w: int, jobs: tuple[str, ...], sig: dict[str, dict[str, float]]) -> NodeSignals:
        def arr(key: str, fill: float = 0.0) -> np.ndarray:
            return np.array([[fill if math.isnan(sig[j][key]) else sig[j][key] for j in jobs]])

        quota = np.maximum(arr("quota"), 1e-3)
        p99 = arr("p99_ms")
        slo = np.array([[sig[j]["slo_ms"] for j in jobs]])
        offered = arr("offered")
        up = np.array([[sig[j]["upstream_ms"] if not math.isnan(sig[j]["upstream_ms"])
                        else self.upstream_ms.get(j, 1.0) for j in jobs]])  # fmt: skip
        # time-from-start added since profiling (a network delay) reaches the caller too
        added = np.maximum(up - np.array([[self.upstream_ms.get(j, 1.0) for j in jobs]]), 0.0)
        return NodeSignals(
            window=w, time=(w + 1) * self.fast_s, services=jobs, exec_p99_ms=p99,
            exec_mean_ms=arr("mean_ms"), upstream_ms=up, arrival_rps=offered / self.fast_s,
            queue_len=arr("queue_len"), queue_delay_ms=arr("queue_delay_ms"),
            throttled_frac=np.clip(arr("throttled_s") / (self.fast_s * quota), 0.0, 1.0),
            utilization=arr("busy") / quota,
            # the node's end-to-end P99 over its SLO, as a ratio (jobs have their own SLOs)
            p99_ms=np.array([float(((p99 + added) / slo).max())]), slo_ms=np.ones(1),
            offered_rps=offered / self.fast_s,
            rejected_frac=arr("rejected") / np.maximum(offered, 1.0),
        )  # fmt: skip

    def _knobs(self, jobs: tuple[str, ...], sig: dict[str, dict[str, float]]) -> Knobs:
        """The knobs in force, as the replicas reported them with the window."""
        k = Knobs.initial(np.array([[sig[j]["quota"] for j in jobs]]))
        return k.with_(quota=np.array([[sig[j]["quota"] for j in jobs]]),
                       frequency=np.array([[sig[j]["frequency"] for j in jobs]]),
                       concurrency=np.array([[float(sig[j]["concurrency"]) for j in jobs]]))  # fmt: skip

    def step(self, now: float) -> dict[str, Any] | None:
        """Act on the fast window that closed last before ``now``; returns its history entry."""
        w = math.floor(now / self.fast_s) - 1
        t_read = time.perf_counter()
        sig = self._read(w)
        self._learn_profile(sig)
        jobs = tuple(sorted(j for j in sig if j in self.work_ms))
        if not jobs:
            return None
        with self.lock:
            knobs = self._knobs(jobs, sig)
            plan = self._round_plan(jobs, sig)
            profile = job_profile(jobs, np.array([self.work_ms[j] for j in jobs]),
                                  np.array([self.upstream_ms.get(j, 1.0) for j in jobs]),
                                  plan.exec_target_ms[0], self.cv, self.freq_exponent)  # fmt: skip
            if self.loop is None or jobs != self.services:
                ctl = make_controller(self.kind, profile, self.seed)
                ctl.reset(plan, knobs)
                self.loop = NodeControlLoop(ctl, knobs, jobs)
                self.services = jobs
            else:
                self.loop.controller.profile = profile  # measured work per request, refreshed
                prev = self.plan
                if prev is None or not np.array_equal(prev.budget.cores, plan.budget.cores):
                    self.loop.controller.on_round(plan)  # a new round's budget
                else:  # same budget: targets follow the measured time-from-start
                    self.loop.controller.plan = plan
            self.plan = plan
            self.loop.knobs = knobs  # what is in force, as the replicas say
        signals = self._signals(w, jobs, sig)
        acts = self.loop.step(signals, plan.budget, now)
        decide_ms = (time.perf_counter() - t_read) * 1e3
        acked = self._enforce(acts, sig) if acts else None
        if acked is not None:  # the knobs in force now (the replicas cap quota at their bundle)
            self.loop.knobs = self._knobs(jobs, {**sig, **acked["infos"]})
        target = plan.exec_target_ms[0]
        entry = {
            "window": w, "time": now, "decide_ms": decide_ms,
            "budget_cores": float(plan.budget.cores[0]), "epoch": self.budget_epoch,
            "jobs": {j: {"p99_ms": sig[j]["p99_ms"], "target_ms": float(target[i]),
                         "slo_ms": sig[j]["slo_ms"], "arrival_rps": sig[j]["offered"] / self.fast_s,
                         "quota": sig[j]["quota"], "frequency": sig[j]["frequency"],
                         "queue_len": sig[j]["queue_len"],
                         "viol": bool(sig[j]["p99_ms"] > target[i]),
                         "upstream_ms": float(signals.upstream_ms[0, i]),
                         "upstream_target_ms": float(plan.upstream_target_ms[0, i]),
                         "late": bool(signals.upstream_ms[0, i] > plan.upstream_target_ms[0, i])}
                     for i, j in enumerate(jobs)},
            "actions": [{"job": a.service, "kind": a.kind, "value": a.value, "previous": a.previous,
                         "up": a.kind in ("quota", "frequency") and a.value > a.previous + 1e-9}
                        for a in acts],
            "acked_at": acked["time"] if acked else None,
            "acked_window": math.floor(acked["time"] / self.fast_s) if acked else None,
        }  # fmt: skip
        if self.history and w > self.history[-1]["window"] + 1:  # the loop fell behind
            self.skipped += w - self.history[-1]["window"] - 1
        self.history.append(entry)
        self.steps += 1
        self._account(entry)
        return entry

    def _enforce(self, acts: list[FastAction], sig: dict[str, dict[str, float]]) -> dict[str, Any]:
        per: dict[str, dict[str, float]] = {}
        for a in acts:
            per.setdefault(a.service, {})[a.kind] = a.value
        infos: dict[str, dict[str, float]] = {}
        for job, kv in per.items():
            n = max(1, int(sig[job]["replicas"]))
            conc = kv.get("concurrency")
            if "rate_limit" in kv:
                mesh = self.agent.participants.get("mesh")
                if mesh is not None and hasattr(mesh, "set_rate_limit"):
                    mesh.set_rate_limit(job, kv["rate_limit"])
            if not ({"quota", "frequency", "concurrency"} & kv.keys()):
                continue
            got = self.agent.set_job_knobs(
                job, cpu=kv.get("quota"),
                concurrency=None if conc is None else max(1, math.ceil(conc / n)),
                frequency=kv.get("frequency"),
            )  # fmt: skip
            if got:
                infos[job] = {**sig[job], "quota": sum(i["cpu_quota"] for i in got),
                              "frequency": float(np.mean([i["frequency"] for i in got])),
                              "concurrency": sum(i["concurrency"] for i in got)}  # fmt: skip
        return {"time": self.clock.now(), "infos": infos}

    # -- telemetry and events -------------------------------------------------------------
    def _account(self, e: dict[str, Any]) -> None:
        idx = math.floor(e["time"] / self.window_s)
        if idx > self._tw_idx:
            self._close_telemetry(idx)
        for job, x in e["jobs"].items():
            t = self._tw.setdefault(job, {"windows": 0.0, "violations": 0.0, "actions": 0.0,
                                          "up_actions": 0.0})  # fmt: skip
            t["windows"] += 1
            t["violations"] += float(x["viol"])
            t["quota"], t["frequency"] = x["quota"], x["frequency"]
            t["budget_cores"] = e["budget_cores"]
        for a in e["actions"]:
            t = self._tw[a["job"]]
            t["actions"] += 1
            t["up_actions"] += float(a["up"])
            t[f"last_{a['kind']}"] = a["value"]

    def _close_telemetry(self, idx: int) -> None:
        start, end = self._tw_idx * self.window_s, (self._tw_idx + 1) * self.window_s
        node = self.agent.node_id
        events = []
        for job, t in sorted(self._tw.items()):
            extras = {f"local.{k}": float(v) for k, v in t.items()}
            extras["local.missed_reads"] = float(self.missed)
            with self._out_lock:
                self.telemetry_out.append(TelemetryWindow(job=job, node_id=node, replica="local",
                                                          seq=0, start=start, end=end,
                                                          extras=extras))  # fmt: skip
            if t["actions"]:
                events.append({"job": job, "controller": self.kind, "window_start": start,
                               **{k: v for k, v in t.items()}})  # fmt: skip
        self._tw = {}
        self._tw_idx = idx
        if events:
            try:  # fire and forget: the fast loop never waits for the controller
                self.agent.controller().local_events.remote(node, events)
            except Exception:
                self.agent._controller = None

    def take_telemetry(self) -> list[TelemetryWindow]:
        with self._out_lock:
            out, self.telemetry_out = self.telemetry_out, []
        return out

    # -- the thread ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Step once per fast window, just after each window closes, until ``stop``."""
        offset = min(0.01, 0.1 * self.fast_s)  # let the replicas close the window first
        while not stop.is_set():
            now = self.clock.now()
            self.clock.sleep_until((math.floor(now / self.fast_s) + 1) * self.fast_s + offset)
            if stop.is_set():
                return
            try:
                self.step(self.clock.now())
            except Exception as exc:  # one bad window never ends the fast layer
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"

    def info(self) -> dict[str, Any]:
        with self.lock:
            return {"controller": self.kind, "steps": self.steps, "skipped_windows": self.skipped,
                    "missed_reads": self.missed,
                    "errors": self.errors, "last_error": self.last_error, "budget": dict(self.budget),
                    "budget_epoch": self.budget_epoch, "work_ms": dict(self.work_ms),
                    "upstream_ms": dict(self.upstream_ms), "services": list(self.services)}  # fmt: skip
