"""A many-stream telemetry source, for measuring the telemetry path at scale.

Real replicas are processes, and this machine runs a handful of them; to
measure what the NodeAgent -> controller -> log -> learner path sustains, a
TelemetrySource closes, every telemetry window, one window for each of many
(job, replica) streams at once, in the same schema, with the same per-stream
``seq`` numbering and the same ``WindowBuffer`` take/ack protocol as a
replica. Counters are drawn from a workload model (Poisson arrivals at each
stream's rate, latencies from a fixed exponential-service histogram), so the
controller and learners see plausible data. Windows close on a timer thread
aligned to window boundaries; nothing here stands in for the mechanism
being measured (the agent's collection, the push, the log and the learners).

Drawing 96 Poisson bucket counts for each of 14,000 streams every second cost
~140 ms per window per source (a quarter of this machine's CPU for four
sources), so the source draws a bank of ``bank`` stream-windows once and each
window picks one bank row per stream at random: the same distribution per
stream-window, for the cost of a gather.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from actors.window_buffer import WindowBuffer
from cluster_mgr.model import LATENCY_BUCKET_EDGES_MS, N_LATENCY_BUCKETS, TELEMETRY_WINDOW_S
from cluster_mgr.telemetry import TELEMETRY_SCHEMA


def latency_probs(service_ms: float) -> np.ndarray:
    """Bucket probabilities of an exponential latency with mean ``service_ms``."""
    cdf = 1.0 - np.exp(-LATENCY_BUCKET_EDGES_MS / service_ms)
    p = np.diff(cdf)
    p[-1] += 1.0 - cdf[-1]
    return p / p.sum()


@ray.remote(num_cpus=0)
class TelemetrySource:
    def __init__(self, jobs: list[str], replicas_per_job: int, rate_rps: float, slo_ms: float,
                 service_ms: float = 5.0, window_s: float = TELEMETRY_WINDOW_S,
                 seed: int = 0, tag: str = "src", bank: int = 4096) -> None:  # fmt: skip
        self.node_id = ray.get_runtime_context().get_node_id()
        r = int(replicas_per_job)
        self.job = np.repeat(np.asarray(jobs, dtype=object), r)
        self.replica = np.array([f"{tag}:{j}:{k}" for j in jobs for k in range(r)], dtype=object)
        self.n = len(self.replica)
        self.rate, self.window_s = float(rate_rps), float(window_s)
        self.probs = latency_probs(service_ms)
        self.within_p = 1.0 - np.exp(-slo_ms / service_ms)
        self.rng = np.random.default_rng(seed)
        offered = self.rng.poisson(self.rate * self.window_s, bank)
        self.bank_hist = self.rng.poisson(offered[:, None] * self.probs[None, :])
        self.bank_completed = self.bank_hist.sum(axis=1)
        self.bank_offered = np.maximum(offered, self.bank_completed)
        self.bank_within = self.rng.binomial(self.bank_completed, self.within_p)
        self.buffer = WindowBuffer(max_rows=self.n * 120)  # two minutes of windows
        self.seq = 0
        self.produced = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._job_arr = pa.array(self.job.tolist(), pa.string())
        self._rep_arr = pa.array(self.replica.tolist(), pa.string())
        self._node_arr = pa.array([self.node_id] * self.n, pa.string())
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self.n

    def _run(self) -> None:
        k = int(time.time() // self.window_s) + 1
        while not self._stop.is_set():
            # wait for the window boundary: windows close on wall-clock multiples
            if self._stop.wait(max(0.0, k * self.window_s - time.time())):
                break
            batch = self._window(k)
            with self.lock:
                self.buffer.put(batch)
                self.produced += batch.num_rows
            k += 1

    def _window(self, k: int) -> pa.RecordBatch:
        n, ws = self.n, self.window_s
        pick = self.rng.integers(0, len(self.bank_offered), n)
        offered, hist = self.bank_offered[pick], self.bank_hist[pick]
        completed, within = self.bank_completed[pick], self.bank_within[pick]
        nan = np.full(n, np.nan)
        zeros = np.zeros(n, dtype=np.int64)
        cols = {
            "job": self._job_arr, "node_id": self._node_arr, "replica": self._rep_arr,
            "seq": pa.array(np.full(n, self.seq, dtype=np.int64)),
            "start": pa.array(np.full(n, (k - 1) * ws)), "end": pa.array(np.full(n, k * ws)),
            "offered": pa.array(offered.astype(np.int64)), "completed": pa.array(completed),
            "rejected": pa.array(zeros), "timed_out": pa.array(np.maximum(offered - completed, 0)),
            "within_slo": pa.array(within), "latency_mean_ms": pa.array(nan),
            "latency_p50_ms": pa.array(nan), "latency_p95_ms": pa.array(nan),
            "latency_p99_ms": pa.array(nan), "exec_ms_mean": pa.array(nan),
            "upstream_ms_mean": pa.array(nan), "cpu_quota": pa.array(np.ones(n)),
            "cpu_used_s": pa.array(np.zeros(n)), "throttled_s": pa.array(np.zeros(n)),
            "frequency": pa.array(np.ones(n)), "concurrency": pa.array(np.ones(n, dtype=np.int64)),
            "latency_hist": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * N_LATENCY_BUCKETS, N_LATENCY_BUCKETS, dtype=np.int32)),
                pa.array(hist.reshape(-1).astype(np.int64)),
            ),
            "extras": pa.array([[]] * n, pa.map_(pa.string(), pa.float64())),
        }  # fmt: skip
        self.seq += 1
        return pa.RecordBatch.from_arrays([cols[f.name] for f in TELEMETRY_SCHEMA], schema=TELEMETRY_SCHEMA)

    def take(self, after: int = -1) -> tuple[pa.Table | None, int]:
        with self.lock:
            batches, last = self.buffer.take(after)
        return (pa.Table.from_batches(batches) if batches else None), last

    def ack(self, upto: int) -> int:
        with self.lock:
            return self.buffer.ack(upto)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"produced": self.produced, "streams": self.n, "buffered": self.buffer.rows,
                    "dropped": self.buffer.dropped_rows, "node_id": self.node_id}  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
