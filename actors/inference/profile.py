"""Measure every knob setting for real: accuracy with a CI, latency by the clock, memory in bytes.

- accuracy: predictions on the held-out set (>= 800 samples), Wilson 95% interval;
- latency: ``perf_counter`` around whole requests (``batch`` samples each) on one
  BLAS thread, so a setting's time is the time of one core;
- memory: bytes of the arrays the compiled network holds, plus the peak working
  set of one in-flight request (activations, factor intermediates, dequantisation block).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from actors.inference.data import Split, request_batches
from actors.inference.knobs import KnobSetting, compile_setting
from actors.inference.model import MLPWeights

#: Samples per request: chosen so that the full network costs >= 5 ms on one core here.
REQUEST_BATCH = 128


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good coverage near 0 and 1)."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    den = 1 + z * z / total
    mid = (p + z * z / (2 * total)) / den
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


@dataclass(frozen=True)
class KnobProfile:
    setting: KnobSetting
    correct: int
    total: int
    latency_ms: tuple[float, ...]  # one core, one request of ``batch`` samples
    weight_bytes: int
    activation_bytes: int  # per in-flight request
    macs_per_sample: int
    batch: int
    correct_mask: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    @property
    def knob(self) -> str:
        return self.setting.id

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def accuracy_ci(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    @property
    def latency_p50_ms(self) -> float:
        return float(np.median(self.latency_ms))

    @property
    def latency_mean_ms(self) -> float:
        return float(np.mean(self.latency_ms))

    def memory_bytes(self, workers: int = 1) -> int:
        """Weights are shared by a replica's workers; each worker has its own request working set."""
        return self.weight_bytes + workers * self.activation_bytes


def measure_accuracy(weights: MLPWeights, setting: KnobSetting, split: Split) -> np.ndarray:
    """Per held-out sample: did the network of ``setting`` classify it right?"""
    net = compile_setting(weights, setting)
    return net.predict(split.x_test) == split.y_test


def profile_settings(
    weights: Mapping[bool, MLPWeights],
    settings: Iterable[KnobSetting],
    split: Split,
    *,
    batch: int = REQUEST_BATCH,
    reps: int = 20,
    seed: int = 0,
    group: int = 16,
) -> list[KnobProfile]:
    """Measure each setting; ``weights`` maps noise_aware -> the weights trained that way.

    Timing is interleaved over ``group`` settings at a time (one request of each
    per pass), so a burst of interference from other work on the machine is
    spread over many settings instead of landing on one.
    """
    from threadpoolctl import threadpool_limits  # ships with scikit-learn (the inference extra)

    settings = list(settings)
    requests = request_batches(split.x_test, batch, reps, seed)
    out: list[KnobProfile] = []
    with threadpool_limits(1):  # one core per worker: latency scales with the CPU given
        for g in range(0, len(settings), group):
            chunk = settings[g : g + group]
            nets = [compile_setting(weights[s.noise_aware], s) for s in chunk]
            masks = [net.predict(split.x_test) == split.y_test for net in nets]
            for net in nets:  # warm-up (first-touch of arrays, allocator)
                net.logits(requests[0])
            times: list[list[float]] = [[] for _ in chunk]
            for r in requests:
                for i, net in enumerate(nets):
                    t0 = time.perf_counter()
                    net.logits(r)
                    times[i].append((time.perf_counter() - t0) * 1e3)
            for s, net, mask, ts in zip(chunk, nets, masks, times, strict=True):
                out.append(
                    KnobProfile(
                        setting=s,
                        correct=int(mask.sum()),
                        total=int(mask.size),
                        latency_ms=tuple(ts),
                        weight_bytes=net.weight_bytes,
                        activation_bytes=net.activation_bytes(batch),
                        macs_per_sample=net.macs_per_sample,
                        batch=batch,
                        correct_mask=mask,
                    )
                )
    return out
