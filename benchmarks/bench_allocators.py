"""Allocator benchmark: decision time, welfare against oracles, ours against the evolutionary search.

Snapshots carry ground-truth Cilantro curves (cluster_mgr.curves.RewardCurve,
the four families with their published coefficients); policies see them
through BandModel, the truth's mean with per-job confidence offsets (what a
learner in mid-run offers). Welfare is always scored on the truth.

- decision_ms[policy][n]: decide + pack, n jobs on n nodes (best of a few runs).
- pack_ms["jobs x nodes"]: placement at scale (1,000 jobs on 1,000 and 10,000 nodes of
  16 CPUs, 90 % full): pack from nothing, check_plan, and one controller round
  (place.make_plan: pack with the previous plan kept first, then check_plan), CPU ms.
- welfare_vs_oracle[policy]: welfare on the truth after a 40-step closed loop
  (feedback baselines need steps to converge; signals are synthesised from the
  truth: P99 = target * demand/alloc, utilisation = demand/alloc, queue of
  2 per replica at demand), over the oracle of the same objective. Ours are
  scored on their own objective (utilitarian, Nash geometric mean, egalitarian
  minimum, the non-separable "balanced"); baselines on utilitarian welfare.
- speedup_vs_evo / welfare_ratio_vs_evo: our utilitarian price solver against
  Cilantro's evolutionary search at its full 4,000-evaluation budget (CPU ms of each,
  decide + pack, run alternately 5 times, medians), both on
  the same bounds through the same bound-query code (the search queries the
  models at every generation's candidate allocations); per job count and for the
  non-separable objective (our local search against the same search).
  welfare_ratio_vs_evo scores both on the truth; welfare_ratio_vs_evo_on_bound
  on the upper-bound objective both optimise (the solvers' own comparison).
- oracle_vs_exact_dp: our solver on the truth against an independent dynamic
  programme (capacity in 2,000 units), for the separable objectives.
- welfare_vs_time_evo: [ms, welfare] as the evolutionary search runs (n = 100).
- other_family: the same comparison on another snapshot family (OTHER_MIX: other
  coefficients and biases, no linear jobs, 300 jobs, capacity 0.35 x SLO demand), with
  the oracle's welfare over the search's.

Run: .venv/bin/python benchmarks/bench_allocators.py [--quick] [--pack-only]. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np

from allocators.base import Policy, Snapshot
from allocators.objectives import BUILTIN_OBJECTIVES
from allocators.packing import pack
from allocators.problem import GridBuilder, cpu_problem
from allocators.registry import get_policy
from allocators.solvers.evolutionary import evolve
from allocators.testing import BandModel
from cluster_mgr.curves import CILANTRO_FAMILIES, RewardCurve
from cluster_mgr.model import SLO, Allocation, JobSpec, NodeInfo, ResourceVector

OURS = ["utilitarian", "nash", "egalitarian", "njc", "slo_autoscale", "constrained", "balanced"]
BASELINES = [
    "fair_share",
    "static_equal",
    "drf",
    "cilantro",
    "evo_observed",
    "greedy_egalitarian",
    "miad",
    "pid",
    "hpa",
    "ray_serve",
    "parties",
    "caladan",
    "ernest_maxmin",
    "quasar",
]
OBJECTIVE_OF = {"nash": "nash", "egalitarian": "egalitarian", "balanced": "balanced"}
ORACLE_OF = {
    "utilitarian": ("oracle_utilitarian", {}),
    "nash": ("oracle_nash", {}),
    "egalitarian": ("oracle_egalitarian", {}),
    "balanced": ("oracle_welfare", {"objective": "balanced"}),
}
STEP_S = {"parties": 0.1, "pid": 1.0, "caladan": 1.0}
TARGET_MS = 50.0


def make_policy(name: str) -> Policy:
    if name == "balanced":
        return get_policy("welfare", objective="balanced")
    return get_policy(name)


#: The other snapshot family (``other_family`` in the JSON): Cilantro's alternative
#: coefficients (1 - 1/(1+x) at 919.67, logistic with bias 4.9 at 1761.53) beside tanh,
#: no linear jobs, 300 jobs, tighter capacity (0.35 x the SLO demand).
OTHER_MIX: tuple[tuple[str, float, float | None], ...] = (
    ("inverse", 919.67, None),
    ("logistic", 1761.53, 4.9),
    ("tanh", 750.42, None),
)


def scenario(
    n: int,
    seed: int,
    contention: float = 0.5,
    mix: tuple[tuple[str, float, float | None], ...] | None = None,
) -> tuple[Snapshot, dict[str, RewardCurve]]:
    """n jobs on n nodes; capacity = ``contention`` x the CPUs every SLO would need on the truth.
    ``mix``: (family, coefficient, bias) cycled over the jobs (default: the four families at
    their default coefficients)."""
    rng = np.random.default_rng(seed)
    fams = mix or tuple((f, c, None) for f, c in CILANTRO_FAMILIES.items())
    jobs, truth, models, loads = [], {}, {}, {}
    demand = 0.0
    for i in range(n):
        fam, coeff, bias = fams[i % len(fams)]
        name = f"job-{i:04d}"
        load = float(rng.uniform(0.5, 2.0))
        cpu_per_load = float(rng.uniform(0.5, 3.0))  # CPUs per unit load to reach x = 1
        curve = RewardCurve(fam, coeff=coeff, bias=bias, scale=coeff * cpu_per_load)
        thr = float(rng.choice([0.8, 0.9]))
        job = JobSpec(
            name,
            slo=SLO(target=TARGET_MS, threshold=thr),
            weight=float(rng.integers(1, 4)),
            priority=int(rng.integers(0, 2)),
        )
        jobs.append(job)
        truth[name] = curve
        band = float(rng.uniform(0.02, 0.1))
        models[name] = BandModel(curve, band, band)
        loads[name] = load
        demand += truth_demand(curve, thr, load)
    per_node = max(1.0, round(contention * demand / n, 1))
    nodes = tuple(
        NodeInfo(f"node-{k:04d}", ResourceVector(cpu=per_node, memory=64)) for k in range(n)
    )
    return Snapshot(0.0, 0, nodes, tuple(jobs), models, loads, seed=seed), truth


def truth_demand(curve: RewardCurve, thr: float, load: float) -> float:
    grid = np.geomspace(1e-3, 1e3, 4000)
    ok = curve.mean(grid, load) >= thr
    return float(grid[np.argmax(ok)]) if ok.any() else 1e3


def utilities(snap: Snapshot, truth: dict[str, RewardCurve], alloc: Allocation) -> np.ndarray:
    out = []
    for j in sorted(snap.jobs, key=lambda j: j.name):
        r = truth[j.name].mean(np.array([alloc.get(j.name).cpu]), snap.loads[j.name])[0]
        out.append(min(1.0, r / j.reward_threshold))
    return np.array(out)


def welfare(
    objective: str, snap: Snapshot, truth: dict[str, RewardCurve], alloc: Allocation
) -> float:
    u = utilities(snap, truth, alloc)
    w = np.array([j.weight for j in sorted(snap.jobs, key=lambda j: j.name)])
    x = np.array([alloc.get(j.name).cpu for j in sorted(snap.jobs, key=lambda j: j.name)])
    if objective == "nash":  # weighted geometric mean, so ratios are ratios of utilities
        return float(np.exp((np.log(1e-3 + u) * w).sum() / w.sum()))
    return float(BUILTIN_OBJECTIVES[objective].welfare(u[None, :], x[None, :], w)[0])


def signals(
    snap: Snapshot, truth: dict[str, RewardCurve], alloc: Allocation
) -> dict[str, dict[str, float]]:
    out = {}
    for j in snap.jobs:
        x = max(alloc.get(j.name).cpu, 1e-3)
        load = snap.loads[j.name]
        d = truth_demand(truth[j.name], j.reward_threshold, load)
        ratio = d / x
        replicas = max(1.0, x / j.replica_cpus)
        out[j.name] = {
            "reward": float(truth[j.name].mean(np.array([x]), load)[0]),
            "p99_ms": TARGET_MS * ratio,
            "utilization": float(min(1.0, ratio)),
            "queue_len": 2.0 * replicas * ratio,
            "queue_delay_ms": max(0.0, ratio - 1.0) * 10.0,
            "load": load,
        }
    return out


def closed_loop(
    name: str, snap: Snapshot, truth: dict[str, RewardCurve], steps: int = 40
) -> Allocation:
    policy = make_policy(name)
    state = policy.initial_state()
    alloc = get_policy("fair_share").decide(snap, {})[0]
    dt = STEP_S.get(name, 30.0)
    for k in range(steps):
        s = replace(snap, time=k * dt, round=k, last=alloc, signals=signals(snap, truth, alloc))
        alloc, state = policy.decide(s, state)
        state = json.loads(json.dumps(state))  # what the controller logs and replays
    return alloc


def oracle_alloc(objective: str, snap: Snapshot, truth: dict[str, RewardCurve]) -> Allocation:
    name, opts = ORACLE_OF[objective]
    exact = replace(snap, models=truth)
    alloc = get_policy(name, **opts).decide(exact, {})[0]
    if objective == "balanced":  # no exact method: take the best of two searches on the truth
        evo = evo_on(exact, "balanced", budget=20_000, side="mean")[0]
        if welfare("balanced", snap, truth, evo) > welfare("balanced", snap, truth, alloc):
            alloc = evo
    return alloc


def evo_on(
    snap: Snapshot,
    objective: str,
    budget: int = 4000,
    side: str = "upper",
    trace: list | None = None,
) -> tuple[Allocation, float]:
    """Cilantro's evolutionary solver, each generation scored by one query of the models at
    its candidates' allocations (the bound-query code ours uses); (allocation, ms)."""
    t0 = time.process_time()
    obj = BUILTIN_OBJECTIVES[objective]
    problem = cpu_problem(snap)
    builder = GridBuilder(problem, snap.models, side, obj.values if obj.separable else None)
    w = problem.weights
    if obj.separable:

        def evaluate(xb: np.ndarray) -> np.ndarray:
            return builder.welfare_at(xb) @ w / w.sum()
    else:

        def evaluate(xb: np.ndarray) -> np.ndarray:
            return obj.welfare(builder.welfare_at(xb), xb, w)

    def progress(evals: int, best: float) -> None:
        if trace is not None:
            trace.append([round((time.process_time() - t0) * 1000, 2), round(best, 5)])

    x = evolve(
        evaluate,
        problem.lo,
        problem.hi,
        w,
        problem.capacity,
        np.random.default_rng(snap.seed),
        budget,
        40,
        on_generation=progress,
    )
    from allocators.solvers.rounding import quantize

    x = quantize(x, problem.lo, problem.hi, problem.capacity, 0.1)
    amounts = {n: ResourceVector(cpu=float(v)) for n, v in zip(problem.names, x, strict=True)}
    alloc = snap.allocation(amounts, "evolutionary")
    pack(alloc, snap.jobs, snap.nodes)
    return alloc, (time.process_time() - t0) * 1000


