"""What a sim run leaves behind for metrics, plots and bench: plain numpy arrays, saved as one .npz.

"Apps" are what users judge: every job that is not a graph service, and every
microservice graph as a whole (its requests are the end-to-end ones). Per
window arrays are (W, A) for apps and (W, J) for jobs; rounds are (R, J).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunResult:
    policy: str
    policy_kind: str
    scenario: str
    seed: int
    window_s: float
    warmup_s: float
    objective: str
    # apps
    app_names: list[str]
    app_weight: np.ndarray  # (A,)
    app_metric: list[str]  # "latency" | "throughput" | "none"
    app_target: np.ndarray  # latency target ms (nan if none); throughput target req/s
    app_threshold: np.ndarray
    app_scaling: list[str]
    times: np.ndarray  # (W,) window start
    offered: np.ndarray  # (W, A)
    completed: np.ndarray
    within: np.ndarray
    timed_out: np.ndarray
    p50_ms: np.ndarray
    p99_ms: np.ndarray
    reward: np.ndarray
    utility: np.ndarray
    present: np.ndarray  # (W, A) bool: the app exists in this window
    app_cpu: np.ndarray  # (W, A) CPUs in force
    app_load: np.ndarray  # (W, A) offered req/s
    hist: np.ndarray  # (A, B) request-level histogram over the evaluation period
    # truth-derived, per window (computed by the engine, which knows the truth)
    fair_utility: np.ndarray  # (W, A) utility at the entitlement share (nan: not defined)
    truth_utility: (
        np.ndarray
    )  # (W, A) expected utility at the allocation in force (no sampling noise)
    resource_loss: np.ndarray  # (W,) CPUs given where they raise no utility while others want more
    max_load: (
        np.ndarray
    )  # (A,) highest load each app sustains within SLO alone on the whole cluster
    # resources
    cpu_used: np.ndarray  # (W,) CPUs in force over all jobs
    pim_used: np.ndarray  # (W,) PIM cores in force
    capacity_cpu: np.ndarray  # (W,) schedulable CPUs
    # rounds
    round_times: np.ndarray  # (R,)
    decision_ms: np.ndarray  # (R,)
    moves: np.ndarray  # (R,)
    round_cpu: np.ndarray  # (R, J) decided CPUs per job
    job_names: list[str]
    failures: int = 0
    wall_s: float = 0.0
    #: JSON-able sections a run adds beside the metrics (e.g. "inference": bounds met, accuracy)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            else:
                meta[f.name] = v
        arrays["__meta__"] = np.array(json.dumps(meta))
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> RunResult:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        return cls(**meta, **arrays)

    @property
    def eval_mask(self) -> np.ndarray:
        """Windows after the warm-up (DESIGN.md: headline statistics are over the evaluation period)."""
        return self.times >= self.warmup_s

    @property
    def duration_s(self) -> float:
        return float(len(self.times) * self.window_s)
