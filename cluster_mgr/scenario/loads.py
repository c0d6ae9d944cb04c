"""Load shapes and traces: offered request rate (req/s) as a function of virtual time.

Every shape is deterministic for its seed and evaluated on whole arrays of
times at once (the sim asks for all telemetry windows of a run in one call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHAPES = ("constant", "diurnal", "ramp", "step", "bursty", "trace")


class TraceError(ValueError):
    """A trace file that cannot be used; the message says where and why."""


def read_trace(path: Path) -> np.ndarray:
    """One request rate per line (blank lines and '#' comments skipped); refuses NaN and < 0."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    values = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        try:
            v = float(s.split(",")[0])
        except ValueError:
            raise TraceError(f"{path}:{lineno}: not a number: {s!r}") from None
        if not math.isfinite(v):
            raise TraceError(f"{path}:{lineno}: rate is {v} (must be finite)")
        if v < 0:
            raise TraceError(f"{path}:{lineno}: rate {v:g} is negative")
        values.append(v)
    if not values:
        raise TraceError(f"{path}: trace holds no rates")
    return np.asarray(values, dtype=float)


@dataclass(frozen=True)
class LoadSpec:
    """One job's (or graph's) offered load.

    ``rate`` is the base rate (req/s). Shapes: ``constant``; ``diurnal``
    (rate * (1 + amplitude * sin(2 pi t / period_s + phase))); ``ramp`` (rate
    -> to between start_s and end_s); ``step`` (rate * factor in [at_s,
    until_s)); ``bursty`` (rate * burst_factor while on, rate while off, on and
    off periods exponential with means on_s and off_s, seeded); ``trace`` (the
    file's values, one per step_s, rescaled to mean ``rate`` when ``rate`` > 0
    else times ``scale``; ``mirror`` replays it forward then reversed, as
    Cilantro does; ``offset_s`` shifts it; it loops past its end).
    """

    shape: str = "constant"
    rate: float = 100.0
    amplitude: float = 0.5
    period_s: float = 86_400.0
    phase: float = 0.0
    to: float = 100.0
    start_s: float = 0.0
    end_s: float = 3600.0
    factor: float = 2.0
    at_s: float = 0.0
    until_s: float = math.inf
    burst_factor: float = 3.0
    on_s: float = 30.0
    off_s: float = 120.0
    seed: int = 0
    trace: np.ndarray | None = field(default=None, repr=False, compare=False)
    trace_path: str = ""
    step_s: float = 1.0
    scale: float = 1.0
    mirror: bool = False
    offset_s: float = 0.0

    def rates(self, t: np.ndarray) -> np.ndarray:
        """Offered rate (req/s) at each time in ``t`` (seconds since the scenario start)."""
        t = np.asarray(t, dtype=float)
        s = self.shape
        if s == "constant":
            out = np.full(t.shape, self.rate)
        elif s == "diurnal":
            out = self.rate * (
                1.0 + self.amplitude * np.sin(2 * np.pi * t / self.period_s + self.phase)
            )
        elif s == "ramp":
            span = max(self.end_s - self.start_s, 1e-9)
            frac = np.clip((t - self.start_s) / span, 0.0, 1.0)
            out = self.rate + (self.to - self.rate) * frac
        elif s == "step":
            out = np.where(
                (t >= self.at_s) & (t < self.until_s), self.rate * self.factor, self.rate
            )
        elif s == "bursty":
            out = np.where(self._bursts(t), self.rate * self.burst_factor, self.rate)
        elif s == "trace":
            out = self._trace_rates(t)
        else:  # the loader refuses unknown shapes; this is a programming error
            raise ValueError(f"unknown load shape {s!r}")
        return np.maximum(out, 0.0)

    def _bursts(self, t: np.ndarray) -> np.ndarray:
        if t.size == 0:
            return np.zeros(t.shape, dtype=bool)
        rng = np.random.default_rng(self.seed)
        horizon = float(np.max(t)) + 1.0
        edges, on, now = [0.0], [False], 0.0
        while now < horizon:
            now += rng.exponential(self.on_s if on[-1] else self.off_s)
            edges.append(now)
            on.append(not on[-1])
        idx = np.searchsorted(np.asarray(edges), t, side="right") - 1
        return np.asarray(on)[np.clip(idx, 0, len(on) - 1)]

    def _trace_rates(self, t: np.ndarray) -> np.ndarray:
        assert self.trace is not None
        values = np.concatenate([self.trace, self.trace[::-1]]) if self.mirror else self.trace
        k = np.floor((t + self.offset_s) / self.step_s).astype(np.int64) % len(values)
        v = values[k]
        if self.rate > 0:
            return v * (self.rate / max(float(values.mean()), 1e-12))
        return v * self.scale
