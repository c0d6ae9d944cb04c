"""Feedback baselines that act on measurements: MIAD, PID, Kubernetes HPA, Ray Serve, Caladan.

All start from the allocation in force, change it by their own rule, are cut
back by weighted water-filling when the wishes exceed capacity, and keep their
cadence in state (``acted_at``). They scale to need, not to capacity, so they
state reserve = 1 (idle capacity is not a work-conservation failure for them).

- MIAD: SLO missed (measured ``p99_ms`` over target, or ``reward`` under the
  threshold) -> CPU x ``increase``; met -> CPU - ``decrease``; every ``period``.
- PID: velocity-form PID on the relative latency error (p99 - target)/target
  (or (threshold - reward)/threshold), scaled by the job's CPU; every ``period``.
- HPA (Kubernetes): desired replicas = ceil(current x utilization / target),
  skipped within the 10 % tolerance; 15 s sync; scale-down uses the highest
  recommendation of the last 300 s (stabilisation window).
- Ray Serve: desired replicas = ceil(ongoing requests / 2); up only after the
  wish held 30 s, down only after 600 s.
- Caladan: congestion (queueing delay above ``delay_ms`` or a backlog above one
  request per replica) -> one more core at once, from idle cores, else from a
  best-effort job; an idle core (utilization leaves a whole core unused) goes
  back; best-effort jobs share what is idle. Microsecond reactions in the paper;
  here once per controller step.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.policies.engine import CpuPolicy, due, fit, held, signal, start_vector
from allocators.problem import CpuProblem
from cluster_mgr.model import JobKind, JobSpec


def slo_error(snapshot: Snapshot, job: JobSpec) -> float | None:
    """Relative SLO error, positive when the job is short: from P99 if measured, else reward."""
    p99 = signal(snapshot, job.name, "p99_ms")
    if p99 is not None and job.slo is not None and job.slo.metric == "latency":
        return (p99 - job.slo.target) / job.slo.target
    reward = signal(snapshot, job.name, "reward")
    if reward is not None:
        thr = job.reward_threshold
        return (thr - reward) / thr
    return None


class _Feedback(CpuPolicy):
    kind = "baseline"
    work_conserving = False
    reserve = 1.0
    period: float = 30.0

    def __init__(self, period: float | None = None) -> None:
        super().__init__(0.0)
        if period is not None:
            if period < 0:
                raise ValueError("period must be >= 0")
            self.period = period

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        old = held(snapshot, problem)
        if old is not None and not due(state, snapshot, self.period):
            return old, {}
        x, info = self.step(problem, snapshot, state, start_vector(problem, snapshot))
        return fit(x, problem), {**info, "acted_at": snapshot.time}

    @abstractmethod
    def step(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState, x: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One feedback step from ``x`` (the allocation in force)."""


