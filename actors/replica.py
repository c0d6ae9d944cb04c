"""An emulated service replica: an async Ray actor that serves real requests with real timing.

Service model (an M/M/c-like emulation). The replica has ``concurrency``
slots (they model cores: at most that many requests are in service at once)
and an emulated CPU quota (``cpu_quota`` CPUs, at most the placement-group
bundle reserved for it). A request waits for a free slot, then is in service
for ``base / frequency * max(1, busy / cpu_quota)``: ``base`` is drawn from the
job's workload model, ``frequency`` is the emulated frequency knob, and when
more slots are busy than the quota has CPUs they share it (processor sharing,
evaluated when the request starts). The stretch beyond ``base / frequency``
is counted as throttled time. Service time is an ``asyncio.sleep``: it is the
workload's emulated work, not a stand-in for any mechanism.

Workload keys (``JobSpec.workload``), all optional:

=============  ==========  ======================================================
key            default     meaning
=============  ==========  ======================================================
service_ms     5.0         mean service time of one request at 1 CPU, frequency 1
dist           "exp"       "exp" (exponential), "const", or "lognormal"
cv             1.0         coefficient of variation for "lognormal"
concurrency    ceil(quota) slots per replica (cores it may use at once)
queue          64          requests waiting for a slot before new ones are rejected
timeout_ms     10 x SLO    a request that waits longer for a slot times out
model          -           "inference": a request is a real forward pass of the digits
                           MLP at the plan's knob, really timed (actors/inference/serving.py)
=============  ==========  ======================================================

Latency is measured with the wall clock from arrival at the replica to
completion. Counters are kept per 100 ms fast window and rolled into 1 s
telemetry windows aligned to multiples of the window length (so replicas on
different nodes agree on window boundaries); closed windows wait in a
``WindowBuffer`` until a NodeAgent has taken them and acked them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from actors.window_buffer import WindowBuffer
from cluster_mgr.model import FAST_WINDOW_S, TELEMETRY_WINDOW_S, TelemetryWindow, latency_histogram
from cluster_mgr.telemetry import windows_to_batch

OK, REJECTED, TIMED_OUT = 0, 1, 2


class Slots:
    """A resizable counting semaphore with FIFO hand-off and timeouts (asyncio.Semaphore
    cannot change its size, and the fast path changes concurrency while requests wait)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.busy = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    async def acquire(self, timeout: float) -> bool:
        if self.busy < self.limit and not self._waiters:
            self.busy += 1
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            with suppress(ValueError):
                self._waiters.remove(fut)
            return False

    def release(self) -> None:
        if self.busy <= self.limit:
            while self._waiters:  # hand the slot straight to the oldest live waiter
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(True)
                    return
        self.busy -= 1

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        while self.busy < self.limit and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.busy += 1
                fut.set_result(True)

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())


@dataclass
class _Counts:
    offered: int = 0
    completed: int = 0
    rejected: int = 0
    timed_out: int = 0
    within_slo: int = 0
    exec_s: float = 0.0
    cpu_used_s: float = 0.0
    throttled_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    # per fast window only (the local controller's signals; not rolled into telemetry windows)
    upstream_s: float = 0.0  # sum of (arrival - sent) over arrivals that carried a send time
    upstream_n: int = 0
    wait_s: float = 0.0  # sum of slot waits of requests that got a slot
    started: int = 0

    def add(self, other: _Counts) -> None:
        self.offered += other.offered
        self.completed += other.completed
        self.rejected += other.rejected
        self.timed_out += other.timed_out
        self.within_slo += other.within_slo
        self.exec_s += other.exec_s
        self.cpu_used_s += other.cpu_used_s
        self.throttled_s += other.throttled_s
        self.latencies_ms.extend(other.latencies_ms)


def draw_service_s(workload: dict[str, Any], rng: np.random.Generator) -> float:
    mean = float(workload.get("service_ms", 5.0)) / 1e3
    dist = str(workload.get("dist", "exp"))
    if dist == "exp":
        return float(rng.exponential(mean))
    if dist == "const":
        return mean
    if dist == "lognormal":
        cv = float(workload.get("cv", 1.0))
        s2 = math.log1p(cv * cv)
        return float(rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2)))
    raise ValueError(f"workload.dist: expected 'exp', 'const' or 'lognormal', got {dist!r}")


