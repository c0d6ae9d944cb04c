"""The round's plan as the fast layer sees it: per-node budgets and per-service targets.

``plan_for_shares`` turns what the global allocator placed (each service's CPU
share on each node) into a ``RoundPlan``: the node budget is the sum of the
shares (as a NodeAgent's budget is the plan's CPUs of its jobs on the node),
targets are SurgeGuard's (2x profiled execution time, 1.2x profiled
time-from-start). The sim backend builds one from every plan the
``GlobalAllocator`` puts in force.

``RoundPlanner`` sizes shares from a measured load with the profile's model
instead; it builds plans for the controllers' unit tests (it is not a global
allocator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster_mgr.local.knobs import NodeBudget, quantize_up
from cluster_mgr.local.profile import ServiceProfile
from cluster_mgr.model import DEFAULT_ROUND_S


@dataclass(frozen=True)
class RoundPlan:
    """What the global layer hands each node for one round (arrays (N, S) / (N,))."""

    round: int
    cores: np.ndarray
    exec_target_ms: np.ndarray
    upstream_target_ms: np.ndarray
    budget: NodeBudget

    def take(self, idx: slice) -> RoundPlan:
        return RoundPlan(self.round, self.cores[idx], self.exec_target_ms[idx],
                         self.upstream_target_ms[idx], self.budget.take(idx))  # fmt: skip


@dataclass(frozen=True)
class RoundPlanner:
    profile: ServiceProfile
    capacity: np.ndarray  # (N,) cores the node holds for the job (its placement group)
    round_s: float = DEFAULT_ROUND_S
    headroom: float = 1.15  # load margin over the measured round mean
    reserve: float = 3.0  # budget = reserve x planned cores (room for the fast layer)
    exec_factor: float = 2.0  # SurgeGuard's targets: 2x profiled exec, 1.2x time-from-start
    upstream_factor: float = 1.2
    freq_min: float = 0.5
    freq_max: float = 1.5

    def plan(self, round_: int, lam_rps: np.ndarray) -> RoundPlan:
        """Plan from the per-service arrival rates measured over the last round (N, S)."""
        p = self.profile
        target = np.broadcast_to(p.exec_p99_ms * self.exec_factor, lam_rps.shape)
        cores = p.cores_for(lam_rps * self.headroom, 1.0, target, hi=self.capacity[:, None])
        cores = quantize_up(cores)
        budget = np.minimum(self.capacity, self.reserve * cores.sum(axis=1))
        n = len(self.capacity)
        return RoundPlan(
            round=round_,
            cores=cores,
            exec_target_ms=np.array(target),
            upstream_target_ms=np.broadcast_to(
                p.upstream_ms * self.upstream_factor, lam_rps.shape
            ).copy(),  # fmt: skip
            budget=NodeBudget(
                budget, np.full(n, self.freq_min), np.full(n, self.freq_max), np.zeros(n)
            ),  # fmt: skip
        )


def plan_for_shares(
    round_: int,
    profile: ServiceProfile,
    shares: np.ndarray,
    *,
    exec_factor: float = 2.0,
    upstream_factor: float = 1.2,
    freq_min: float = 0.5,
    freq_max: float = 1.5,
) -> RoundPlan:
    """The plan for CPU ``shares`` (N, S) per node and service; budget = the node's sum."""
    shares = np.asarray(shares, dtype=float)
    n = shares.shape[0]
    return RoundPlan(
        round=round_,
        cores=shares.copy(),
        exec_target_ms=np.broadcast_to(profile.exec_p99_ms * exec_factor, shares.shape).copy(),
        upstream_target_ms=np.broadcast_to(profile.upstream_ms * upstream_factor,
                                           shares.shape).copy(),  # fmt: skip
        budget=NodeBudget(shares.sum(axis=1), np.full(n, freq_min), np.full(n, freq_max),
                          np.zeros(n)),  # fmt: skip
    )
