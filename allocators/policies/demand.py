"""Demand-estimation baselines: Ernest demands + max-min, and Quasar-style low-rank estimation.

Ernest (Venkataraman et al., NSDI '16) is a point model (NNLS fit, no
confidence): demands are the smallest allocation whose *mean* prediction meets
the SLO, then weighted max-min water-filling, as Cilantro ran it.

Quasar (Delimitrou & Kozyrakis, ASPLOS '14): collaborative filtering over a
jobs x resource-level matrix of measured performance. Each round adds the
measured reward of every job at its current allocation per unit load
(signals ``reward``, ``load``) to a bounded history in the state, completes
the matrix by rank-2 soft-impute (SVD), takes as demand the smallest level
whose predicted reward meets the SLO, and grants demands by weighted max-min.
Jobs with no measurement yet get their fair share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import PolicyState, Snapshot
from allocators.policies.engine import CpuPolicy, held, signal
from allocators.policies.fairness import NoJustifiedComplaints
from allocators.problem import CpuProblem, Side
from allocators.waterfill import waterfill

#: Resource levels Quasar profiles at, in CPUs per unit of load (log-spaced).
LEVELS = np.geomspace(1e-3, 10.0, 16)


class ErnestMaxMin(NoJustifiedComplaints):
    name = "ernest_maxmin"
    kind = "baseline"
    description = "Ernest point-model demands (mean, no confidence) + weighted max-min"
    source = "Venkataraman et al., Ernest, NSDI '16; as a Cilantro baseline"
    side: Side = "mean"

    def __init__(self) -> None:
        super().__init__(switching_cost=0.0)


def soft_impute(M: np.ndarray, mask: np.ndarray, rank: int = 2, iters: int = 100) -> np.ndarray:
    """Fill the unobserved cells of M with a rank-``rank`` SVD fit to the observed ones."""
    fill = np.where(mask, M, np.nanmean(np.where(mask, M, np.nan)) if mask.any() else 0.5)
    for _ in range(iters):
        U, s, Vt = np.linalg.svd(fill, full_matrices=False)
        low = (U[:, :rank] * s[:rank]) @ Vt[:rank]
        new = np.where(mask, M, low)
        if np.abs(new - fill).max() < 1e-6:
            fill = new
            break
        fill = new
    return np.clip(fill, 0.0, 1.0)


class Quasar(CpuPolicy):
    name = "quasar"
    kind = "baseline"
    description = "Quasar-style demand estimation: low-rank completion of measured performance"
    source = "Delimitrou & Kozyrakis, Quasar, ASPLOS '14"

    def __init__(self, rank: int = 2, history: int = 64) -> None:
        super().__init__(0.0)
        if rank < 1 or history < 1:
            raise ValueError("rank and history must be >= 1")
        self.rank, self.history = rank, history

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        hist = {n: list(v) for n, v in state.get("observations", {}).items() if n in problem.names}
        x_now = held(snapshot, problem)
        if x_now is not None:
            for i, n in enumerate(problem.names):
                r = signal(snapshot, n, "reward")
                if r is not None:
                    per_load = x_now[i] / max(problem.loads[i], 1e-9)
                    hist[n] = (hist.get(n, []) + [[per_load, r]])[-self.history :]
        M = np.zeros((problem.n, len(LEVELS)))
        mask = np.zeros_like(M, dtype=bool)
        for i, n in enumerate(problem.names):
            for per_load, r in hist.get(n, []):
                g = int(np.argmin(np.abs(np.log(LEVELS) - np.log(max(per_load, 1e-6)))))
                M[i, g] = r if not mask[i, g] else 0.5 * (M[i, g] + r)
                mask[i, g] = True
        fair = problem.fair_share()
        known = mask.any(axis=1)
        want = fair.copy()
        if known.any():
            P = soft_impute(M, mask, self.rank)
            P = np.maximum.accumulate(P, axis=1)  # more resources never hurt
            for i in np.flatnonzero(known):
                ok = np.flatnonzero(P[i] >= problem.jobs[i].reward_threshold)
                level = LEVELS[ok[0]] if ok.size else LEVELS[-1]
                want[i] = level * problem.loads[i]
        want = np.clip(want, problem.lo, problem.hi)
        x = waterfill(min(problem.capacity, float(want.sum())), problem.weights, problem.lo, want)
        return x, {"observations": hist}
