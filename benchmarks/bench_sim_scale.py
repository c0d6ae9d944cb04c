"""Sim backend at scale: 10,000 nodes, 1,000 jobs, one hour of virtual time (3,600 windows, 120 rounds).

Prints one JSON line: {"nodes", "jobs", "virtual_s", "wall_s", "cpu_s", ...} with the wall time split into
telemetry windows (emulation, telemetry, learners) and rounds (policy + placement), so a slow run
says which part to speed up. Target (issue 5): wall_s <= 300 on the 2-core CI machine.

    .venv/bin/python benchmarks/bench_sim_scale.py [--nodes 10000] [--jobs 1000] [--duration 3600]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from cluster_mgr.scenario import load_scenario
from cluster_mgr.sim import SimOptions, Simulation

# Four job families of equal size: Cilantro curves with diurnal, bursty and flat loads, and M/M/c services.
FAMILIES = [
    (
        'family = "tanh", scale = 1',
        'shape = "diurnal", rate = 200, period_s = 3600, stagger_s = 13',
        "curve",
    ),
    ("service_ms = 10", 'shape = "constant", rate = 500', "queue"),
    ('family = "logistic", scale = 0.5', 'shape = "bursty", rate = 100', "curve"),
    ('family = "inverse", scale = 2', 'shape = "constant", rate = 300', "curve"),
]


def scenario_text(nodes: int, jobs: int, duration: float, round_s: float) -> str:
    parts = [
        f'[scenario]\nname = "scale"\nduration_s = {duration}\nround_s = {round_s}\nwarmup_s = 60\nseed = 0\n',
        f"[cluster]\ncount = {nodes}\nresources = {{ cpu = 16, memory = 64 }}\n",
    ]
    per = [
        jobs // len(FAMILIES) + (1 if i < jobs % len(FAMILIES) else 0) for i in range(len(FAMILIES))
    ]
    for i, ((wl, load, model), n) in enumerate(zip(FAMILIES, per, strict=True)):
        if n == 0:
            continue
        target = 50 if model == "queue" else 100
        parts.append(
            f'[[jobs]]\nname = "f{i}"\ncount = {n}\nslo = {{ target = {target} }}\n'
            f'load = {{ {load} }}\nworkload = {{ model = "{model}", {wl} }}\n'
        )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=1_000)
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--round", type=float, default=30.0)
    ap.add_argument("--policy", default="fair_share")
    ap.add_argument(
        "--log", action="store_true", help="also write the telemetry log (run folder in a temp dir)"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.toml"
        path.write_text(scenario_text(args.nodes, args.jobs, args.duration, args.round))
        sc = load_scenario(path)
        sim = Simulation(
            sc, SimOptions(policy=args.policy, out_dir=Path(tmp) / "run" if args.log else None)
        )
        step = sim._step
        round_wall = [0.0]

        def timed_step(failures: list[str]):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return step(failures)
            finally:
                round_wall[0] += time.perf_counter() - t0

        sim._step = timed_step  # type: ignore[method-assign]
        t0, c0 = time.perf_counter(), time.process_time()
        result = sim.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    line = {
        "nodes": args.nodes,
        "jobs": args.jobs,
        "virtual_s": args.duration,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),  # this process's CPU time: what wall_s would be on an idle machine
        "windows": len(result.times),
        "rounds": len(result.round_times),
        "rounds_wall_s": round(round_wall[0], 2),
        "windows_wall_s": round(wall - round_wall[0], 2),
        "policy": args.policy,
        "feed": sim.feed,
        "decision_failures": result.failures,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