def bound_welfare(snap: Snapshot, alloc: Allocation) -> float:
    """Utilitarian welfare on the upper bounds, read from the models at the exact allocation
    (the grid's interpolation would favour whichever solver lands on grid points)."""
    problem = cpu_problem(snap)
    builder = GridBuilder(problem, snap.models, "upper")
    w = problem.weights
    x = np.array([alloc.get(name).cpu for name in problem.names])
    return float(builder.exact(x) @ w / w.sum())


def timed(name: str, snap: Snapshot, repeats: int) -> float:
    """Best-of-``repeats`` CPU time (ms) of decide + pack: process time, because the machine is
    shared and wall time would measure the neighbours."""
    best = math.inf
    for _ in range(repeats):
        policy = make_policy(name)
        t0 = time.process_time()
        alloc, _ = policy.decide(snap, policy.initial_state())
        pack(alloc, snap.jobs, snap.nodes)
        best = min(best, (time.process_time() - t0) * 1000)
    return best


def side_by_side(
    name: str, snap: Snapshot, objective: str, repeats: int = 5
) -> tuple[Allocation, Allocation, float, float]:
    """(ours, evolutionary, ours ms, evolutionary ms): CPU ms of each, run alternately
    ``repeats`` times, medians (the machine is shared: both see the same neighbours)."""
    ours_ms, evo_ms = [], []
    ours = evo = None
    for _ in range(repeats):
        policy = make_policy(name)
        t0 = time.process_time()
        ours, _ = policy.decide(snap, policy.initial_state())
        pack(ours, snap.jobs, snap.nodes)
        ours_ms.append((time.process_time() - t0) * 1000)
        evo, ms = evo_on(snap, objective)
        evo_ms.append(ms)
    assert ours is not None and evo is not None
    return ours, evo, float(np.median(ours_ms)), float(np.median(evo_ms))


