"""A load surge against a running Ray manager, and the reaction time of its fast layer.

``run_surge`` drives one job with an open-loop Poisson load generator along a
trace: a calm warm-up, then ``events`` surges of ``factor`` x the base rate,
each followed by a calm period (in which the LocalControllers give back what
they took). Afterwards it reads every NodeAgent's fast-layer history and
counts, per node and surge, the fast windows from the first window that shows
a violation of the job's target to the first window in which a scale-up was
enforced (acked by the replicas): DESIGN.md's reaction time. Used by
tests/ray/test_ray_local.py and benchmarks/bench_surge.py (``reaction_windows_ray``).

``run_network_surge`` does the same for network-latency surges on a meshed job (workload
``mesh``, node Envoys running): a steady load through the node Envoys, and during each
surge a fixed delay that Envoy's fault filter puts on the job's route at every node's
proxy (``actors.devices.mesh_fault``, registered with each NodeAgent, unregistered after
``surge_s``). The replicas see it in time-from-start (the callers stamp ``x-sent-at``
before Envoy holds the request); reaction counts from the first window whose
time-from-start is over its target (``late``) to the first enforced scale-up.
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
    return {**_reactions(hist, job, starts, fast_window_s, "viol"), "surge_starts": starts,
            "load": report, "histories": hist}  # fmt: skip


def _reactions(hist: dict[str, list[dict[str, Any]]], job: str, starts: list[float], fast_s: float,
               signal: str, freq_max: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Reactions per node and surge, their median, and the events counted. With ``freq_max``
    (the fast layer's top frequency), a violation that finds the job's knobs at the top (its
    quota at the node budget and its frequency at ``freq_max``: nothing left to enforce, e.g.
    the previous surge's scale-up not yet released) is counted as ``saturated``, not as an
    unanswered event."""
    per_node = {n: reaction_windows(h, job, starts, fast_s, signal=signal) for n, h in hist.items()}
    got = [r for rs in per_node.values() for r in rs if r is not None]
    # a surge whose violation no scale-up answered is counted at the horizon, not dropped
    unanswered = saturated = 0
    for n, h in hist.items():
        for s, r in zip(starts, per_node[n], strict=True):
            first = _violated(h, job, s, fast_s, signal=signal) if r is None else None
            if first is None:
                continue
            x = first["jobs"][job]
            if freq_max is not None and x["quota"] >= first["budget_cores"] - 1e-6 \
                    and x["frequency"] >= freq_max - 1e-6:  # fmt: skip
                saturated += 1
            else:
                unanswered += 1
    vals = got + [math.inf] * unanswered
    return {
        "reaction_windows_median": statistics.median(vals) if vals else None,
        # every event's reaction (inf: unanswered), so callers can pool events across runs
        "reaction_values": sorted(vals),
        "reactions": per_node,
        "events": len(got) + unanswered,
        "unanswered": unanswered,
        "saturated": saturated,
    }


def _violated(history: list[dict[str, Any]], job: str, start: float, fast_s: float,
              horizon: int = 30, signal: str = "viol") -> dict[str, Any] | None:  # fmt: skip
    """The first window within ``horizon`` of ``start`` that shows the violation, or None."""
    w0 = math.floor(start / fast_s)
    return next((h for h in sorted(history, key=lambda h: h["window"])
                 if w0 <= h["window"] < w0 + horizon and h["jobs"].get(job, {}).get(signal)), None)  # fmt: skip


# --------------------------------------------------------------------------- network surges


def fault_name(job: str) -> str:
    """The participant name of ``job``'s fault on a NodeAgent (actors.devices.MeshFault)."""
    from dpu_agent.placement import safe_name

    return f"fault.{safe_name(job)}"


def set_network_delay(agents: dict[str, Any], job: str, delay_ms: float, percent: float = 100.0) -> None:
    """Put a fixed delay on ``job``'s route at each agent's node proxy (Envoy's fault filter),
    all nodes at once. Raises when an agent refused (a NACK: its last good config stays)."""
    refs = {n: a.register_participant.remote({
        "factory": "actors.devices:mesh_fault",
        "options": {"job": job, "delay_ms": float(delay_ms), "percent": float(percent), "node_id": n}})
        for n, a in agents.items()}  # fmt: skip
    errors = []
    for n, ref in refs.items():
        try:
            ray.get(ref, timeout=60)
        except Exception as exc:  # one refusal must not leave the others delayed
            errors.append(f"{n[:8]}: {exc}")
    if errors:
        clear_network_delay(agents, job)
        raise RuntimeError(f"network delay on {job} refused: {errors}")


