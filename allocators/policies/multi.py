"""Ours: multi-resource welfare (cpu, memory, pim_cores, mesh at once) on upper bounds.

Models of multi-resource jobs are queried with allocations of shape (m, d),
columns in ``kinds`` order (one-dimensional models such as RewardCurve read
the first column, cpu). Solver: batched greedy on marginal welfare per unit
of normalised resource (a step of kind k costs step / capacity_k): each
iteration every job proposes its best single-kind step, the best quarter of
proposals that still fit are applied, and steps halve when nothing gains,
down to each kind's quantum (0.1 CPU, whole PIM cores). Greedy on a
separable objective with a linear-knapsack cost per kind; not exact, so the
docs call it a search. CPU no job gains from is spread by weight; other kinds
stay idle unless a job gains from them. Hysteresis as the CPU policies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allocators.base import Policy, PolicyError, PolicyState, Snapshot, check_feasible
from allocators.policies.engine import pin_limits
from allocators.policies.fit import as_allocation, fit_to_nodes, packing_failure, regrow_cpu
from allocators.problem import SIDE_INDEX, cpu_problem, job_utility_fn
from allocators.solvers.rounding import spread
from cluster_mgr.model import CPU_QUANTUM, Allocation, JobSpec

QUANTA = {"cpu": CPU_QUANTUM, "pim_cores": 1.0, "memory": 0.1, "mesh": 1.0, "gpu": 1.0}


class MultiResource(Policy):
    name = "multi_resource"
    kind = "ours"
    description = "welfare over cpu, memory, pim_cores and mesh at once (batched marginal greedy)"
    source = "ours; multi-resource generalisation of Cilantro's utilitarian policy"
    resources = ("cpu", "memory", "pim_cores", "mesh")

    def __init__(
        self,
        kinds: tuple[str, ...] = ("cpu", "memory", "pim_cores", "mesh"),
        switching_cost: float = 0.02,
        max_iters: int = 48,
    ) -> None:
        if "cpu" not in kinds or kinds[0] != "cpu":
            raise ValueError("kinds must start with 'cpu'")
        if switching_cost < 0 or max_iters < 1:
            raise ValueError("switching_cost >= 0 and max_iters >= 1")
        self.kinds = tuple(kinds)
        self.switching_cost, self.max_iters = switching_cost, max_iters

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        if not isinstance(state, dict):
            raise PolicyError(f"{self.name}: state must be a dict")
        check_feasible(snapshot)
        jobs = sorted(snapshot.jobs, key=lambda j: j.name)
        if not jobs:
            return snapshot.allocation({}, self.name), dict(state)
        cap_rv = snapshot.capacity
        kinds = [k for k in self.kinds if cap_rv.get(k) > 0]
        cap = np.array([cap_rv.get(k) for k in kinds])
        lo = np.array([[j.minimum.get(k) for k in kinds] for j in jobs])
        hi = np.array(
            [[min(j.bound_max(k), c) for k, c in zip(kinds, cap, strict=True)] for j in jobs]
        )
        # Pinned jobs reach only their nodes' capacity (else packing fails).
        usable = [nd for nd in snapshot.nodes if nd.schedulable]
        for i, j in enumerate(jobs):
            if j.pins:
                reach = [
                    sum(nd.capacity.get(k) for nd in usable if nd.node_id in j.pins) for k in kinds
                ]
                hi[i] = np.minimum(hi[i], reach)
        hi = np.maximum(hi, lo)
        w = np.array([j.weight for j in jobs])
        quant = np.array([QUANTA.get(k, CPU_QUANTUM) for k in kinds])
        fns = [self._utility(snapshot, j, kinds) for j in jobs]

        x = lo.copy()
        left = cap - x.sum(axis=0)
        step = np.maximum(cap / (4.0 * len(jobs)), quant)
        step = np.where(quant >= 1.0, np.maximum(np.round(step), 1.0), step)
        n, d = x.shape
        eye = np.eye(d)
        for _ in range(self.max_iters):
            gains = np.full((n, d), -np.inf)
            for i in range(n):
                trial = x[i] + eye * np.minimum(step, hi[i] - x[i])[None, :]
                u = fns[i](np.vstack([x[i][None, :], trial]))
                room = np.minimum(step, hi[i] - x[i])
                with np.errstate(divide="ignore", invalid="ignore"):
                    g = w[i] * (u[1:] - u[0]) / (room / cap)
                gains[i] = np.where(room > 1e-12, g, -np.inf)
            best_k = np.argmax(gains, axis=1)
            best_g = gains[np.arange(n), best_k]
            order = [i for i in np.argsort(-best_g, kind="stable") if best_g[i] > 1e-12]
            applied = 0
            for i in order[: max(1, n // 4)]:
                k = best_k[i]
                amt = min(step[k], hi[i, k] - x[i, k], left[k])
                if quant[k] >= 1.0:
                    amt = np.floor(amt + 1e-9)
                if amt <= 1e-12:
                    continue
                x[i, k] += amt
                left[k] -= amt
                applied += 1
            if applied == 0:
                if np.all(step <= quant + 1e-12):
                    break
                step = np.maximum(step / 2.0, quant)
                step = np.where(quant >= 1.0, np.maximum(np.round(step), 1.0), step)
        # Quanta and capacity no one gains from: cpu by weight, the rest stays idle.
        c = 0
        x[:, c] = np.maximum(np.floor(x[:, c] / quant[c] + 1e-9) * quant[c], lo[:, c])
        problem = cpu_problem(snapshot)
        limits = pin_limits(problem, snapshot, x[:, c])  # jobs pinned together share their nodes
        hi_cpu = hi[:, c] if limits is None else np.minimum(hi[:, c], limits)
        x[:, c] = np.minimum(x[:, c], np.floor(hi_cpu / quant[c] + 1e-9) * quant[c])
        x[:, c] = np.maximum(x[:, c], lo[:, c])
        x[:, c] = spread(x[:, c], hi_cpu, w, cap[c], quant[c])
        for _ in range(3):  # spreading must not overfill a pin group either
            limits = pin_limits(problem, snapshot, x[:, c])
            if limits is None:
                break
            hi_cpu = np.minimum(hi_cpu, limits)
            x[:, c] = spread(np.minimum(x[:, c], hi_cpu), hi_cpu, w, cap[c], quant[c])
        for k in range(1, d):
            if quant[k] >= 1.0:
                x[:, k] = np.maximum(np.floor(x[:, k] + 1e-9), np.ceil(lo[:, k] - 1e-9))
        # Packing-aware: what fits in aggregate may not pack (allocators.policies.fit).
        x, shrunk = fit_to_nodes(snapshot, jobs, kinds, x, lo, quant, who=self.name)
        if shrunk:  # CPU the shrinking freed goes back where it still packs (work conservation)
            x = regrow_cpu(snapshot, jobs, kinds, x, np.maximum(hi_cpu, x[:, c]), w, cap[c])
        info: dict[str, Any] = {}
        if shrunk:
            info["packing"] = {"shrunk": sorted(jobs[i].name for i in shrunk)}
        old = self._last(snapshot, jobs, kinds, lo, hi, cap)
        if old is not None and self.switching_cost > 0:

            def welfare(m: np.ndarray) -> float:
                return float(sum(w[i] * fns[i](m[i][None, :])[0] for i in range(n)) / w.sum())

            moved = float((np.abs(x - old) / cap).sum() / 2.0)
            gain = welfare(x) - welfare(old)
            if moved > 1e-12 and gain <= self.switching_cost * moved / d:
                x = old
            info["stability"] = {"moved": bool(x is not old), "gain": gain}
        out = dict(as_allocation(jobs, kinds, x).amounts)
        return snapshot.allocation(out, self.name), {**state, **info}

    @staticmethod
    def _utility(snapshot: Snapshot, job: JobSpec, kinds: list[str]) -> Any:
        model = snapshot.models.get(job.name)
        fn = job_utility_fn(job)
        load = float(snapshot.loads.get(job.name, 1.0))
        if model is None:
            # No model: a neutral prior, linear in CPU up to an equal share of the capacity.
            share = snapshot.capacity.cpu / max(len(snapshot.jobs), 1)
            return lambda a: np.clip(a[:, 0] / max(share, 1e-9), 0.0, 1.0)

        # A model that declares its input width (learners' ``dim``: 1 for CPU-only learners)
        # reads that many leading columns (cpu first); others get every kind.
        dim = getattr(model, "dim", None)
        cols = int(dim) if isinstance(dim, int) and 0 < dim < len(kinds) else len(kinds)

        def u(a: np.ndarray) -> np.ndarray:
            reward = np.asarray(model.bounds(a[:, :cols], load)[SIDE_INDEX["upper"]], dtype=float)
            return fn(reward, a[:, 0])

        return u

    @staticmethod
    def _last(
        snapshot: Snapshot,
        jobs: list[JobSpec],
        kinds: list[str],
        lo: np.ndarray,
        hi: np.ndarray,
        cap: np.ndarray,
    ) -> np.ndarray | None:
        last = snapshot.last
        if last is None or set(last.amounts) != {j.name for j in jobs}:
            return None
        old = np.array([[last.get(j.name).get(k) for k in kinds] for j in jobs])
        if np.any(old < lo - 1e-9) or np.any(old > hi + 1e-9) or np.any(old.sum(0) > cap + 1e-9):
            return None
        if packing_failure(snapshot, jobs, kinds, old) is not None:  # nodes changed under it
            return None
        return old
