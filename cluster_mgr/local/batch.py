"""Vectorized batch runner: many policies x many nodes in one emulator, one fast window at a time.

Every policy gets its own copy of the scenario's nodes (same offered load,
same noise draws), its own controller over its slice of rows, and the same
per-round global plan logic. The runner records what the metrics need: P99
per node per window, knobs in force, which windows enforced a change, and
reversals per knob.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cluster_mgr.local.controller import LocalController
from cluster_mgr.local.emulator import GraphEmulator, SurgeScenario
from cluster_mgr.local.knobs import Knobs, fit_budget
from cluster_mgr.local.planner import RoundPlan, RoundPlanner
from cluster_mgr.model import FAST_WINDOW_S
from cluster_mgr.workloads import GraphParams

#: A change against the previous one within this many decision intervals is a reversal.
REVERSAL_INTERVALS = 3


@dataclass(frozen=True)
class Trace:
    """One policy's run: arrays over windows (W) and its nodes (n)."""

    name: str
    p99_ms: np.ndarray  # (W, n)
    slo_ms: np.ndarray  # (n,)
    quota: np.ndarray  # (W, n, S) in force during each window
    frequency: np.ndarray  # (W, n, S)
    enforced: np.ndarray  # (W, n) bool: a change decided earlier took effect in this window
    reversals: int
    changes: int


class _ReversalCounter:
    def __init__(self, shape: tuple[int, ...], interval: int) -> None:
        self.last_dir = np.zeros(shape)
        self.last_w = np.full(shape, -(10**9))
        self.interval = interval
        self.reversals = 0
        self.changes = 0

    def record(self, w: int, old: np.ndarray, new: np.ndarray) -> None:
        d = np.sign(np.round(new - old, 6))
        moved = d != 0
        rev = (
            moved & (d == -self.last_dir) & (w - self.last_w <= REVERSAL_INTERVALS * self.interval)
        )
        self.reversals += int(rev.sum())
        self.changes += int(moved.sum())
        self.last_dir = np.where(moved, d, self.last_dir)
        self.last_w = np.where(moved, w, self.last_w)


def run_policies(
    graph: GraphParams,
    scenario: SurgeScenario,
    planner: RoundPlanner,
    controllers: Mapping[str, LocalController],
    slo_ms: np.ndarray,
    base_lam: np.ndarray,
) -> dict[str, Trace]:
    """Run every controller on its own copy of the scenario; ``base_lam`` (S,) seeds round 0."""
    names = list(controllers)
    n, k = scenario.n_nodes, len(names)
    emu = GraphEmulator(graph, scenario, slo_ms=np.resize(slo_ms, n), copies=k)
    big_planner = RoundPlanner(**{**planner.__dict__, "capacity": np.tile(planner.capacity, k)})
    rows = [slice(i * n, (i + 1) * n) for i in range(k)]
    plan: RoundPlan = big_planner.plan(0, np.tile(base_lam, (n * k, 1)))
    knobs = Knobs.initial(plan.cores)
    for i, name in enumerate(names):
        controllers[name].reset(plan.take(rows[i]), knobs.take(rows[i]))
    round_w = int(round(planner.round_s / FAST_WINDOW_S))
    n_w, s = scenario.n_windows, len(graph.services)
    p99 = np.zeros((n_w, n * k))
    quota = np.zeros((n_w, n * k, s))
    freq = np.zeros_like(quota)
    enforced = np.zeros((n_w, n * k), dtype=bool)
    counters = {
        name: _ReversalCounter((n, s, 2), round_w if name == "global_only" else 1) for name in names
    }
    lam_sum = np.zeros((n * k, s))
    prev = knobs
    for w in range(n_w):
        enforced[w] = (np.abs(knobs.quota - prev.quota).sum(axis=1)
                       + np.abs(knobs.frequency - prev.frequency).sum(axis=1)) > 1e-9  # fmt: skip
        quota[w], freq[w] = knobs.quota, knobs.frequency
        sig = emu.step(knobs)
        p99[w] = sig.p99_ms
        lam_sum += sig.arrival_rps
        now = (w + 1) * FAST_WINDOW_S  # decisions are made at the end of the window
        parts_q, parts_f, parts_c, parts_r, parts_p = [], [], [], [], []
        new_round = (w + 1) % round_w == 0
        if new_round:
            plan = big_planner.plan((w + 1) // round_w, lam_sum / round_w)
            lam_sum[:] = 0.0
        for i, name in enumerate(names):
            ctrl, r = controllers[name], rows[i]
            mine = knobs.take(r)
            if new_round:
                imposed = ctrl.on_round(plan.take(r))
                if imposed is not None:
                    mine = imposed
            dec = fit_budget(
                knobs.take(r), ctrl.decide(sig.take(r), mine, now), plan.budget.take(r)
            )
            counters[name].record(w, np.stack([knobs.quota[r], knobs.frequency[r]], -1),
                                  np.stack([dec.quota, dec.frequency], -1))  # fmt: skip
            parts_q.append(dec.quota)
            parts_f.append(dec.frequency)
            parts_c.append(dec.concurrency)
            parts_r.append(dec.rate_limit)
            parts_p.append(dec.pim_cores)
        prev = knobs
        knobs = Knobs(*(np.concatenate(x) for x in (parts_q, parts_f, parts_c, parts_r, parts_p)))
    return {
        name: Trace(
            name,
            p99[:, rows[i]],
            emu.slo_ms[rows[i]],
            quota[:, rows[i]],
            freq[:, rows[i]],
            enforced[:, rows[i]],
            counters[name].reversals,
            counters[name].changes,
        )  # fmt: skip
        for i, name in enumerate(names)
    }
