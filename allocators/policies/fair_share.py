"""Proportional fair share by weight: the static baseline and the spine's default policy.

CPU is split in proportion to job weights by water-filling within each job's
[minimum, maximum], so capacity a job cannot use (its maximum, or the nodes it
is pinned to) goes to the others. It ignores performance models entirely.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.policies.engine import CpuPolicy
from allocators.problem import CpuProblem


class ProportionalFairShare(CpuPolicy):
    name = "fair_share"
    kind = "baseline"
    description = "proportional fair share by weight (water-filling within min/max)"
    source = "Cilantro's proportional-fair-share baseline"
    resources = ("cpu",)

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return problem.fair_share(), {}