class Miad(_Feedback):
    name = "miad"
    description = "multiplicative increase on an SLO miss, additive decrease otherwise"
    source = "MIAD baseline of Cilantro (OSDI '23)"

    def __init__(self, increase: float = 2.0, decrease: float = 0.5, period: float = 30.0) -> None:
        super().__init__(period)
        if increase <= 1 or decrease <= 0:
            raise ValueError("increase must be > 1 and decrease > 0")
        self.increase, self.decrease = increase, decrease

    def step(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState, x: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        for i, j in enumerate(problem.jobs):
            e = slo_error(snapshot, j)
            if e is None:
                continue
            x[i] = max(x[i], 0.1) * self.increase if e > 0 else x[i] - self.decrease
        return x, {}


class Pid(_Feedback):
    name = "pid"
    description = "velocity-form PID on the relative P99 (or reward) error, per job"
    source = "PID baseline of Cilantro (OSDI '23)"

    def __init__(
        self, kp: float = 0.5, ki: float = 0.1, kd: float = 0.0, period: float = 1.0
    ) -> None:
        super().__init__(period)
        if min(kp, ki, kd) < 0:
            raise ValueError("PID gains must be >= 0")
        self.kp, self.ki, self.kd = kp, ki, kd

    def step(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState, x: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        hist = dict(state.get("errors", {}))
        dt = max(self.period, 1e-3)
        for i, j in enumerate(problem.jobs):
            e = slo_error(snapshot, j)
            if e is None:
                continue
            e1, e2 = hist.get(j.name, [e, e])
            du = self.kp * (e - e1) + self.ki * e * dt + self.kd * (e - 2 * e1 + e2) / dt
            x[i] = max(x[i], 0.1) * (1.0 + float(np.clip(du, -0.5, 1.0)))
            hist[j.name] = [e, e1]
        return x, {"errors": hist}


class KubernetesHpa(_Feedback):
    name = "hpa"
    description = (
        "Kubernetes HPA target tracking: 15 s sync, 10% tolerance, 300 s down-stabilisation"
    )
    source = "Kubernetes HorizontalPodAutoscaler (autoscaling/v2 algorithm)"

    def __init__(
        self,
        target_utilization: float = 0.7,
        tolerance: float = 0.1,
        sync: float = 15.0,
        stabilization: float = 300.0,
    ) -> None:
        super().__init__(sync)
        if not 0 < target_utilization <= 1 or tolerance < 0 or stabilization < 0:
            raise ValueError("bad HPA parameters")
        self.target, self.tolerance, self.stabilization = (
            target_utilization,
            tolerance,
            stabilization,
        )

    def step(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState, x: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        recs = {k: list(v) for k, v in state.get("recommendations", {}).items()}
        for i, j in enumerate(problem.jobs):
            util = signal(snapshot, j.name, "utilization")
            current = max(1, round(x[i] / j.replica_cpus))
            if util is None:
                continue
            ratio = util / self.target
            desired = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(current * ratio)
            window = [r for r in recs.get(j.name, []) if snapshot.time - r[0] < self.stabilization]
            window.append([snapshot.time, desired])
            recs[j.name] = window
            if desired < current:  # scale down only to the highest recent recommendation
                desired = min(current, max(r[1] for r in window))
            x[i] = max(desired, 1) * j.replica_cpus
        return x, {"recommendations": recs}


class RayServe(_Feedback):
    name = "ray_serve"
    description = (
        "Ray Serve queue autoscaling: 2 ongoing requests per replica, 30 s up / 600 s down"
    )
    source = "Ray Serve autoscaling_config defaults"

    def __init__(
        self,
        target_ongoing_requests: float = 2.0,
        upscale_delay: float = 30.0,
        downscale_delay: float = 600.0,
    ) -> None:
        super().__init__(0.0)
        if target_ongoing_requests <= 0 or upscale_delay < 0 or downscale_delay < 0:
            raise ValueError("bad Ray Serve parameters")
        self.target = target_ongoing_requests
        self.up, self.down = upscale_delay, downscale_delay

    def step(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState, x: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        since = dict(state.get("wish_since", {}))  # job -> [direction, first time]
        for i, j in enumerate(problem.jobs):
            q = signal(snapshot, j.name, "queue_len")
            if q is None:
                continue
            current = max(1, round(x[i] / j.replica_cpus))
            desired = max(1, math.ceil(q / self.target))
            direction = int(np.sign(desired - current))
            if direction == 0:
                since.pop(j.name, None)
                continue
            prev = since.get(j.name)
            if prev is None or prev[0] != direction:
                since[j.name] = [direction, snapshot.time]
                prev = since[j.name]
            delay = self.up if direction > 0 else self.down
            if snapshot.time - prev[1] >= delay - 1e-9:
                x[i] = desired * j.replica_cpus
                since.pop(j.name, None)
        return x, {"wish_since": since}


class Caladan(_Feedback):
    name = "caladan"
    description = "congestion-driven core moves: +1 core on queueing, idle cores back, BE gets idle"
    source = "Fried et al., Caladan, OSDI '20"

    def __init__(self, delay_ms: float = 0.01, core: float = 1.0) -> None:
        super().__init__(0.0)
        if delay_ms < 0 or core <= 0:
            raise ValueError("delay_ms >= 0 and core > 0")
        self.delay_ms, self.core = delay_ms, core

    def step(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState, x: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        be = np.array([j.kind == JobKind.BEST_EFFORT for j in problem.jobs])
        x = np.where(be, problem.lo, x)  # best-effort jobs only ever hold idle cores
        congested = []
        for i, j in enumerate(problem.jobs):
            if be[i]:
                continue
            delay = signal(snapshot, j.name, "queue_delay_ms")
            backlog = signal(snapshot, j.name, "queue_len")
            util = signal(snapshot, j.name, "utilization")
            replicas = max(1.0, x[i] / j.replica_cpus)
            if (delay is not None and delay > self.delay_ms) or (
                backlog is not None and backlog > replicas
            ):
                congested.append(i)
            elif util is not None and (1.0 - util) * x[i] >= self.core:
                x[i] -= self.core  # a whole core sat idle: give it back
        for i in congested:
            x[i] = min(x[i] + self.core, problem.hi[i])
        x = fit(np.where(be, problem.lo, x), problem)
        idle = problem.capacity - x.sum()
        if be.any() and idle > 0:
            from allocators.waterfill import waterfill

            b = np.flatnonzero(be)
            x[b] = waterfill(
                min(idle + x[b].sum(), float(problem.hi[b].sum())),
                problem.weights[b],
                x[b],
                problem.hi[b],
            )
        return x, {"congested": [problem.names[i] for i in congested]}
