"""The shared decision path of policies that divide one resource kind (CPU) by solving for a vector.

A subclass implements ``solve`` (continuous allocation over the problem's
jobs) and, for hysteresis, ``score``. This class does the rest the same way
for every policy: input checks, pin-group limits (jobs pinned to the same
nodes cannot jointly exceed them, or packing fails), quanta without lost
capacity, work conservation and the switching-cost hold.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from allocators.base import Policy, PolicyError, PolicyState, Snapshot
from allocators.problem import CpuProblem, cpu_problem
from allocators.solvers.rounding import quantize, spread
from allocators.stability import hold_or_move, last_vector
from allocators.waterfill import waterfill
from cluster_mgr.model import (
    CPU_QUANTUM,
    RESOURCE_KINDS,
    Allocation,
    ResourceVector,
    unchecked_vector,
)

Score = Callable[[np.ndarray], float]


class CpuPolicy(Policy):
    """Base of the vector-solving policies (ours, oracles and most baselines)."""

    resources = ("cpu",)
    #: Give capacity no job's utility needs to the jobs by weight (False for autoscalers).
    work_conserving: ClassVar[bool] = True
    quantum: ClassVar[float] = CPU_QUANTUM

    def __init__(self, switching_cost: float = 0.0) -> None:
        if not np.isfinite(switching_cost) or switching_cost < 0:
            raise ValueError(f"switching_cost must be a finite number >= 0, got {switching_cost}")
        self.switching_cost = float(switching_cost)

    # -- to implement ----------------------------------------------------------------
    @abstractmethod
    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The policy's CPU vector for this snapshot, and what to keep in its state."""

    def score(self, problem: CpuProblem, snapshot: Snapshot) -> Score | None:
        """The policy's objective on its own bound, for the switching-cost test (None: always move)."""
        return None

    def refine_quanta(self, problem: CpuProblem, x: np.ndarray) -> np.ndarray:
        """Improve a quantized allocation by exchanging single quanta (default: as is)."""
        return x

    def quantum_gain(self, problem: CpuProblem, x: np.ndarray) -> np.ndarray | None:
        """Gain of one more quantum per job (who gets the quanta flooring left); None: by remainder."""
        return None

    # -- the shared path ---------------------------------------------------------------
    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        if not isinstance(snapshot, Snapshot):
            raise PolicyError(f"{self.name}: expected a Snapshot, got {type(snapshot).__name__}")
        if not isinstance(state, Mapping):
            raise PolicyError(f"{self.name}: state must be a mapping, got {type(state).__name__}")
        problem = cpu_problem(snapshot)
        if problem.n == 0:
            return snapshot.allocation({}, self.name), dict(state)
        stamp = [snapshot.time, snapshot.round]
        old = last_vector(snapshot, problem)
        if old is not None and state.get("decided") == stamp:
            # The same step again (a retry or a replayed snapshot): nothing new to act on.
            return to_allocation(snapshot, problem, old, self.name), dict(state)
        x, info = self.solve(problem, snapshot, dict(state))
        for _ in range(3):  # pin groups: re-solve with tighter bounds until they fit
            hi = pin_limits(problem, snapshot, x)
            if hi is None:
                break
            problem = replace(problem, hi=hi)
            x, info = self.solve(problem, snapshot, dict(state))
        x = np.clip(x, problem.lo, problem.hi)
        x = quantize(x, problem.lo, problem.hi, problem.capacity, self.quantum)
        gain = self.quantum_gain(problem, x)
        if gain is not None:
            x = quantize(x + 0.0, problem.lo, problem.hi, problem.capacity, self.quantum, gain)
        x = self.refine_quanta(problem, x)
        if self.work_conserving:
            x = spread(x, problem.hi, problem.weights, problem.capacity, self.quantum)
            for _ in range(3):  # spreading must not overfill a pin group either
                hi = pin_limits(problem, snapshot, x)
                if hi is None:
                    break
                problem = replace(problem, hi=hi)
                x = spread(np.minimum(x, hi), hi, problem.weights, problem.capacity, self.quantum)
        new_state = {**state, **info, "decided": stamp}
        if self.switching_cost > 0:
            score = self.score(problem, snapshot)
            if score is not None:
                x, record = hold_or_move(x, old, score, problem.capacity, self.switching_cost)
                new_state["stability"] = record
        return to_allocation(snapshot, problem, x, self.name), new_state