def clear_network_delay(agents: dict[str, Any], job: str) -> None:
    """Remove ``job``'s delay at every agent's proxy (no-op where there is none)."""
    ray.get([a.unregister_participant.remote(fault_name(job)) for a in agents.values()], timeout=60)


def mesh_agents(namespace: str) -> dict[str, Any]:
    """The NodeAgents whose node runs a mesh participant (an Envoy)."""
    agents = agents_of(namespace)
    infos = ray.get([a.device_info.remote() for a in agents.values()], timeout=60)
    return {n: a for (n, a), d in zip(agents.items(), infos, strict=True) if "mesh" in d}


def run_network_surge(namespace: str, job: str, *, base_rps: float, delay_ms: float = 60.0,
                      percent: float = 100.0, warm_s: float = 10.0, surge_s: float = 3.0,
                      calm_s: float = 6.0, events: int = 3, fast_window_s: float = 0.1,
                      freq_max: float = 1.5, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Network-latency surges on the meshed ``job`` (see the module doc): a steady Poisson
    load of ``base_rps`` through the node Envoys; ``events`` times, ``delay_ms`` on ``percent``
    % of the job's requests at every node's proxy for ``surge_s``, then ``calm_s`` without.
    Returns the reactions as ``run_surge`` does (signal ``late``; a violation that finds the
    job's knobs at the top, ``freq_max`` being the fast layer's, counts as ``saturated``), plus each surge's
    (start, end) and, per node and surge, the mean time-from-start the fast layer saw in the
    calm window before, during the surge, and after it."""
    agents = mesh_agents(namespace)
    if not agents:
        raise RuntimeError(f"no node of namespace {namespace} runs a mesh participant (envoy = true)")
    duration = warm_s + events * (surge_s + calm_s)
    gen = LoadGenerator.options(namespace=namespace).remote(
        job, namespace, float(base_rps), duration_s=duration, seed=seed, via_mesh=True)
    done = gen.run.remote()
    t_start = time.time()
    nodes = wait_local_ready(namespace, job, timeout=duration + 60)
    spans: list[tuple[float, float]] = []
    try:
        at = max(time.time(), t_start + warm_s)
        for _ in range(events):
            time.sleep(max(0.0, at - time.time()))  # the scenario's schedule: the next surge
            t0 = time.time()  # before the push: windows from here on may show the delay
            set_network_delay(agents, job, delay_ms, percent)
            time.sleep(max(0.0, t0 + surge_s - time.time()))  # the surge lasts surge_s
            clear_network_delay(agents, job)
            spans.append((t0, time.time()))
            at = t0 + surge_s + calm_s
    finally:
        clear_network_delay(agents, job)  # never leave the network delayed
    report = ray.get(done, timeout=duration + 120)
    ray.kill(gen)
    every = agents_of(namespace)
    hist = {n: ray.get(every[n].local_history.remote(), timeout=60) for n in nodes}
    starts = [s for s, _ in spans]
    seen = {n: [_time_from_start(h, job, s, e, fast_window_s, calm_s) for s, e in spans]
            for n, h in hist.items()}  # fmt: skip
    return {**_reactions(hist, job, starts, fast_window_s, "late", freq_max), "surges": spans,
            "time_from_start_ms": seen, "load": report, "histories": hist}  # fmt: skip


def _time_from_start(history: list[dict[str, Any]], job: str, start: float, end: float,
                     fast_s: float, calm_s: float) -> dict[str, float]:  # fmt: skip
    """Mean time-from-start (ms) of ``job`` at one node over the calm second before a surge,
    during it, and after it (skipping the first window after each edge: requests in flight)."""
    def mean(lo: float, hi: float) -> float:
        xs = [h["jobs"][job]["upstream_ms"] for h in history
              if lo <= h["window"] * fast_s and (h["window"] + 1) * fast_s <= hi
              and job in h["jobs"] and not math.isnan(h["jobs"][job].get("upstream_ms", math.nan))]  # fmt: skip
        return statistics.fmean(xs) if xs else math.nan

    after = min(calm_s, 2.0)
    return {"before": mean(start - 1.0, start), "during": mean(start + fast_s, end),
            "after": mean(end + 2 * fast_s, end + after)}