class ReplicaCore:
    """The replica's service and windowing logic, without Ray (unit-testable in an event loop)."""

    def __init__(
        self,
        job: str,
        name: str,
        node_id: str,
        workload: dict[str, Any],
        slo_ms: float | None,
        cpu_quota: float,
        *,
        window_s: float = TELEMETRY_WINDOW_S,
        fast_window_s: float = FAST_WINDOW_S,
        max_rows: int = 600,
        seed: int = 0,
    ) -> None:
        self.job, self.name, self.node_id = job, name, node_id
        self.workload = dict(workload)
        draw_service_s(self.workload, np.random.default_rng(0))  # reject a bad model at start
        self.slo_ms = slo_ms
        self.size = float(cpu_quota)  # the reserved bundle: the quota never exceeds it
        self.cpu_quota = float(cpu_quota)
        self.frequency = 1.0
        conc = self.workload.get("concurrency")
        self.slots = Slots(int(conc) if conc else max(1, math.ceil(cpu_quota - 1e-9)))
        # an inference job's request is a real forward pass (actors/inference/serving.py)
        self.inference: Any = None
        if self.workload.get("model") == "inference":
            from actors.inference.serving import InferenceWork

            self.inference = InferenceWork(self.workload, self.slots.limit, seed)
        self.queue_limit = int(self.workload.get("queue", 64))
        default_timeout = 10.0 * slo_ms if slo_ms else 1000.0
        self.timeout_s = float(self.workload.get("timeout_ms", default_timeout)) / 1e3
        self.window_s, self.fast_s = float(window_s), float(fast_window_s)
        self.rng = np.random.default_rng(seed)
        self.buffer = WindowBuffer(max_rows=max_rows)
        self.seq = 0
        self.fast_history: deque[dict[str, float]] = deque(maxlen=50)
        now = time.time()
        self._fast_idx = math.floor(now / self.fast_s)
        self._win_idx = math.floor(now / self.window_s)
        self._win_start = now
        self._fast = _Counts()
        self._win = _Counts()
        self.mesh_port: int | None = None  # set when a meshed replica's ingress listens (Replica.ready)

    # -- windows ---------------------------------------------------------------------
    def roll(self, now: float | None = None) -> None:
        """Close every fast window (and telemetry window) that ended before ``now``."""
        now = time.time() if now is None else now
        target = math.floor(now / self.fast_s)
        if target - self._fast_idx > 6000:  # idle for over 10 minutes: skip empty history
            self._fast_idx = target - 6000
        while self._fast_idx < target:
            self._close_fast()
            self._fast_idx += 1
            boundary = (self._fast_idx * self.fast_s) / self.window_s
            if math.floor(boundary + 1e-9) > self._win_idx:
                self._close_window(self._win_idx + 1)

    def _close_fast(self) -> None:
        f = self._fast
        lat = f.latencies_ms
        # one pass of numpy per 100 ms: the signals a LocalController reads (signals.py)
        p99 = mean = math.nan
        if lat:
            arr = np.asarray(lat)
            p99, mean = float(np.percentile(arr, 99)), float(arr.mean())
        self.fast_history.append(
            {
                "window": self._fast_idx,
                "end": (self._fast_idx + 1) * self.fast_s,
                "offered": f.offered,
                "completed": f.completed,
                "rejected": f.rejected,
                "timed_out": f.timed_out,
                "within_slo": f.within_slo,
                "p99_ms": p99,  # the replica's own time (wait + service): exec P99 in signals
                "mean_ms": mean,
                "upstream_ms": f.upstream_s / f.upstream_n * 1e3 if f.upstream_n else math.nan,
                "queue_delay_ms": f.wait_s / f.started * 1e3 if f.started else math.nan,
                "work_ms": f.cpu_used_s * self.frequency / f.completed * 1e3 if f.completed else math.nan,
                "throttled_s": f.throttled_s,
                "busy": self.slots.busy,
                "waiting": self.slots.waiting,
                "cpu_quota": self.cpu_quota,
                "frequency": self.frequency,
                "concurrency": self.slots.limit,
            }
        )
        self._win.add(f)
        self._fast = _Counts()

    def _close_window(self, next_idx: int, end: float | None = None) -> None:
        w = self._win
        end = next_idx * self.window_s if end is None else end
        lat = np.asarray(w.latencies_ms, dtype=float)
        pct = np.percentile(lat, [50, 95, 99]) if len(lat) else (math.nan,) * 3
        window = TelemetryWindow(
            job=self.job,
            node_id=self.node_id,
            replica=self.name,
            seq=self.seq,
            start=max(self._win_start, self._win_idx * self.window_s),
            end=end,
            offered=w.offered,
            completed=w.completed,
            rejected=w.rejected,
            timed_out=w.timed_out,
            within_slo=w.within_slo,
            latency_mean_ms=float(lat.mean()) if len(lat) else math.nan,
            latency_p50_ms=float(pct[0]),
            latency_p95_ms=float(pct[1]),
            latency_p99_ms=float(pct[2]),
            exec_ms_mean=w.exec_s / w.completed * 1e3 if w.completed else math.nan,
            cpu_quota=self.cpu_quota,
            cpu_used_s=w.cpu_used_s,
            throttled_s=w.throttled_s,
            frequency=self.frequency,
            concurrency=self.slots.limit,
            latency_hist=tuple(latency_histogram(lat).tolist()),
            extras=self.inference.window_extras() if self.inference is not None else {},
        )
        self.buffer.put(windows_to_batch([window]))
        self.seq += 1
        self._win_idx = next_idx
        self._win_start = end
        self._win = _Counts()

    def flush(self) -> None:
        """Close the open (partial) window now: a replica about to stop hands over everything."""
        now = time.time()
        self.roll(now)
        self._close_fast()  # the open fast window, partial
        self._close_window(self._win_idx, end=now)  # same index: a later roll continues it

    def take(self, after: int = -1) -> tuple[pa.Table | None, int]:
        self.roll()
        batches, last = self.buffer.take(after)
        return (pa.Table.from_batches(batches) if batches else None), last

    # -- requests --------------------------------------------------------------------
    async def handle(self, sent_at: float = 0.0) -> int:
        arrival = time.time()
        self.roll(arrival)
        self._fast.offered += 1
        if sent_at > 0:  # time from the request's start to here (SurgeGuard's time-from-start)
            self._fast.upstream_s += max(0.0, arrival - sent_at)
            self._fast.upstream_n += 1
        if self.slots.waiting >= self.queue_limit:
            self._fast.rejected += 1
            return REJECTED
        if not await self.slots.acquire(self.timeout_s):
            self.roll()
            self._fast.timed_out += 1
            return TIMED_OUT
        got = time.time()
        self.roll(got)
        self._fast.wait_s += got - arrival
        self._fast.started += 1
        try:
            if self.inference is not None:  # real compute at the knob in force, really timed
                service = base = await self.inference.serve()
            else:
                base = draw_service_s(self.workload, self.rng) / self.frequency
                service = base * max(1.0, self.slots.busy / max(self.cpu_quota, 1e-3))
                await asyncio.sleep(service)  # the emulated work of the request (workload model)
        finally:
            self.slots.release()
        done = time.time()
        self.roll(done)
        lat_ms = (done - arrival) * 1e3
        f = self._fast
        f.completed += 1
        f.exec_s += service
        f.cpu_used_s += base
        f.throttled_s += service - base
        f.latencies_ms.append(lat_ms)
        if self.slo_ms is None or lat_ms <= self.slo_ms:
            f.within_slo += 1
        return OK

    def note_rejected(self, count: int) -> None:
        """Requests meant for this job that a load generator could not send: offered, rejected."""
        self.roll()
        self._fast.offered += count
        self._fast.rejected += count

    def set_knobs(
        self,
        concurrency: int | None = None,
        cpu_quota: float | None = None,
        frequency: float | None = None,
    ) -> dict[str, float]:
        """The fast path: no process starts. The quota stays within the reserved bundle."""
        if cpu_quota is not None:
            if cpu_quota <= 0:
                raise ValueError(f"cpu_quota must be > 0, got {cpu_quota}")
            self.cpu_quota = min(float(cpu_quota), self.size)
        if concurrency is not None:
            self.slots.set_limit(int(concurrency))
        if frequency is not None:
            if not 0 < frequency <= 4:
                raise ValueError(f"frequency must be in (0, 4], got {frequency}")
            self.frequency = float(frequency)
        return self.info()

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "job": self.job,
            "node_id": self.node_id,
            "size": self.size,
            "cpu_quota": self.cpu_quota,
            "concurrency": self.slots.limit,
            "frequency": self.frequency,
            "seq": self.seq,
            "slo_ms": self.slo_ms,
            "buffered": self.buffer.rows,
            "dropped": self.buffer.dropped_rows,
            "mesh_port": self.mesh_port,
            "knob": self.inference.knob if self.inference is not None else None,
        }