def pack_scale(n_jobs: int, n_nodes: int, repeats: int = 3) -> dict[str, float]:
    """CPU ms (best of ``repeats``) of placing ``n_jobs`` on ``n_nodes`` nodes of 16 CPUs at 90 %
    load: ``pack`` from nothing, ``check_plan`` of that plan, and the round-to-round case the
    controller runs (``place.make_plan``: pack with the previous plan kept first, then
    ``check_plan``) after every job's amount moved by up to 10 %; ``moves`` of that round."""
    from cluster_mgr.place import check_plan, make_plan

    rng = np.random.default_rng(5)
    nodes = [NodeInfo(f"n{k:05d}", ResourceVector(cpu=16.0, memory=64.0)) for k in range(n_nodes)]
    jobs = [
        JobSpec(f"j{i:04d}", replica_cpus=float(rng.choice([0.5, 1.0, 2.0]))) for i in range(n_jobs)
    ]
    share = rng.uniform(0.5, 2.0, n_jobs)
    cap = 16.0 * n_nodes * 0.9
    first = np.floor(share / share.sum() * cap * 10) / 10
    second = first * rng.uniform(0.9, 1.1, n_jobs)
    second = np.floor(second * min(1.0, cap / second.sum()) * 10) / 10

    def alloc(x: np.ndarray) -> Allocation:
        return Allocation(
            {j.name: ResourceVector(cpu=float(v)) for j, v in zip(jobs, x, strict=True)}
        )

    a1, a2 = alloc(first), alloc(second)

    def best(fn: Any) -> tuple[float, Any]:
        ms, out = math.inf, None
        for _ in range(repeats):
            t0 = time.process_time()
            out = fn()
            ms = min(ms, (time.process_time() - t0) * 1000)
        return ms, out

    cold_ms, cold = best(lambda: pack(a1, jobs, nodes))
    plan = make_plan(a1, jobs, nodes, None, 1, 1).plan
    check_ms, _ = best(lambda: check_plan(plan, nodes))
    round_ms, res = best(lambda: make_plan(a2, jobs, nodes, plan, 2, 2))
    return {
        "pack_cold_ms": round(cold_ms, 1),
        "check_plan_ms": round(check_ms, 1),
        "make_plan_round_ms": round(round_ms, 1),
        "moves": res.moves,
        "shares": len(res.plan.shares),
    }


