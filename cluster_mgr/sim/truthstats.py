"""Metrics that need the ground truth: utility at the entitlement share, resource loss, max load.

Computed by the engine while it runs (it alone knows the truth) and stored in
the run's arrays; ``cluster_mgr.metrics_calc`` turns them into numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cluster_mgr.model import utility_from_reward
from cluster_mgr.sim.truth import GroundTruth

if TYPE_CHECKING:
    from cluster_mgr.sim.engine import _Apps

#: A job at or above this utility is saturated: more CPU would not raise it.
SATURATED = 0.99


class TruthStats:
    def __init__(self, truth: GroundTruth) -> None:
        self.truth = truth

    def _utility(self, reward: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for pos, k in enumerate(idx):
            spec = self.truth.jobs[k].spec
            out[pos] = utility_from_reward(reward[k], spec.reward_threshold, spec.utility.scaling)
        return out

    def fairness_and_loss(
        self, cpu: np.ndarray, load: np.ndarray, present: np.ndarray, capacity: float, apps: _Apps
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Per app: utility at the entitlement share and at the allocation in force; and resource loss.

        Entitlement (Cilantro's no-justified-complaints): w_j / sum(w) of the
        schedulable CPUs, among the jobs present. Resource loss: CPUs a job holds
        beyond the least that gives it the same utility, counted while another
        job is below saturation. Graph apps have no single-resource entitlement
        (nan) and are left out of the loss.
        """
        t = self.truth
        ja = np.asarray(apps.job_app, dtype=np.int64)
        fair = np.full(apps.n, np.nan)
        actual = np.full(apps.n, np.nan)
        r_now = t.reward(cpu, load)
        pres = present[ja]
        w = np.array([t.jobs[k].spec.weight for k in ja])
        if pres.any():
            ent = np.zeros(t.n)
            ent[ja] = np.where(pres, w / w[pres].sum() * capacity, 0.0)
            r_fair = t.reward(ent, load)
            fair[: len(ja)] = np.where(pres, self._utility(r_fair, ja), np.nan)
        u_now = self._utility(r_now, ja)
        actual[: len(ja)] = np.where(pres, u_now, np.nan)
        for g, idx in enumerate(t.graph_jobs):
            if present[idx].any():
                actual[len(ja) + g] = self._graph_utility(
                    g, cpu[idx], self._graph_load(g, load, idx)
                )
        loss = 0.0
        if pres.any() and len(ja) > 1:
            need = self._least_cpu_for(r_now, cpu, load, ja)
            excess = np.where(pres, np.maximum(cpu[ja] - need, 0.0), 0.0)
            unsat = pres & (u_now < SATURATED)
            others_unsat = unsat.sum() - unsat  # another job that would still gain
            loss = float(excess[others_unsat > 0].sum())
        return fair, actual, loss

    def _graph_load(self, g: int, load: np.ndarray, idx: np.ndarray) -> float:
        """The graph's entry load, recovered from its services' loads (they are proportional)."""
        per_req = self.truth.graphs[g].params.mix @ self.truth.graphs[g].params.visits
        k = int(np.argmax(per_req))
        return float(load[idx][k] / per_req[k]) if per_req[k] > 0 else 0.0

    def _graph_utility(self, g: int, cpu: np.ndarray, gload: float) -> float:
        graph = self.truth.graphs[g]
        law = self.truth.graph_law(g, cpu, gload)
        r = float(law.served[0] * law.cdf_target[0])
        return float(utility_from_reward(r, graph.slo.reward_threshold, graph.utility.scaling))

    def _least_cpu_for(
        self, reward: np.ndarray, cpu: np.ndarray, load: np.ndarray, ja: np.ndarray
    ) -> np.ndarray:
        """Per job app: the least CPU whose truth reward is within 1e-3 of the reward at ``cpu``."""
        lo = np.zeros(self.truth.n)
        hi = cpu.copy()
        goal = reward - 1e-3
        for _ in range(16):  # 2^-16 of the allocation: far below the CPU quantum
            mid = 0.5 * (lo + hi)
            ok = self.truth.reward(mid, load) >= goal
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return hi[ja]

    def max_load(self, apps: _Apps) -> np.ndarray:
        """Highest load each app sustains within its SLO alone on the whole cluster (req/s)."""
        t = self.truth
        cap = float(t.scenario.capacity().cpu)
        ja = np.asarray(apps.job_app, dtype=np.int64)
        out = np.full(apps.n, np.nan)
        if len(ja):
            thr = np.array([t.jobs[k].spec.reward_threshold for k in ja])
            lo, hi = np.zeros(t.n), np.full(t.n, 1e7)
            cpu = np.full(t.n, cap)
            for _ in range(60):
                mid = np.sqrt(np.maximum(lo, 1e-3) * hi)
                ok = np.zeros(t.n, dtype=bool)
                ok[ja] = t.reward(cpu, mid)[ja] >= thr - 1e-9
                lo = np.where(ok, mid, lo)
                hi = np.where(ok, hi, mid)
            out[: len(ja)] = lo[ja]
        for g, graph in enumerate(t.graphs):
            p = graph.params
            per_req = p.mix @ p.visits * p.service_ms
            share = (
                per_req / per_req.sum()
                if per_req.sum() > 0
                else np.full(len(per_req), 1 / len(per_req))
            )
            lo_g, hi_g = 1e-3, 1e7
            for _ in range(60):
                mid = float(np.sqrt(lo_g * hi_g))
                law = t.graph_law(g, share * cap, mid)
                if law.served[0] * law.cdf_target[0] >= graph.slo.reward_threshold:
                    lo_g = mid
                else:
                    hi_g = mid
            out[len(ja) + g] = lo_g
        return out
