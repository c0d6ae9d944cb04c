"""A load surge against a running Ray manager, and the reaction time of its fast layer.

``run_surge`` drives one job with an open-loop Poisson load generator along a
trace: a calm warm-up, then ``events`` surges of ``factor`` x the base rate,
each followed by a calm period (in which the LocalControllers give back what
they took). Afterwards it reads every NodeAgent's fast-layer history and
counts, per node and surge, the fast windows from the first window that shows
a violation of the job's target to the first window in which a scale-up was
enforced (acked by the replicas): DESIGN.md's reaction time. Used by
tests/ray/test_ray_local.py and benchmarks/bench_surge.py (``reaction_windows_ray``).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import ray

from actors.load_generator import LoadGenerator
from actors.local_host import reaction_windows
from actors.names import agent_name


def surge_trace(base_rps: float, factor: float, *, warm_s: float, surge_s: float, calm_s: float,
                events: int, step_s: float) -> tuple[list[float], list[float]]:  # fmt: skip
    """(rates per step, surge start offsets in seconds from the trace's start)."""
    n = lambda s: max(1, round(s / step_s))  # noqa: E731
    trace = [base_rps] * n(warm_s)
    starts = []
    for _ in range(events):
        starts.append(len(trace) * step_s)
        trace += [base_rps * factor] * n(surge_s) + [base_rps] * n(calm_s)
    return trace, starts


def agents_of(namespace: str) -> dict[str, Any]:
    return {n["NodeID"]: ray.get_actor(agent_name(n["NodeID"]), namespace=namespace)
            for n in ray.nodes() if n.get("Alive")}  # fmt: skip


def wait_local_ready(namespace: str, job: str, timeout: float = 120.0) -> dict[str, Any]:
    """Until every agent that runs a replica of ``job`` has a fast layer controlling it."""
    deadline = time.time() + timeout
    while True:
        agents = agents_of(namespace)
        infos = dict(zip(agents, ray.get([a.local_info.remote() for a in agents.values()], timeout=60),
                         strict=True))  # fmt: skip
        reps = dict(zip(agents, ray.get([a.report.remote() for a in agents.values()], timeout=60),
                        strict=True))  # fmt: skip
        with_job = [n for n, r in reps.items()
                    if any(i["job"] == job for i in r["replicas"].values())]  # fmt: skip
        if with_job and all(infos[n] and job in infos[n]["services"] for n in with_job):
            return {n: infos[n] for n in with_job}
        if time.time() > deadline:
            raise TimeoutError(f"fast layer not controlling {job} within {timeout} s: {infos}")
        time.sleep(0.25)  # polling remote state


def run_surge(namespace: str, job: str, *, base_rps: float, factor: float = 2.5, warm_s: float = 10.0,
              surge_s: float = 3.0, calm_s: float = 6.0, events: int = 3, step_s: float = 0.5,
              fast_window_s: float = 0.1, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Drive the surges, then measure the reaction per node and surge (see the module doc)."""
    trace, offsets = surge_trace(base_rps, factor, warm_s=warm_s, surge_s=surge_s, calm_s=calm_s,
                                 events=events, step_s=step_s)  # fmt: skip
    gen = LoadGenerator.options(namespace=namespace).remote(
        job, namespace, trace, step_s=step_s, duration_s=len(trace) * step_s, seed=seed)
    done = gen.run.remote()
    # the fast layers learn the job's work per request from the warm-up's requests
    nodes = wait_local_ready(namespace, job, timeout=len(trace) * step_s + 60)
    report = ray.get(done, timeout=len(trace) * step_s + 120)
    ray.kill(gen)
    starts = [report["t0"] + o for o in offsets]
    agents = agents_of(namespace)
    hist = {n: ray.get(agents[n].local_history.remote(), timeout=60) for n in nodes}
    per_node = {n: reaction_windows(h, job, starts, fast_window_s) for n, h in hist.items()}
    got = [r for rs in per_node.values() for r in rs if r is not None]
    events_seen = sum(1 for rs in per_node.values() for r in rs if r is not None)
    # a surge whose violation no scale-up answered is counted at the horizon, not dropped
    unanswered = 0
    for n, h in hist.items():
        for s, r in zip(starts, per_node[n], strict=True):
            if r is None and _violated(h, job, s, fast_window_s):
                unanswered += 1
    vals = got + [math.inf] * unanswered
    return {
        "reaction_windows_median": statistics.median(vals) if vals else None,
        "reactions": per_node,
        "events": events_seen + unanswered,
        "unanswered": unanswered,
        "surge_starts": starts,
        "load": report,
        "histories": hist,
    }


def _violated(history: list[dict[str, Any]], job: str, start: float, fast_s: float,
              horizon: int = 30) -> bool:  # fmt: skip
    w0 = math.floor(start / fast_s)
    return any(w0 <= h["window"] < w0 + horizon and h["jobs"].get(job, {}).get("viol")
               for h in history)  # fmt: skip
