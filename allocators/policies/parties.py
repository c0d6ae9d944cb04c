"""Parties (Chen et al., ASPLOS '19), on cores and an emulated frequency knob.

Every 100 ms: slack = (target - P99) / target per latency-critical job
(signals ``p99_ms``). If some slack < 0.05, upsize the worst job by one unit
of the resource kind its cycle is on (cores or frequency; cycles start at a
seeded random kind); a core comes from idle capacity, else from the job with
most slack. Otherwise, if the job with most slack has slack > 0.2 and is not
locked, downsize it by one unit. An upsize that did not raise the job's slack
within 5 intervals is reverted and the job's cycle moves to the next kind; a
downsize after which the job's slack drops below 0.05 is reverted and the job
is locked out of downsizing for 100 intervals.

Deviation: no LLC ways (nothing here partitions a cache); the cycle is over
cores and frequency only. Frequency levels live in ``state['frequency']``
(0.5 to 1.0 in steps of 0.1); the controller applies them through the fast
path's emulated frequency knob (service rate scales with frequency).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.policies.engine import CpuPolicy, due, fit, held, signal, start_vector
from allocators.problem import CpuProblem

KINDS = ("cores", "frequency")
UP_SLACK, DOWN_SLACK = 0.05, 0.2
REVERT_AFTER, LOCKOUT = 5, 100
F_MIN, F_MAX, F_STEP = 0.5, 1.0, 0.1


class Parties(CpuPolicy):
    name = "parties"
    kind = "baseline"
    description = (
        "Parties: 100 ms slack-driven up/downsizing cycling cores and frequency, revert, lock-out"
    )
    source = "Chen et al., PARTIES, ASPLOS '19 (LLC ways left out)"
    work_conserving = False
    reserve = 1.0

    def __init__(self, period: float = 0.1, core: float = 1.0) -> None:
        super().__init__(0.0)
        if period < 0 or core <= 0:
            raise ValueError("period >= 0 and core > 0")
        self.period, self.core = period, core

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        old = held(snapshot, problem)
        if old is not None and not due(state, snapshot, self.period):
            return old, {}
        x = start_vector(problem, snapshot)
        k = int(state.get("interval", 0)) + 1
        rng = np.random.default_rng([snapshot.seed, 7])
        cycle = {n: int(v) for n, v in state.get("cycle", {}).items() if n in problem.names}
        freq = {n: float(v) for n, v in state.get("frequency", {}).items() if n in problem.names}
        lock = {n: int(v) for n, v in state.get("lock", {}).items() if n in problem.names and v > k}
        pending = {n: dict(v) for n, v in state.get("pending", {}).items() if n in problem.names}
        for n in problem.names:
            cycle.setdefault(n, int(rng.integers(0, len(KINDS))))
            freq.setdefault(n, F_MAX)
        slack = {}
        for j in problem.jobs:
            p99 = signal(snapshot, j.name, "p99_ms")
            if p99 is not None and j.slo is not None and j.slo.metric == "latency":
                slack[j.name] = (j.slo.target - p99) / j.slo.target
        idx = {n: i for i, n in enumerate(problem.names)}

        def apply(name: str, kind: str, sign: int) -> bool:
            i = idx[name]
            if kind == "frequency":
                f = round(freq[name] + sign * F_STEP, 6)
                if not F_MIN - 1e-9 <= f <= F_MAX + 1e-9:
                    return False
                freq[name] = f
                return True
            if sign > 0:
                if x[i] + self.core > problem.hi[i] + 1e-9:
                    return False
                if problem.capacity - x.sum() < self.core - 1e-9:  # no idle core: take one
                    donors = [
                        n
                        for n in sorted(slack, key=lambda n: -slack[n])
                        if n != name and x[idx[n]] - self.core >= problem.lo[idx[n]] - 1e-9
                    ]
                    if not donors:
                        return False
                    x[idx[donors[0]]] -= self.core
                x[i] += self.core
                return True
            if x[i] - self.core < problem.lo[i] - 1e-9:
                return False
            x[i] -= self.core
            return True

        # Judge the last actions: revert what did not help (upsize) or hurt (downsize).
        for name, act in list(pending.items()):
            s = slack.get(name)
            if s is None:
                continue
            if act["sign"] < 0 and s < UP_SLACK:
                apply(name, act["kind"], +1)
                lock[name] = k + LOCKOUT
                del pending[name]
            elif act["sign"] > 0 and s > act["slack"] + 1e-9:
                del pending[name]  # it helped
            elif act["sign"] > 0 and k - act["interval"] >= REVERT_AFTER:
                apply(name, act["kind"], -1)
                cycle[name] = (cycle[name] + 1) % len(KINDS)
                del pending[name]
        action = None
        if slack:
            worst = min(slack, key=lambda n: (slack[n], n))
            best = max(
                (n for n in slack if n not in lock), key=lambda n: (slack[n], n), default=None
            )
            if slack[worst] < UP_SLACK and worst not in pending:
                for attempt in range(len(KINDS)):  # a kind at its limit passes to the next
                    kind = KINDS[(cycle[worst] + attempt) % len(KINDS)]
                    if apply(worst, kind, +1):
                        action = {"job": worst, "kind": kind, "sign": 1}
                        break
            elif best is not None and slack[best] > DOWN_SLACK and best not in pending:
                kind = KINDS[cycle[best]]
                if apply(best, kind, -1):
                    action = {"job": best, "kind": kind, "sign": -1}
        if action is not None:
            pending[action["job"]] = {
                "kind": action["kind"],
                "sign": action["sign"],
                "interval": k,
                "slack": slack[action["job"]],
            }
        return fit(x, problem), {
            "acted_at": snapshot.time,
            "interval": k,
            "cycle": cycle,
            "frequency": freq,
            "lock": lock,
            "pending": pending,
            "last_action": action,
        }
