"""The per-round global layer in the surge experiments: budgets and targets per node.

Each round (30 s) it sizes every service from the load it measured over the
last round (it cannot see a surge that starts mid-round) with
``ServiceProfile.cores_for`` against the service's execution-time target, and
grants each node a budget: the planned cores times a surge reserve, capped by
what the node holds for the job. Alone (``GlobalOnly``) it is the
"global allocator alone" policy; under a LocalController it only sets the
budget and the targets the local layer tracks.

This is an explicit per-round planner, not ``cluster_mgr.control.GlobalAllocator``:
that class decides one Allocation per *job* from learned reward curves and
places replicas, while the fast layer needs per-*service* targets on each
node; wiring its per-job CPU into per-node budgets is the lead's integration
step (docs/local_control.md).
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
