"""What a Ray replica of an inference job computes: a real forward pass at the knob in force.

``InferenceWork`` wraps an ``InferenceService`` for ``actors.replica``: each
request classifies a batch of ``REQUEST_BATCH`` held-out digits (with their
labels, so accuracy is measured too) on a worker thread with one BLAS
thread, and its time is the real time of that computation. The knob arrives
with the plan (workload key ``knob`` at start, ``set_knob`` afterwards) and
switching it is the fast path: no process starts.

Workload keys (``JobSpec.workload``, model = "inference"): ``widths``,
``epochs`` (the TrainConfig, see actors.inference.measured), ``knob_space``
("full" or "compact"), ``knob`` (a knob id; default the full model).

Per telemetry window the replica also reports what the controller's latency
model describes: the execution times of the forward passes (timed on the
worker thread, not the actor call or the slot wait), summarised in fixed-size
extras (``exec_extras``: their count and a seeded uniform sample of at most
``EXEC_SAMPLES`` of them) because telemetry extras are numbers per window;
``exec_samples`` reads them back as the learner's ``service_ms``.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from actors.inference.data import load_split
from actors.inference.knobs import full_setting
from actors.inference.measured import KNOB_SPACES, setting_by_id, train_config, weights_for
from actors.inference.profile import REQUEST_BATCH
from actors.inference.service import InferenceService

#: Distinct request batches a replica cycles through (drawn once, seeded).
POOL = 64
#: Execution times a window reports at most: as many as the sim feeds its learners per window
#: (cluster_mgr/sim/inference.py SERVICE_SAMPLES), so one window weighs the same in both.
EXEC_SAMPLES = 16
EXEC_N = "inference_exec_n"
EXEC_MS = "inference_exec_ms_"


def exec_extras(times_ms: list[float], rng: np.random.Generator) -> dict[str, float]:
    """A window's execution times as extras: their count and a uniform sample (without
    replacement) of at most EXEC_SAMPLES of them. A uniform sample, not quantiles: pooled over
    windows it samples each window's requests with the tail at its real frequency, while
    mid-quantile pseudo-samples would never show the top few percent the P99 depends on. (A
    busy window is capped at EXEC_SAMPLES, so pooled windows weigh alike, not by requests.)"""
    picked = (
        list(times_ms)
        if len(times_ms) <= EXEC_SAMPLES
        else [times_ms[j] for j in sorted(rng.choice(len(times_ms), EXEC_SAMPLES, replace=False))]
    )
    out = {EXEC_N: float(len(times_ms))}
    out.update({f"{EXEC_MS}{j}": float(t) for j, t in enumerate(picked)})
    return out


def exec_samples(extras: dict[str, float]) -> list[float]:
    """The execution times (ms) ``exec_extras`` put in a window's extras, in order."""
    n = min(int(extras.get(EXEC_N, 0)), EXEC_SAMPLES)
    return [float(extras[f"{EXEC_MS}{j}"]) for j in range(n) if f"{EXEC_MS}{j}" in extras]


def is_inference(workload: dict[str, Any]) -> bool:
    return workload.get("model") == "inference"


def check_knob(workload: dict[str, Any], knob: str | None) -> str | None:
    """Why ``knob`` cannot run for this workload (None: it can): the prepare-phase vote."""
    if knob is None:
        return None
    try:
        setting_by_id(str(workload.get("knob_space", "full")), knob)
    except KeyError as exc:
        return str(exc)
    return None


class InferenceWork:
    def __init__(self, workload: dict[str, Any], workers: int, seed: int = 0) -> None:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn (the extra)

        # one BLAS thread per worker: a request's time is one core's time, as profiled
        self._limits = threadpool_limits(1)
        cfg = train_config(workload)
        self.space = str(workload.get("knob_space", "full"))
        # telemetry extras are numbers: the knob in force travels as its index in the space
        self._index = {s.id: i for i, s in enumerate(KNOB_SPACES[self.space].settings())}
        knob = workload.get("knob") or full_setting(len(cfg.widths)).id
        self.service = InferenceService(weights_for(cfg), setting_by_id(self.space, str(knob)))
        split = load_split(cfg.data_seed)
        rng = np.random.default_rng(seed)
        idx = [rng.integers(0, len(split.y_test), size=REQUEST_BATCH) for _ in range(POOL)]
        self.requests = [(split.x_test[i], split.y_test[i]) for i in idx]
        self._next = 0
        # (knob that ran, ms) per request since the last window: appended on worker threads
        # (list.append is atomic), swapped out by window_extras on the event loop
        self._exec: list[tuple[str, float]] = []
        self._pick = np.random.default_rng([seed, 1])  # which execution times a window reports
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="infer")

    @property
    def knob(self) -> str:
        return self.service.setting.id

    def set_knob(self, knob: str) -> None:
        """Requests that start after this call run ``knob`` (compiled once, then cached)."""
        if knob != self.knob:
            self.service.set_knob(setting_by_id(self.space, knob))

    def _run(self, x: np.ndarray, y: np.ndarray) -> float:
        # the knob this request runs (a switch between this read and the pass is one stray
        # sample); its time goes to that knob, so a mid-window switch mixes no knobs' times
        knob = self.service.setting.id
        t0 = time.perf_counter()
        self.service.serve(x, y)
        dt = time.perf_counter() - t0
        self._exec.append((knob, dt * 1e3))
        return dt

    async def serve(self) -> float:
        """One request on a worker thread; returns its compute time (s)."""
        x, y = self.requests[self._next % POOL]
        self._next += 1
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._run, x, y)

    def window_extras(self) -> dict[str, float]:
        """Per telemetry window: the knob in force (its index in the knob space), its memory, the
        labelled accuracy counts and the execution times of requests that ran that knob
        (``exec_extras``); ``KnobModels.learn`` in actors/inference/control.py reads them."""
        w = self.service.window(REQUEST_BATCH)
        done, self._exec = self._exec, []
        return {
            "inference_knob": float(self._index[w.knob]),
            "inference_memory_mb": w.memory_bytes / 2**20,
            "inference_correct": float(w.correct),
            "inference_labelled": float(w.labelled),
            **exec_extras([ms for k, ms in done if k == w.knob], self._pick),
        }
