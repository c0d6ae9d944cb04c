"""Proportional fair share by weight: the static baseline and the spine's default policy.

Each divided resource kind is split in proportion to job weights by
water-filling within each job's [minimum, maximum], so capacity a job cannot
use (its maximum) goes to the others. It ignores performance models entirely.
"""

from __future__ import annotations

import numpy as np

from allocators.base import Policy, PolicyState, Snapshot, check_feasible
from allocators.waterfill import waterfill
from cluster_mgr.model import CPU_QUANTUM, ResourceVector


class ProportionalFairShare(Policy):
    name = "fair_share"
    resources = ("cpu",)

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple:
        check_feasible(snapshot)
        jobs = sorted(snapshot.jobs, key=lambda j: j.name)
        if not jobs:
            return snapshot.allocation({}, self.name), state
        cap = snapshot.capacity
        w = np.array([j.weight for j in jobs])
        amounts = {j.name: j.minimum.as_dict() for j in jobs}
        for kind in self.resources:
            lo = np.array([j.minimum.get(kind) for j in jobs])
            hi = np.array([j.bound_max(kind) for j in jobs])
            share = waterfill(cap.get(kind), w, lo, hi)
            if kind == "cpu":
                # Down to the quantum, never below the minimum, so the sum stays within capacity.
                share = np.maximum(np.floor(share / CPU_QUANTUM + 1e-9) * CPU_QUANTUM, lo)
            for j, x in zip(jobs, share, strict=True):
                amounts[j.name][kind] = float(x)
        return snapshot.allocation(
            {n: ResourceVector.from_dict(a) for n, a in amounts.items()}, self.name
        ), state
