"""Baselines that ignore performance: static equal share and dominant resource fairness.

Static equal share: every job the same CPU, within its [minimum, maximum]
(water-filling with equal weights, so a capped job's surplus is not wasted).
DRF (Ghodsi et al., NSDI '11): progressive filling on each job's per-replica
demand vector until some resource a job needs is exhausted, equalising
weighted dominant shares; continuous (fractional replicas), as in the paper's
analysis. A job's demand vector is its minimum per replica when it states one,
else ``replica_cpus`` CPUs. Deviation: the paper's cluster places whole tasks on
machines; here a vector that fits in aggregate but not on the nodes is shrunk in its own
proportions until it packs (``allocators.policies.fit``), and CPU freed so goes where it fits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import Policy, PolicyError, PolicyState, Snapshot, check_feasible
from allocators.policies.engine import CpuPolicy, pin_limits
from allocators.policies.fit import fit_to_nodes, regrow_cpu
from allocators.problem import CpuProblem, cpu_problem
from allocators.solvers.rounding import quantize
from cluster_mgr.model import CPU_QUANTUM, Allocation, ResourceVector


class StaticEqualShare(CpuPolicy):
    name = "static_equal"
    kind = "baseline"
    description = "the same CPU for every job, within its minimum and maximum"
    source = "static equal partitioning (the usual no-manager default)"

    def solve(
        self, problem: CpuProblem, snapshot: Snapshot, state: PolicyState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        from allocators.waterfill import waterfill

        return waterfill(problem.capacity, np.ones(problem.n), problem.lo, problem.hi), {}


class DominantResourceFairness(Policy):
    name = "drf"
    kind = "baseline"
    description = "dominant resource fairness: progressive filling of per-replica demand vectors"
    source = "Ghodsi et al., NSDI '11"
    resources = ("cpu", "memory", "gpu", "pim_cores", "mesh")

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        check_feasible(snapshot)
        jobs = sorted(snapshot.jobs, key=lambda j: j.name)
        if not jobs:
            return snapshot.allocation({}, self.name), dict(state)
        cap_rv = snapshot.capacity
        kinds = [k for k in self.resources if cap_rv.get(k) > 0]
        cap = np.array([cap_rv.get(k) for k in kinds])
        D = np.array([self._demand(j, kinds) for j in jobs])  # per replica
        lo = np.array([[j.minimum.get(k) for k in kinds] for j in jobs])
        hi = np.array([[j.bound_max(k) for k in kinds] for j in jobs])
        w = np.array([j.weight for j in jobs])
        dom = (D / cap).max(axis=1)  # dominant share of one replica
        if np.any(dom <= 0):
            raise PolicyError("drf: every job needs a non-zero demand vector")
        # Replicas a job may hold: its maximum bounds them, its minimum is granted anyway.
        with np.errstate(divide="ignore", invalid="ignore"):
            t_max = np.where(D > 0, hi / np.where(D > 0, D, 1), np.inf).min(axis=1)

        def fill(t_max: np.ndarray) -> np.ndarray:
            active = np.ones(len(jobs), dtype=bool)
            tasks = np.zeros(len(jobs))
            for _ in range(len(jobs) + 1):  # each pass freezes at least one job
                if not active.any():
                    break

                # Largest common dominant-share level s with tasks_j = s w_j / dom_j for active jobs.
                def use(s: float, act: np.ndarray = active, done: np.ndarray = tasks) -> np.ndarray:
                    t = np.where(act, np.minimum(s * w / dom, t_max), done)
                    return np.maximum(t[:, None] * D, lo).sum(axis=0)

                s_lo, s_hi = 0.0, float((t_max[active] * dom[active] / w[active]).max(initial=0.0))
                if not np.isfinite(s_hi):
                    s_hi = float((cap.sum() / dom.min()) * w.max()) + 1.0
                if np.all(use(s_hi) <= cap + 1e-9):
                    tasks = np.where(active, np.minimum(s_hi * w / dom, t_max), tasks)
                    break
                for _ in range(60):
                    mid = 0.5 * (s_lo + s_hi)
                    if np.all(use(mid) <= cap + 1e-9):
                        s_lo = mid
                    else:
                        s_hi = mid
                tasks = np.where(active, np.minimum(s_lo * w / dom, t_max), tasks)
                full = use(s_hi) > cap + 1e-9  # the resources that bind
                stuck = (D[:, full] > 0).any(axis=1) | (tasks >= t_max - 1e-12)
                if not (active & stuck).any():
                    break
                active &= ~stuck
            return tasks

        tasks = fill(t_max)
        if "cpu" in kinds and any(j.pins for j in jobs):
            # Jobs pinned to the same nodes cannot jointly exceed them: cap and refill.
            c = kinds.index("cpu")
            problem = cpu_problem(snapshot)
            for _ in range(3):
                limits = pin_limits(problem, snapshot, np.maximum(tasks * D[:, c], lo[:, c]))
                if limits is None:
                    break
                with np.errstate(divide="ignore", invalid="ignore"):
                    cap_t = np.where(
                        D[:, c] > 0, limits / np.where(D[:, c] > 0, D[:, c], 1), np.inf
                    )
                t_max = np.minimum(t_max, cap_t)
                tasks = fill(t_max)
        amounts = np.maximum(tasks[:, None] * D, lo)
        cpu = kinds.index("cpu") if "cpu" in kinds else None
        if cpu is not None:
            amounts[:, cpu] = quantize(
                amounts[:, cpu], lo[:, cpu], np.minimum(hi[:, cpu], cap[cpu]), cap[cpu], CPU_QUANTUM
            )
        if "pim_cores" in kinds:
            p = kinds.index("pim_cores")
            amounts[:, p] = np.maximum(np.floor(amounts[:, p] + 1e-9), np.ceil(lo[:, p] - 1e-9))
        # Tasks must land on nodes: shrink (whole quanta, same proportions) what does not pack.
        quant = np.array([CPU_QUANTUM if k in ("cpu", "memory") else 1.0 for k in kinds])
        amounts, shrunk = fit_to_nodes(
            snapshot, jobs, kinds, amounts, lo, quant, who=self.name, proportional=True
        )
        if shrunk and cpu is not None:  # CPU freed goes back where it still packs
            hi_cpu = np.minimum(hi[:, cpu], cap[cpu])
            if "cpu" in kinds and any(j.pins for j in jobs):
                limits = pin_limits(cpu_problem(snapshot), snapshot, amounts[:, cpu])
                hi_cpu = hi_cpu if limits is None else np.minimum(hi_cpu, limits)
            hi_cpu = np.maximum(hi_cpu, amounts[:, cpu])
            amounts = regrow_cpu(snapshot, jobs, kinds, amounts, hi_cpu, w, cap[cpu], cpu)
        out = {
            j.name: ResourceVector.from_dict(
                {**j.minimum.as_dict(), **dict(zip(kinds, map(float, row), strict=True))}
            )
            for j, row in zip(jobs, amounts, strict=True)
        }
        state_out = dict(state)
        if shrunk:
            state_out["packing"] = {"shrunk": sorted(jobs[i].name for i in shrunk)}
        return snapshot.allocation(out, self.name), state_out

    @staticmethod
    def _demand(job: Any, kinds: list[str]) -> list[float]:
        m = job.minimum
        if m.cpu > 0:
            per = m.scale(job.replica_cpus / m.cpu)
            return [per.get(k) for k in kinds]
        return [job.replica_cpus if k == "cpu" else 0.0 for k in kinds]