def to_allocation(snapshot: Snapshot, problem: CpuProblem, x: np.ndarray, name: str) -> Allocation:
    """Amounts: the solved kind from ``x``, every other kind at the job's minimum."""
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).all():
        raise PolicyError(
            f"{name}: non-finite amount for {problem.names[int(np.argmin(np.isfinite(x)))]}"
        )
    amounts: dict[str, ResourceVector] = {}
    kind = problem.kind
    if kind in RESOURCE_KINDS:
        # ResourceVector validates every field on construction (~10 us); 1,000 jobs per round
        # made that a sixth of a decision. The minimum is a valid vector and the amount is a
        # finite float, so a copy with one field replaced is valid without re-checking.
        # Rounded to 9 decimals in one numpy pass (round(v, 9) per job was a third of this).
        values = np.round(x, 9).tolist()
        if kind == "cpu":  # what every CpuPolicy divides: no per-field loop, no call between
            for job, v in zip(problem.jobs, values, strict=True):
                m = job.minimum
                amounts[job.name] = unchecked_vector(v, m.memory, m.gpu, m.pim_cores, m.mesh, m.custom)
        else:
            for job, v in zip(problem.jobs, values, strict=True):
                amounts[job.name] = _replaced(job.minimum, kind, v)
    else:
        for job, v in zip(problem.jobs, x.tolist(), strict=True):
            amounts[job.name] = job.minimum.with_amount(kind, round(v, 9))
    return snapshot.allocation(amounts, name)


def _replaced(vec: ResourceVector, kind: str, amount: float) -> ResourceVector:
    """``vec`` with the built-in ``kind`` set to ``amount`` (finite), without re-validation."""
    values = [amount if k == kind else getattr(vec, k) for k in RESOURCE_KINDS]
    return unchecked_vector(*values, custom=vec.custom)


def pin_limits(problem: CpuProblem, snapshot: Snapshot, x: np.ndarray) -> np.ndarray | None:
    """Tighter maximums when jobs pinned within the same node set exceed it; None when all fit."""
    groups = {frozenset(j.pins) for j in problem.jobs if j.pins}
    if not groups:
        return None
    node_cap = {n.node_id: n.capacity.get(problem.kind) for n in snapshot.nodes if n.schedulable}
    hi = problem.hi.copy()
    changed = False
    for group in sorted(groups, key=lambda g: (len(g), sorted(g))):
        members = np.array(
            [i for i, j in enumerate(problem.jobs) if j.pins and set(j.pins) <= group], dtype=int
        )
        cap = sum(node_cap.get(nid, 0.0) for nid in group)
        if x[members].sum() <= cap + 1e-9:
            continue
        if problem.lo[members].sum() > cap + 1e-9:
            from allocators.base import InfeasibleError

            raise InfeasibleError(
                f"jobs pinned to {sorted(group)} need {problem.lo[members].sum():.3g} "
                f"{problem.kind} at minimum but those nodes hold {cap:.3g}"
            )
        lim = waterfill(cap, problem.weights[members], problem.lo[members], x[members])
        # Whole quanta (never below the minimum), so the limit itself is a valid amount.
        lim = np.maximum(np.floor(lim / CPU_QUANTUM + 1e-9) * CPU_QUANTUM, problem.lo[members])
        hi[members] = np.minimum(hi[members], lim)
        changed = True
    return hi if changed else None


def due(state: PolicyState, snapshot: Snapshot, period: float) -> bool:
    """True when ``period`` seconds have passed since the policy last acted (or it never did)."""
    last = state.get("acted_at")
    if last is None or snapshot.time < float(last):  # never acted, or a clock reset (replay)
        return True
    # Strictly later, even with period 0: a repeated step is not a new measurement.
    return snapshot.time > float(last) and snapshot.time - float(last) >= period - 1e-9


def start_vector(problem: CpuProblem, snapshot: Snapshot) -> np.ndarray:
    """The CPU in force per job; jobs new to the allocation start at their weighted fair share."""
    fair = problem.fair_share()
    last = snapshot.last.amounts if snapshot.last is not None else {}
    x = np.array(
        [last[n].get(problem.kind) if n in last else fair[i] for i, n in enumerate(problem.names)],
        dtype=float,
    )
    return np.clip(x, problem.lo, problem.hi)


def fit(x: np.ndarray, problem: CpuProblem) -> np.ndarray:
    """Within bounds, and when the wishes exceed capacity, cut them back by weighted water-filling."""
    x = np.clip(x, problem.lo, problem.hi)
    if x.sum() <= problem.capacity + 1e-9:
        return x
    return waterfill(problem.capacity, problem.weights, problem.lo, x)


def signal(snapshot: Snapshot, job: str, key: str) -> float | None:
    v = snapshot.signals.get(job, {}).get(key)
    return None if v is None or not np.isfinite(v) else float(v)


def held(snapshot: Snapshot, problem: CpuProblem) -> np.ndarray | None:
    """The allocation in force when it still applies to this problem (same jobs, fits)."""
    return last_vector(snapshot, problem)
