"""InferenceService: serves requests with the current knob setting and reports what it measured.

Switching the knob is the fast path: compiled networks of recent settings are
kept (a small LRU), so a switch back costs nothing and a new one costs one
compile (an SVD per low-rank layer), never a process start. A Ray replica
wraps one service; the service itself needs no Ray.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from actors.inference.knobs import KnobSetting, compile_setting
from actors.inference.model import ApproxNet, MLPWeights


@dataclass(frozen=True)
class ServiceWindow:
    """What the service measured since the last ``window()`` call."""

    knob: str
    requests: int
    latency_ms: tuple[float, ...]
    memory_bytes: int
    correct: int  # among requests that carried labels
    labelled: int

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latency_ms, 99)) if self.latency_ms else float("nan")


class InferenceService:
    def __init__(
        self, weights: Mapping[bool, MLPWeights], setting: KnobSetting, *, cache_size: int = 4
    ) -> None:
        self._weights = dict(weights)
        self._cache: OrderedDict[KnobSetting, ApproxNet] = OrderedDict()
        self._cache_size = cache_size
        self._lat: list[float] = []
        self._correct = self._labelled = 0
        self.setting = setting
        self._net = self._compiled(setting)

    def _compiled(self, setting: KnobSetting) -> ApproxNet:
        if setting in self._cache:
            self._cache.move_to_end(setting)
        else:
            self._cache[setting] = compile_setting(self._weights[setting.noise_aware], setting)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self._cache[setting]

    def set_knob(self, setting: KnobSetting) -> None:
        """Apply a new knob setting; requests after this call use it."""
        self._net = self._compiled(setting)
        self.setting = setting

    def serve(self, x: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """Classify one request; returns (predictions, latency in ms)."""
        t0 = time.perf_counter()
        pred = self._net.predict(x)
        ms = (time.perf_counter() - t0) * 1e3
        self._lat.append(ms)
        if labels is not None:
            self._correct += int((pred == labels).sum())
            self._labelled += len(labels)
        return pred, ms

    def memory_bytes(self, batch: int) -> int:
        return self._net.memory_bytes(batch)

    def window(self, batch: int) -> ServiceWindow:
        w = ServiceWindow(
            knob=self.setting.id,
            requests=len(self._lat),
            latency_ms=tuple(self._lat),
            memory_bytes=self.memory_bytes(batch),
            correct=self._correct,
            labelled=self._labelled,
        )
        self._lat, self._correct, self._labelled = [], 0, 0
        return w
