"""End-to-end telemetry and decision throughput of the Ray backend on a 4-node cluster.

Path measured: windows closed by telemetry sources on each node -> taken by
that node's NodeAgent -> (agent-log mode, the default on one machine)
de-duplicated and written to the run log by the agent (one Parquet part per
push, under its own writer id), acked at the sources, and sent to the
Controller as per-(job, window) partial sums -> merged into the learners
(interval-tree LearnerBank). With --controller-log: pushed to the Controller as
Arrow, de-duplicated, buffered and written to the log by the controller (one
part per 0.5 s flush), merged into the learners, reported durable, acked.

* ingest_job_windows_per_s: replica windows the controller admitted and then
  logged and learned, per second over the measurement period (after a warm-up).
* lag_p99_ms: P99 of (controller receipt time - window end) over that period.
* round_overhead_ms: median GlobalAllocator.step time (snapshot, policy,
  packing, plan, decision log) with 1, 10 and 100 jobs on this cluster's nodes.

The sources emit many (job, replica) streams each (see actors/telemetry_source.py):
real replicas are processes and this 2-core machine runs a handful. Each source
draws its stream-windows from a bank of 4,096 pre-drawn ones (a gather, ~17 ms
per 14,000-row window); drawing 96 Poisson buckets per stream-window live cost
~140 ms per window per source, a quarter of the machine for four sources (a
large part of why earlier measurements fell behind).

Measured here (2 cores shared with other work, 4 nodes, 1000 jobs, 40 s after
8 s warm-up): agent-log, 14 streams/node (56,000 windows/s offered): ingest
56,000/s, lag p99 492-598 ms, controller 0.04-0.05 CPU-s/s, agents 0.28-0.30;
21 streams/node (84,000/s offered): 83,300/s, lag p99 719 ms. Controller-log,
56,000/s offered: all of it, lag p99 384-450 ms on a quiet machine; 35,700/s,
lag p99 10.3 s with other work running (its controller used 0.21 CPU-s/s: the
limit there is moving every window through the object store twice at nice 15).

Usage: python benchmarks/bench_control_plane.py [--seconds 30] [--jobs 1000] [--replicas 14] [--controller-log]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from actors.names import agent_name  # noqa: E402
from actors.telemetry_source import TelemetrySource  # noqa: E402
from allocators.policies.fair_share import ProportionalFairShare  # noqa: E402
from cluster_mgr.clock import SystemClock  # noqa: E402
from cluster_mgr.control.global_allocator import GlobalAllocator  # noqa: E402
from cluster_mgr.model import SLO, JobSpec, NodeInfo, ResourceVector  # noqa: E402
from cluster_mgr.runtime.ray_backend import RayManager  # noqa: E402
from cluster_mgr.settings import ManagerConfig  # noqa: E402
from cluster_mgr.store import RunLog  # noqa: E402

NS = "cm-bench"


def round_overhead(nodes: list[NodeInfo], n_jobs: int, log_dir: str, reps: int = 15) -> float:
    from learners import make_learner

    jobs = [JobSpec(f"j{i:04d}", slo=SLO(target=20.0), weight=1.0 + i % 3) for i in range(n_jobs)]
    ga = GlobalAllocator(jobs, ProportionalFairShare(), lambda s: make_learner("interval"),
                         SystemClock(), RunLog(log_dir, writer=f"ovh{n_jobs}"), round_s=30.0)  # fmt: skip
    rng = np.random.default_rng(0)
    for t in range(20):  # learners with some history, as in a running deployment
        a = rng.uniform(0.5, 8.0, n_jobs)
        ga.observe([j.name for j in jobs], a[:, None], np.full(n_jobs, 100.0),
                   np.clip(np.tanh(a / 2) + rng.normal(0, 0.02, n_jobs), 0, 1),
                   np.full(n_jobs, 0.02), float(t))  # fmt: skip
    times = [ga.step(nodes).decision_ms for _ in range(reps)]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--replicas", type=int, default=14, help="streams per job per node")
    ap.add_argument("--rate", type=float, default=20.0, help="requests/s per stream")
    ap.add_argument("--controller-log", action="store_true",
                    help="agents send replica windows and the controller logs them (the default on "
                         "one machine: agents log their node's windows and send partial sums)")
    args = ap.parse_args()
    store = 100 * 1024**2
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 16, "object_store_memory": store,
                                                             "include_dashboard": False})  # fmt: skip
    for _ in range(3):
        cluster.add_node(num_cpus=16, object_store_memory=store)
    ray.init(address=cluster.address, namespace=NS)
    log_dir = tempfile.mkdtemp(prefix="cm-bench-")
    jobs = tuple(JobSpec(f"j{i:04d}", slo=SLO(target=20.0)) for i in range(args.jobs))
    cfg = ManagerConfig(address=cluster.address, namespace=NS, round_s=30.0, shadow=True,
                        log_uri=log_dir, admin_bind="", jobs=jobs)  # fmt: skip
    manager = RayManager(cfg, {"agent_options": {"push_period_s": 0.5},
                               "agent_log": not args.controller_log})  # fmt: skip
    sources = []
    try:
        manager.start()
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        deadline = time.time() + 60
        while len(manager.info()["agents"]) < len(nodes) and time.time() < deadline:
            time.sleep(0.2)
        names = [j.name for j in jobs]
        for k, nid in enumerate(nodes):
            name = f"cluster-mgr:source:{nid}"
            src = TelemetrySource.options(
                name=name, namespace=NS,
                scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
            ).remote(names, args.replicas, args.rate, 20.0, seed=k, tag=f"n{k}")  # fmt: skip
            ray.get(src.start.remote())
            ray.get(ray.get_actor(agent_name(nid), namespace=NS).register_source.remote(name))
            sources.append(src)
        time.sleep(args.warmup)  # warm-up: let the first windows flow before measuring
        i0 = manager.info()
        p0 = sum(ray.get(s.stats.remote())["produced"] for s in sources)
        ray.get(manager.controller.lag_stats.remote(reset=True))
        t0 = time.time()
        time.sleep(args.seconds)  # the measurement period itself
        t1 = time.time()
        i1 = manager.info()
        lag = ray.get(manager.controller.lag_stats.remote())
        p1 = sum(ray.get(s.stats.remote())["produced"] for s in sources)
        stats = [ray.get(s.stats.remote()) for s in sources]
        elapsed = t1 - t0
        ingested = i1["ingested_rows"] - i0["ingested_rows"]
        obs = i1["counters"]["observations"] - i0["counters"]["observations"]
        rate = ingested / elapsed
        ctl_cpu = (i1["cpu_s"] - i0["cpu_s"]) / elapsed
        agents_cpu = sum(i1["reports"][n].get("cpu_s", 0.0) - i0["reports"].get(n, {}).get("cpu_s", 0.0)
                         for n in i1["reports"]) / elapsed  # fmt: skip
        caps = [NodeInfo(n, ResourceVector(cpu=16.0)) for n in nodes]
        overhead = {
            str(n): round(round_overhead(caps, n, tempfile.mkdtemp()), 3) for n in (1, 10, 100)
        }
        table = Table(
            title=f"control plane: {len(nodes)} nodes, {args.jobs} jobs x {args.replicas} streams/node"
        )
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("measured period (s)", f"{elapsed:.1f}")
        table.add_row("windows produced (period)", f"{p1 - p0:,}")
        table.add_row("windows ingested: logged + learned", f"{ingested:,}")
        table.add_row("ingest (job-windows/s)", f"{rate:,.0f}")
        table.add_row("learner observations (job x window)", f"{obs:,}")
        table.add_row("controller CPU (s per s)", f"{ctl_cpu:.2f}")
        table.add_row("NodeAgents CPU, all four (s per s)", f"{agents_cpu:.2f}")
        table.add_row("lag window close -> controller p50 (ms)", f"{lag['p50_ms']:.0f}")
        table.add_row("lag window close -> controller p99 (ms)", f"{lag['p99_ms']:.0f}")
        table.add_row("lost / duplicate / late windows (total)",
                      f"{i1['counters']['lost']} / {i1['counters']['duplicates']} / {i1['counters']['late']}")  # fmt: skip
        table.add_row("windows still buffered at sources", f"{sum(s['buffered'] for s in stats):,}")
        table.add_row(
            f"live round with {args.jobs} jobs (ms)",
            f"{i1['last_decision_ms'] or float('nan'):.1f}",
        )
        for n, ms in overhead.items():
            table.add_row(f"round overhead, {n} jobs (ms)", f"{ms:.2f}")
        Console().print(table)
        print(json.dumps({"mode": "controller-log" if args.controller_log else "agent-log",
                          "ingest_job_windows_per_s": round(rate, 1), "lag_p99_ms": round(lag["p99_ms"], 1),
                          "round_overhead_ms": overhead,
                          "produced_job_windows_per_s": round((p1 - p0) / elapsed, 1),
                          "observations_per_s": round(obs / elapsed, 1),
                          "controller_cpu_s_per_s": round(ctl_cpu, 3),
                          "agents_cpu_s_per_s": round(agents_cpu, 3),
                          "late_windows": i1["counters"]["late"] - i0["counters"]["late"]}))  # fmt: skip
    finally:
        for s in sources:
            ray.get(s.stop.remote())
        manager.stop()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