@ray.remote(num_cpus=0)  # the real num_cpus comes from .options(): the plan's bundle size
class Replica:
    """The Ray actor around ReplicaCore (async: requests are served concurrently)."""

    def __init__(self, job: str, name: str, workload: dict[str, Any], slo_ms: float | None,
                 cpu_quota: float, window_s: float = TELEMETRY_WINDOW_S,
                 fast_window_s: float = FAST_WINDOW_S, seed: int = 0) -> None:  # fmt: skip
        node_id = ray.get_runtime_context().get_node_id()
        self.core = ReplicaCore(job, name, node_id, workload, slo_ms, cpu_quota,
                                window_s=window_s, fast_window_s=fast_window_s, seed=seed)  # fmt: skip

    async def ready(self) -> dict[str, Any]:
        if self.core.workload.get("mesh") and self.core.mesh_port is None:
            # a meshed job (workload key ``mesh``): also serve HTTP on loopback, in this actor's
            # own event loop, so the node's Envoy can route requests to it (docs/mesh.md)
            from dpu_agent.ingress import start_ingress

            self._ingress = await start_ingress(self._http, self.core.name)
            self.core.mesh_port = self._ingress.port
        return self.core.info()

    async def _http(self, path: str, headers: Any) -> int:
        sent = headers.get("x-sent-at", "")
        code = await self.core.handle(float(sent) if sent else 0.0)
        return {OK: 200, REJECTED: 503, TIMED_OUT: 504}.get(code, 500)

    async def handle(self, sent_at: float = 0.0) -> int:
        return await self.core.handle(sent_at)

    async def note_rejected(self, count: int) -> None:
        self.core.note_rejected(count)

    async def take(self, after: int = -1) -> tuple[pa.Table | None, int]:
        return self.core.take(after)

    async def flush(self) -> None:
        self.core.flush()

    async def ack(self, upto: int) -> int:
        return self.core.buffer.ack(upto)

    async def set_inference_knob(self, knob: str) -> dict[str, Any]:
        """The plan's knob for an inference job (fast path: no process starts)."""
        if self.core.inference is None:
            raise ValueError(f"replica {self.core.name} serves no inference job")
        self.core.inference.set_knob(knob)
        return self.core.info()

    async def set_knobs(self, concurrency: int | None = None, cpu_quota: float | None = None,
                        frequency: float | None = None) -> dict[str, Any]:  # fmt: skip
        return self.core.set_knobs(concurrency, cpu_quota, frequency)

    async def info(self) -> dict[str, Any]:
        return self.core.info()

    async def fast_stats(self, n: int = 10) -> list[dict[str, float]]:
        self.core.roll()
        return list(self.core.fast_history)[-n:]

    async def fast_since(self, after: int) -> list[dict[str, float]]:
        """Closed fast windows with index > ``after`` (the LocalController's read, per window)."""
        self.core.roll()
        return [w for w in self.core.fast_history if w["window"] > after]