def exact_dp(
    objective: str, snap: Snapshot, truth: dict[str, RewardCurve], units: int = 2000
) -> Allocation:
    """Independent exact optimum of a separable objective on a uniform grid (dynamic programming)."""
    obj = BUILTIN_OBJECTIVES[objective]
    jobs = sorted(snap.jobs, key=lambda j: j.name)
    cap = snap.capacity.cpu
    q = cap / units
    grid = np.arange(units + 1) * q
    w = np.array([j.weight for j in jobs])
    best = np.zeros(units + 1)
    choice = []
    idx = np.arange(units + 1)
    shift = idx[:, None] - idx[None, :]  # [c, k] -> c - k
    for j, wj in zip(jobs, w, strict=True):
        u = np.minimum(truth[j.name].mean(grid, snap.loads[j.name]) / j.reward_threshold, 1.0)
        v = wj * obj.values(u, grid)
        cand = np.where(shift >= 0, best[np.clip(shift, 0, None)] + v[None, :], -np.inf)
        k = np.argmax(cand, axis=1)
        choice.append(k)
        best = cand[idx, k]
    c = int(np.argmax(best))
    amounts = {}
    for j, k in zip(reversed(jobs), reversed(choice), strict=True):
        amounts[j.name] = ResourceVector(cpu=float(grid[k[c]]))
        c -= int(k[c])
    return snap.allocation(amounts, "exact_dp")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer seeds and repeats")
    ap.add_argument("--pack-only", action="store_true", help="only the packing figures (pack_ms)")
    args = ap.parse_args()
    seeds = [1] if args.quick else [1, 2, 3]
    out: dict[str, Any] = {"decision_ms": {}, "welfare_vs_oracle": {}}
    out["pack_ms"] = {f"{j}x{n}": pack_scale(j, n) for j, n in ((1000, 1000), (1000, 10_000))}
    if args.pack_only:
        print(json.dumps(out["pack_ms"]))
        return

    sizes = (10, 100, 1000)
    snaps = {n: scenario(n, seed=7)[0] for n in sizes}
    for name in OURS + BASELINES + ["oracle_utilitarian"]:
        out["decision_ms"][name] = {
            str(n): round(timed(name, snaps[n], 1 if n == 1000 or args.quick else 3), 2)
            for n in sizes
        }

    ratios: dict[str, list[float]] = {}
    for seed in seeds:
        snap, truth = scenario(100, seed)
        oracle = {o: welfare(o, snap, truth, oracle_alloc(o, snap, truth)) for o in ORACLE_OF}
        for name in OURS + BASELINES:
            obj = OBJECTIVE_OF.get(name, "utilitarian")
            got = welfare(obj, snap, truth, closed_loop(name, snap, truth))
            ratios.setdefault(name, []).append(got / oracle[obj])
    out["welfare_vs_oracle"] = {k: round(float(np.mean(v)), 4) for k, v in ratios.items()}
    # The oracles' own optimality: our solver on the truth against an independent exact DP.
    exact: dict[str, list[float]] = {}
    for seed in seeds:
        snap, truth = scenario(40, seed)
        for o in ("utilitarian", "nash"):
            ours = welfare(o, snap, truth, oracle_alloc(o, snap, truth))
            exact.setdefault(o, []).append(ours / welfare(o, snap, truth, exact_dp(o, snap, truth)))
    out["oracle_vs_exact_dp"] = {k: round(float(np.mean(v)), 4) for k, v in exact.items()}
    out["welfare_objective"] = {n: OBJECTIVE_OF.get(n, "utilitarian") for n in OURS + BASELINES}

    speed, ratio, ratio_bound = {}, {}, {}
    trace: list = []
    for n in sizes:
        snap, truth = scenario(n, seed=11)
        ours, evo, ours_ms, evo_ms = side_by_side("utilitarian", snap, "utilitarian")
        if n == 100:
            evo_on(snap, "utilitarian", trace=trace)
        speed[str(n)] = round(evo_ms / ours_ms, 2)
        ratio[str(n)] = round(
            welfare("utilitarian", snap, truth, ours) / welfare("utilitarian", snap, truth, evo), 4
        )
        # On the objective both optimise (upper bounds, read exactly): the solvers' own comparison.
        ratio_bound[str(n)] = round(bound_welfare(snap, ours) / bound_welfare(snap, evo), 4)
    snap, truth = scenario(100, seed=11)
    ours, evo, ours_ms, evo_ms = side_by_side("balanced", snap, "balanced")
    speed["balanced_100"] = round(evo_ms / ours_ms, 2)
    ratio["balanced_100"] = round(
        welfare("balanced", snap, truth, ours) / welfare("balanced", snap, truth, evo), 4
    )
    # Another snapshot family (other curve mix, job count and contention), same comparison.
    snap, truth = scenario(300, seed=13, contention=0.35, mix=OTHER_MIX)
    ours, evo, ours_ms, evo_ms = side_by_side("utilitarian", snap, "utilitarian")
    oracle = oracle_alloc("utilitarian", snap, truth)
    out["other_family"] = {
        "jobs": 300,
        "speedup_vs_evo": round(evo_ms / ours_ms, 2),
        "welfare_ratio_vs_evo": round(
            welfare("utilitarian", snap, truth, ours) / welfare("utilitarian", snap, truth, evo), 4
        ),
        "welfare_ratio_vs_evo_on_bound": round(
            bound_welfare(snap, ours) / bound_welfare(snap, evo), 4
        ),
        "oracle_vs_evo_on_truth": round(
            welfare("utilitarian", snap, truth, oracle) / welfare("utilitarian", snap, truth, evo),
            4,
        ),
    }
    out["speedup_vs_evo"] = speed
    out["welfare_ratio_vs_evo"] = ratio
    out["welfare_ratio_vs_evo_on_bound"] = ratio_bound
    out["welfare_vs_time_evo"] = trace[:: max(1, len(trace) // 40)] + trace[-1:]
    # Our point on the same curve: CPU ms of decide + pack, welfare on the same bound and grid.
    snap = scenario(100, seed=11)[0]
    ours = make_policy("utilitarian").decide(snap, {})[0]
    out["ours_point_n100"] = [
        round(timed("utilitarian", snap, 3), 2),
        round(bound_welfare(snap, ours), 5),
    ]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
