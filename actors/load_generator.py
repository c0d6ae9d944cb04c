"""A load generator: drives real requests to a job's replicas along a load trace.

Open loop: arrivals are Poisson at the trace's current rate (requests/s),
independent of how fast the service answers, the way real users behave.
The trace is a constant rate or a list of rates, one per ``step_s``; the run
is bounded by ``duration_s`` and ``max_requests`` and ends by itself.

Replicas come from the controller (``endpoints(job)``), refreshed every
``refresh_s``; requests go round-robin. A request that cannot be sent (no
replica yet, or ``max_inflight`` requests already outstanding) is counted as
rejected here and reported to a replica of the job (``note_rejected``) so it
shows as an SLO miss in the job's telemetry. Client-side latency (send to
answer, wall clock) is kept for the run's report beside the replicas' own.

``via_mesh=True`` (a job whose workload has ``mesh``: its replicas also listen
on loopback, docs/mesh.md): every request is a real HTTP request to the Envoy
of the node this generator runs on (its listener, from the node's NodeAgent),
with ``Host: <job>``; Envoy routes it by the pushed weights, rate limits and
breakers to a replica on any node. 200 is ok; 429 (the job's rate limit) and
503 (breaker overflow, DPU shed, or a full replica queue) are rejected; 504 is
timed out; anything else (no answer, 5xx) failed. Rejections by the proxy are
SLO misses in the mesh participant's telemetry windows, so they are not also
reported to a replica here. In this mode the look-ups (replicas, proxy) run in
the background, so the arrival process never waits for them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from actors.names import CONTROLLER, agent_name
from actors.replica import OK, REJECTED, TIMED_OUT


def rate_at(trace: float | Sequence[float], step_s: float, t: float) -> float:
    if isinstance(trace, int | float):
        return float(trace)
    if not trace:
        return 0.0
    i = min(int(t / step_s), len(trace) - 1)
    return float(trace[i])


@ray.remote(num_cpus=0)
class LoadGenerator:
    def __init__(
        self,
        job: str,
        namespace: str,
        trace: float | list[float],
        *,
        step_s: float = 1.0,
        duration_s: float = 30.0,
        max_requests: int = 1_000_000,
        max_inflight: int = 512,
        refresh_s: float = 1.0,
        seed: int = 0,
        via_mesh: bool = False,
    ) -> None:
        self.job, self.namespace = job, namespace
        self.trace, self.step_s = trace, float(step_s)
        self.duration_s, self.max_requests = float(duration_s), int(max_requests)
        self.max_inflight, self.refresh_s = int(max_inflight), float(refresh_s)
        self.rng = np.random.default_rng(seed)
        self.counts = {"sent": 0, "ok": 0, "rejected": 0, "timed_out": 0, "failed": 0, "unsent": 0}
        self.via_mesh = bool(via_mesh)
        self.proxy: Any = None  # dpu_agent.ingress.ProxyPool to this node's Envoy (via_mesh)
        self.codes: dict[int, int] = {}  # HTTP status -> count (via_mesh)
        self.replies: dict[str, int] = {}  # answering replica -> count (via_mesh)
        self.latencies_ms: list[float] = []
        self.inflight = 0
        self._stop = False
        self._endpoints: list[tuple[str, Any]] = []
        self._rr = 0
        self._unreported = 0
        self._running = False
        self.t0 = 0.0  # when the trace started (wall clock): surge times are t0 + k * step_s

    async def _refresh(self) -> None:
        try:
            ctl = ray.get_actor(CONTROLLER, namespace=self.namespace)
            names = await ctl.endpoints.remote(self.job)
        except Exception:  # controller restarting: keep the replicas we know
            return
        known = dict(self._endpoints)
        eps = []
        for n in names:
            h = known.get(n)
            if h is None:
                try:
                    h = ray.get_actor(n, namespace=self.namespace)
                except ValueError:
                    continue
            eps.append((n, h))
        self._endpoints = eps

    async def _refresh_proxy(self) -> None:
        """The listener of this node's Envoy, from the node's NodeAgent (its mesh participant)."""
        from dpu_agent.ingress import ProxyPool

        try:
            agent = ray.get_actor(agent_name(ray.get_runtime_context().get_node_id()),
                                  namespace=self.namespace)  # fmt: skip
            listener = (await agent.device_info.remote()).get("mesh", {}).get("listener")
        except Exception:  # agent restarting: keep the proxy we know
            return
        if listener and (self.proxy is None or self.proxy.proxy != listener):
            if self.proxy is not None:
                self.proxy.close()
            self.proxy = ProxyPool(listener)

    async def _refresh_mesh(self) -> None:
        await self._refresh()
        await self._refresh_proxy()
        await self._report_unsent()

    async def _one_http(self, sent_at: float) -> None:
        try:
            r = await self.proxy.get(self.job, sent_at=sent_at)
            self.codes[r.status] = self.codes.get(r.status, 0) + 1
            if r.status == 200:
                self.counts["ok"] += 1
                self.latencies_ms.append(r.latency_ms)
                self.replies[r.replica] = self.replies.get(r.replica, 0) + 1
            elif r.status in (429, 503):
                self.counts["rejected"] += 1
            elif r.status == 504:
                self.counts["timed_out"] += 1
            else:
                self.counts["failed"] += 1
        finally:
            self.inflight -= 1

    async def _one(self, handle: Any, sent_at: float) -> None:
        try:
            code = await handle.handle.remote(sent_at)
        except Exception:  # replica stopped or its node died mid-request
            self.counts["failed"] += 1
        else:
            if code == OK:
                self.counts["ok"] += 1
                self.latencies_ms.append((time.time() - sent_at) * 1e3)
            elif code == REJECTED:
                self.counts["rejected"] += 1
            elif code == TIMED_OUT:
                self.counts["timed_out"] += 1
        finally:
            self.inflight -= 1

    async def _report_unsent(self) -> None:
        if self._unreported and self._endpoints:
            n, self._unreported = self._unreported, 0
            _, h = self._endpoints[0]
            h.note_rejected.remote(n)

    async def run(self) -> dict[str, Any]:
        """Drive the trace to its end (or ``stop``); returns the report."""
        if self._running:
            raise RuntimeError("this load generator is already running")
        self._running = True
        refresher: asyncio.Task[None] | None = None
        if self.via_mesh:  # know the proxy before the first arrival
            await self._refresh_mesh()
        t0 = time.time()
        self.t0 = t0
        next_refresh = t0 + (self.refresh_s if self.via_mesh else 0.0)
        t_next = t0
        tasks: set[asyncio.Task[None]] = set()
        while not self._stop:
            now = time.time()
            elapsed = now - t0
            if elapsed >= self.duration_s or self.counts["sent"] + self.counts["unsent"] >= self.max_requests:
                break
            if now >= next_refresh:
                if self.via_mesh:
                    # in the background: arrivals never wait for the look-ups (latency is counted
                    # from each request's scheduled send, so a stall here would show as latency)
                    if refresher is None or refresher.done():
                        refresher = asyncio.get_running_loop().create_task(self._refresh_mesh())
                else:
                    await self._refresh()
                    await self._report_unsent()
                next_refresh = now + self.refresh_s
            rate = rate_at(self.trace, self.step_s, elapsed)
            if rate <= 0:
                t_next = now + 0.05
                await asyncio.sleep(0.05)  # idle step of the trace: wait for the rate to change
                continue
            # every arrival that is due by now goes out (Poisson: exponential gaps at ``rate``)
            while t_next <= now:
                if self.via_mesh and self.proxy is not None and self.inflight < self.max_inflight:
                    self.inflight += 1
                    self.counts["sent"] += 1
                    task = asyncio.get_running_loop().create_task(self._one_http(t_next))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif self.via_mesh or not self._endpoints or self.inflight >= self.max_inflight:
                    self.counts["unsent"] += 1
                    self._unreported += 1
                else:
                    _, h = self._endpoints[self._rr % len(self._endpoints)]
                    self._rr += 1
                    self.inflight += 1
                    self.counts["sent"] += 1
                    task = asyncio.get_running_loop().create_task(self._one(h, t_next))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                t_next += float(self.rng.exponential(1.0 / rate))
            await asyncio.sleep(max(0.0, t_next - time.time()))  # the arrival process itself
        if refresher is not None:
            await refresher
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        await self._report_unsent()
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        self._running = False
        return self.report()

    def stop(self) -> None:
        self._stop = True

    def report(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms)
        return {
            "job": self.job,
            **self.counts,
            "inflight": self.inflight,
            "t0": self.t0,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else math.nan,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else math.nan,
            **({"codes": dict(self.codes), "replies": dict(self.replies)} if self.via_mesh else {}),
        }
