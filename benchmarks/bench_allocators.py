"""Allocator benchmark: decision time, welfare against oracles, ours against the evolutionary search.

Snapshots carry ground-truth Cilantro curves (cluster_mgr.curves.RewardCurve,
the four families with their published coefficients); policies see them
through BandModel: per-job confidence offsets of 0.02-0.1 around a mean that is
off the truth by up to half the band (what a learner in mid-run offers; the
truth stays inside the band). Welfare is always scored on the truth. Times are
process CPU ms (the machine is shared: wall time would measure the neighbours).

Tables (in order):
- packing: 1,000 jobs on 1,000 and 10,000 nodes of 16 CPUs, 90 % full: ``pack`` from
  nothing, ``check_plan`` of that plan, and one controller round (``place.make_plan``:
  pack with the previous plan kept first, then check) after every amount moved by up
  to 10 %.
- decision ms and welfare / oracle: decide + pack, n jobs on n nodes (best of a few
  runs); welfare on the truth after a 40-step closed loop (feedback baselines need
  steps to converge; signals are synthesised from the truth: P99 = target *
  demand/alloc, utilisation = demand/alloc, queue of 2 per replica at demand), over
  the oracle of the same objective. Ours are scored on their own objective
  (utilitarian, Nash geometric mean, egalitarian minimum, the non-separable
  "balanced"); baselines on utilitarian welfare.
- welfare / oracle with learnt models: the same 100-job snapshots, but each policy decides on
  interval learners (the default learner, in a ``LearnerBank``) warmed at random allocations
  and fed each round a noisy reward at the allocation in force, at a measured load that
  varies 5 % from window to window (``learning_loop``; 100 rounds, 40 with --quick). Last
  round and mean of the last 10 over the oracle. In the table only: the JSON's
  ``welfare_vs_oracle`` stays the fixed-band closed loop above.
- oracle / exact DP: our solver on the truth against an independent dynamic programme
  (capacity in 2,000 units), for the separable objectives.
- ours vs the searches: our utilitarian solver against Cilantro's evolutionary
  algorithm at its full 4,000-evaluation budget (``evolve_cilantro``: epochs of 5, the
  batch its algorithm allows; ``speedup_vs_evo``) and against a generational variant
  (``evolve``: 40 candidates per query), decide + pack for each, run alternately 5
  times, the least time of each ("without packing" subtracts the packing of our answer
  from both),
  all on the same bounds through the same bound-query code (the searches query the
  models at each batch's candidate allocations); per job count, for the non-separable
  objective (our Frank-Wolfe and local search against the same search), and for
  another snapshot family (OTHER_MIX: other coefficients and biases, no linear jobs,
  300 jobs, capacity 0.35 x SLO demand). Welfare ratios on the truth, and on the
  upper-bound objective both optimise (the solvers' own comparison).

The JSON line has exactly the issue's keys: ``decision_ms`` (policy -> job count ->
ms), ``welfare_vs_oracle`` (policy -> ratio), ``speedup_vs_evo`` and
``welfare_ratio_vs_evo`` (snapshot -> ratio), ``welfare_vs_time_evo`` ([ms, welfare on
the bound] as the search runs, n = 100).

Run: .venv/bin/python benchmarks/bench_allocators.py [--quick] [--pack-only].
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from allocators.base import Policy, Snapshot
from allocators.objectives import BUILTIN_OBJECTIVES
from allocators.packing import pack
from allocators.problem import GridBuilder, cpu_problem
from allocators.registry import get_policy
from allocators.solvers.evolutionary import evolve, evolve_cilantro
from allocators.solvers.rounding import quantize
from allocators.testing import BandModel
from cluster_mgr.curves import CILANTRO_FAMILIES, RewardCurve
from cluster_mgr.model import CPU_QUANTUM, SLO, Allocation, JobSpec, NodeInfo, ResourceVector

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
    estimate_error: bool = True,
) -> tuple[Snapshot, dict[str, RewardCurve]]:
    """n jobs on n nodes; capacity = ``contention`` x the CPUs every SLO would need on the truth.
    ``mix``: (family, coefficient, bias) cycled over the jobs (default: the four families at
    their default coefficients). ``estimate_error``: each model's mean is off the truth by
    up to half its band (False: the mean is the truth)."""
    rng = np.random.default_rng(seed)
    err_rng = np.random.default_rng([seed, 1])
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
        # The estimate is off the truth by up to half the band (its own draws, so the
        # snapshot is otherwise the same): deciding on the mean is not knowing the truth.
        error = float(err_rng.uniform(-0.5, 0.5)) * band if estimate_error else 0.0
        models[name] = BandModel(curve, band, band, error)
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


#: The learning loop: policies that decide on models, and baselines for context.
LEARNING = ["utilitarian", "nash", "egalitarian", "cilantro", "ernest_maxmin", "fair_share"]
WARM_OBS = 5  # per job, before the first decision, at random allocations
REQUESTS = 100  # per observation window: the reward is the fraction that succeed
LOAD_JITTER = 0.05  # sd of the log of each window's measured load around the job's load


def learning_loop(
    name: str,
    snap: Snapshot,
    truth: dict[str, RewardCurve],
    rounds: int,
    seed: int,
    last: int = 10,
) -> tuple[float, float]:
    """(welfare of the last round's allocation, mean over the last ``last`` rounds), both over
    the oracle's, with the models learnt in the loop: one default learner per job in a
    ``LearnerBank`` (as the controller holds them), warmed by ``WARM_OBS`` observations at
    random allocations up to twice the equal share (independent of the truth), then fed
    each round one observation at the allocation in force: the fraction of ``REQUESTS``
    requests that succeed on the truth (binomial, stated sigma as the simulator's feedback)
    at that window's load (the job's load jittered by ``LOAD_JITTER``, told to the learner,
    as a window's measured load varies)."""
    from cluster_mgr.feedback import reward_sigma
    from learners import learner_factory
    from learners.bank import LearnerBank

    objective = OBJECTIVE_OF.get(name, "utilitarian")
    names = [j.name for j in snap.jobs]
    loads = np.array([snap.loads[k] for k in names])
    bank = LearnerBank(learner_factory(seed=seed))
    rng = np.random.default_rng([seed, 7])

    def observe(cpu: np.ndarray, t: float) -> None:
        seen = loads * np.exp(rng.normal(0.0, LOAD_JITTER, len(loads)))
        reward = np.array(
            [
                truth[k].sample(np.array([c]), ld, np.array([REQUESTS]), rng)[0]
                for k, c, ld in zip(names, cpu, seen, strict=True)
            ]
        )
        bank.learn(names, cpu[:, None], seen, reward, reward_sigma(reward, REQUESTS), t)

    share = snap.capacity.cpu / len(names)
    for w in range(WARM_OBS):
        observe(rng.uniform(0.0, 2.0 * share, len(names)) + 1e-6, w - WARM_OBS)
    learnt = replace(snap, models={k: bank.model(k) for k in names})
    best = welfare(objective, snap, truth, oracle_alloc(objective, snap, truth))
    policy = make_policy(name)
    state = policy.initial_state()
    alloc = get_policy("fair_share").decide(learnt, {})[0]
    ratios = []
    for k in range(rounds):
        s = replace(learnt, time=k * 30.0, round=k, last=alloc, signals=signals(snap, truth, alloc))
        alloc, state = policy.decide(s, state)
        state = json.loads(json.dumps(state))
        ratios.append(welfare(objective, snap, truth, alloc) / best)
        observe(np.array([alloc.get(j).cpu for j in names]), k * 30.0)
    return ratios[-1], float(np.mean(ratios[-last:]))


def oracle_alloc(objective: str, snap: Snapshot, truth: dict[str, RewardCurve]) -> Allocation:
    name, opts = ORACLE_OF[objective]
    exact = replace(snap, models=truth)
    alloc = get_policy(name, **opts).decide(exact, {})[0]
    if objective == "balanced":  # no exact method: take the best of two searches on the truth
        evo = evo_on(exact, "balanced", budget=20_000, side="mean", search="generational")[0]
        if welfare("balanced", snap, truth, evo) > welfare("balanced", snap, truth, alloc):
            alloc = evo
    return alloc


def evo_on(
    snap: Snapshot,
    objective: str,
    budget: int = 4000,
    side: str = "upper",
    trace: list | None = None,
    search: str = "cilantro",
) -> tuple[Allocation, float]:
    """An evolutionary search on the objective ours optimises (the same upper bounds, read
    the same way), each batch of candidates scored
    by one query of the models at their own allocations (the bound-query code ours uses);
    (allocation, CPU ms of search and packing). ``search``: "cilantro" (its published
    algorithm, epochs of 5) or "generational" (40 candidates per query)."""
    t0 = time.process_time()
    obj = BUILTIN_OBJECTIVES[objective]
    problem = cpu_problem(snap)
    builder = GridBuilder(
        problem,
        snap.models,
        side,  # type: ignore[arg-type]
        obj.values if obj.separable else None,
    )
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

    rng = np.random.default_rng(snap.seed)
    lo, hi, cap = problem.lo, problem.hi, problem.capacity
    if search == "cilantro":
        x = evolve_cilantro(evaluate, lo, hi, cap, rng, budget, CPU_QUANTUM, progress)
    else:
        x = evolve(evaluate, lo, hi, w, cap, rng, budget, 40, on_generation=progress)
    x = quantize(x, lo, hi, cap, CPU_QUANTUM)
    amounts = {n: ResourceVector(cpu=float(v)) for n, v in zip(problem.names, x, strict=True)}
    alloc = snap.allocation(amounts, "evolutionary")
    pack(alloc, snap.jobs, snap.nodes)
    return alloc, (time.process_time() - t0) * 1000


def bound_welfare(snap: Snapshot, alloc: Allocation) -> float:
    """Utilitarian welfare on the objective both solvers optimise (upper bounds), read from
    the models at the exact allocation (the grid's interpolation would favour whichever
    solver lands on grid points)."""
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


SEARCHES = ("cilantro", "generational")


def side_by_side(
    name: str, snap: Snapshot, objective: str, repeats: int = 5
) -> tuple[Allocation, float, dict[str, tuple[Allocation, float]]]:
    """(ours, ours ms, {search: (its allocation, its ms)}): CPU ms of each, run alternately
    ``repeats`` times, the least of each (the machine is shared: its noise only adds time,
    so the least is each side's own cost, and alternating gives all the same neighbours)."""
    ours_ms: list[float] = []
    ms: dict[str, list[float]] = {k: [] for k in SEARCHES}
    found: dict[str, Allocation] = {}
    ours: Allocation | None = None
    for _ in range(repeats):
        policy = make_policy(name)
        t0 = time.process_time()
        ours, _ = policy.decide(snap, policy.initial_state())
        pack(ours, snap.jobs, snap.nodes)
        ours_ms.append((time.process_time() - t0) * 1000)
        for search in SEARCHES:
            found[search], t = evo_on(snap, objective, search=search)
            ms[search].append(t)
    assert ours is not None
    return (
        ours,
        min(ours_ms),
        {k: (found[k], min(v)) for k, v in ms.items()},
    )


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


def side_by_side_row(
    name: str, objective: str, snap: Snapshot, truth: dict[str, RewardCurve]
) -> dict[str, float]:
    """One row of the speed table: ours against both searches on one snapshot."""
    ours, ours_ms, searches = side_by_side(name, snap, objective)
    pack_ms = timed_pack(snap, ours)
    row = {"ours_ms": round(ours_ms, 2)}
    for key, (evo, evo_ms) in searches.items():
        tag = "" if key == "cilantro" else "_" + key
        row["evo_ms" + tag] = round(evo_ms, 2)
        row["speedup" + tag] = round(evo_ms / ours_ms, 2)
        # Both without the packing of their answer (the same code for both).
        row["speedup_solver" + tag] = round(
            max(evo_ms - pack_ms, 1e-9) / max(ours_ms - pack_ms, 1e-9), 2
        )
        row["welfare_ratio" + tag] = round(
            welfare(objective, snap, truth, ours) / welfare(objective, snap, truth, evo), 4
        )
        row["welfare_ratio_on_bound" + tag] = (
            round(bound_welfare(snap, ours) / bound_welfare(snap, evo), 4)
            if objective == "utilitarian"
            else float("nan")
        )
    return row


def timed_pack(snap: Snapshot, alloc: Allocation, repeats: int = 5) -> float:
    """Least CPU ms of packing ``alloc`` from nothing (as ``side_by_side``)."""
    ms = []
    for _ in range(repeats):
        t0 = time.process_time()
        pack(alloc, snap.jobs, snap.nodes)
        ms.append((time.process_time() - t0) * 1000)
    return min(ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer seeds and repeats")
    ap.add_argument("--pack-only", action="store_true", help="only the packing figures (pack_ms)")
    args = ap.parse_args()
    console = Console(width=150)  # tables stay readable in a log
    progress = Console(stderr=True)
    seeds = [1] if args.quick else [1, 2, 3]
    progress.log("packing at scale (1,000 jobs on 1,000 and 10,000 nodes)")
    pack_ms = {f"{j}x{n}": pack_scale(j, n) for j, n in ((1000, 1000), (1000, 10_000))}
    pt = Table(title="packing, CPU ms (1,000 jobs, nodes of 16 CPUs at 90 %)")
    for col in ("jobs x nodes", "pack cold", "check_plan", "make_plan round", "moves", "shares"):
        pt.add_column(col, justify="right")
    for key, r in pack_ms.items():
        pt.add_row(
            key,
            *(
                str(r[k])
                for k in ("pack_cold_ms", "check_plan_ms", "make_plan_round_ms", "moves", "shares")
            ),
        )
    console.print(pt)
    if args.pack_only:
        print(json.dumps({"pack_ms": pack_ms}))
        return

    sizes = (10, 100, 1000)
    snaps = {n: scenario(n, seed=7)[0] for n in sizes}
    decision_ms: dict[str, dict[str, float]] = {}
    progress.log("decision times, every policy at 10 / 100 / 1,000 jobs")
    for name in OURS + BASELINES + ["oracle_utilitarian"]:
        decision_ms[name] = {
            str(n): round(timed(name, snaps[n], 1 if n == 1000 or args.quick else 3), 2)
            for n in sizes
        }

    progress.log(f"closed loops against the oracles (seeds {seeds})")
    ratios: dict[str, list[float]] = {}
    on_means: dict[str, list[float]] = {}
    for seed in seeds:
        snap, truth = scenario(100, seed)
        oracle = {o: welfare(o, snap, truth, oracle_alloc(o, snap, truth)) for o in ORACLE_OF}
        for name in OURS + BASELINES:
            obj = OBJECTIVE_OF.get(name, "utilitarian")
            got = welfare(obj, snap, truth, closed_loop(name, snap, truth))
            ratios.setdefault(name, []).append(got / oracle[obj])
        # What deciding on the best estimate reaches: the oracle's exact solver on the
        # models' means (not the truth), judged on the truth.
        for o in ("utilitarian", "nash"):
            guess = get_policy(ORACLE_OF[o][0]).decide(snap, {})[0]
            on_means.setdefault(o, []).append(welfare(o, snap, truth, guess) / oracle[o])
    welfare_vs_oracle = {k: round(float(np.mean(v)), 4) for k, v in ratios.items()}
    dt = Table(
        title="decision CPU ms (decide + pack, n jobs on n nodes) and welfare / oracle (40-step closed loop, 100 jobs)"
    )
    for col in ("policy", "kind", "10", "100", "1000", "objective", "welfare / oracle"):
        dt.add_column(col, justify="right")
    for name, row in decision_ms.items():
        kind = "ours" if name in OURS else "oracle" if name.startswith("oracle") else "baseline"
        dt.add_row(
            name,
            kind,
            *(f"{row[str(n)]:.2f}" for n in sizes),
            OBJECTIVE_OF.get(name, "utilitarian"),
            f"{welfare_vs_oracle[name]:.4f}" if name in welfare_vs_oracle else "",
        )
    console.print(dt)
    console.print(
        "the oracles' solvers on the models' means (the best estimate, not the truth), "
        "welfare / oracle: " + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in on_means.items())
    )

    rounds = 40 if args.quick else 100
    progress.log(f"learning loops: interval learners, 100 jobs, {rounds} rounds (seeds {seeds})")
    loop: dict[str, list[tuple[float, float]]] = {}
    for seed in seeds:
        snap, truth = scenario(100, seed)
        for name in LEARNING:
            loop.setdefault(name, []).append(learning_loop(name, snap, truth, rounds, seed))
    lt = Table(
        title=f"welfare / oracle with learnt models ({rounds}-round loop, 100 jobs, interval "
        f"learners fed noisy rewards at the chosen allocations; mean of seeds {seeds})"
    )
    for col in ("policy", "objective", "last round", "mean of last 10", "per seed (last)"):
        lt.add_column(col, justify="right")
    for name, vals in loop.items():
        arr = np.array(vals)
        lt.add_row(
            name,
            OBJECTIVE_OF.get(name, "utilitarian"),
            f"{arr[:, 0].mean():.4f}",
            f"{arr[:, 1].mean():.4f}",
            " / ".join(f"{v:.3f}" for v in arr[:, 0]),
        )
    console.print(lt)

    # The oracles' own optimality: our solver on the truth against an independent exact DP.
    progress.log("oracles against an exact dynamic programme")
    exact: dict[str, list[float]] = {}
    for seed in seeds:
        snap, truth = scenario(40, seed)
        for o in ("utilitarian", "nash"):
            ours = welfare(o, snap, truth, oracle_alloc(o, snap, truth))
            exact.setdefault(o, []).append(ours / welfare(o, snap, truth, exact_dp(o, snap, truth)))
    console.print(
        "oracle / exact DP (40 jobs, 2,000 units): "
        + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in exact.items())
    )

    progress.log("ours against the evolutionary searches (4,000 evaluations), alternately 5 times")
    rows: dict[str, dict[str, float]] = {}
    trace: list = []
    for n in sizes:
        snap, truth = scenario(n, seed=11)
        rows[str(n)] = side_by_side_row("utilitarian", "utilitarian", snap, truth)
        if n == 100:
            evo_on(snap, "utilitarian", trace=trace)
    snap, truth = scenario(100, seed=11)
    rows["balanced_100"] = side_by_side_row("balanced", "balanced", snap, truth)
    # Another snapshot family (other curve mix, job count and contention), same comparison.
    snap, truth = scenario(300, seed=13, contention=0.35, mix=OTHER_MIX)
    rows["other_family_300"] = side_by_side_row("utilitarian", "utilitarian", snap, truth)
    st = Table(
        title="ours vs the evolutionary searches at 4,000 evaluations (CPU ms of decide + pack, "
        "least of 5, run alternately): Cilantro's algorithm, and the generational variant"
    )
    cols = (
        "snapshot",
        "ours ms",
        "Cilantro ms",
        "speedup",
        "w/o packing",
        "welfare (truth)",
        "welfare (bound)",
        "generational ms",
        "speedup",
        "welfare (truth)",
        "welfare (bound)",
    )
    for col in cols:
        st.add_column(col, justify="right")
    for key, r in rows.items():
        st.add_row(
            key,
            *(f"{r[k]:.2f}" for k in ("ours_ms", "evo_ms", "speedup", "speedup_solver")),
            *(f"{r[k]:.4f}" for k in ("welfare_ratio", "welfare_ratio_on_bound")),
            *(f"{r[k]:.2f}" for k in ("evo_ms_generational", "speedup_generational")),
            *(
                f"{r[k]:.4f}"
                for k in ("welfare_ratio_generational", "welfare_ratio_on_bound_generational")
            ),
        )
    console.print(st)
    snap = scenario(100, seed=11)[0]
    ours = make_policy("utilitarian").decide(snap, {})[0]
    console.print(
        f"search at n = 100: welfare on the bound {trace[-1][1]:.5f} after {trace[-1][0]:.1f} ms; "
        f"ours {bound_welfare(snap, ours):.5f} after {timed('utilitarian', snap, 3):.2f} ms"
    )
    print(
        json.dumps(
            {
                "decision_ms": decision_ms,
                "welfare_vs_oracle": welfare_vs_oracle,
                "speedup_vs_evo": {k: r["speedup"] for k, r in rows.items()},
                "welfare_ratio_vs_evo": {k: r["welfare_ratio"] for k, r in rows.items()},
                "welfare_vs_time_evo": trace[:: max(1, len(trace) // 40)] + trace[-1:],
            }
        )
    )


if __name__ == "__main__":
    main()
