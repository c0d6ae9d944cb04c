"""Load forecasters with prediction intervals (pure numpy/scipy).

Interface: ``update(value)`` with the next observed load (one per period),
``forecast(horizon) -> (mean, lo, hi)``, arrays of length ``horizon`` for
steps 1..horizon ahead, each interval a central (1 - delta) prediction
interval. ``make_forecaster(name, **options)`` builds one by name.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections import deque
from typing import ClassVar

import numpy as np
from scipy import optimize, stats


class Forecaster(ABC):
    """Base class: validates updates (finite, >= 0) and horizons; subclasses model the series."""

    name: ClassVar[str] = "forecaster"

    def __init__(self, *, delta: float = 0.1, seed: int = 0) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = float(delta)
        self.seed = int(seed)
        self.n = 0

    def update(self, value: float) -> None:
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{self.name}: load must be finite and >= 0, got {value!r}")
        self._update(v)
        self.n += 1

    def update_many(self, values: np.ndarray | list[float]) -> None:
        arr = np.asarray(values, dtype=float)
        if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"{self.name}: loads must be a 1-D array of finite values >= 0")
        for v in arr:
            self._update(float(v))
            self.n += 1

    def forecast(self, horizon: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        if self.n == 0:  # no data: say so with the widest interval
            h = int(horizon)
            return np.full(h, np.nan), np.zeros(h), np.full(h, np.inf)
        mean, sd = self._forecast(int(horizon))
        z = stats.norm.isf(self.delta / 2)
        return mean, np.maximum(mean - z * sd, 0.0), mean + z * sd

    def clone(self) -> Forecaster:
        return copy.deepcopy(self)

    @abstractmethod
    def _update(self, value: float) -> None: ...

    @abstractmethod
    def _forecast(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the forecast error for steps 1..horizon."""


class LastValue(Forecaster):
    """The baseline: tomorrow looks like today. Intervals treat the series as a random
    walk whose step spread is the sample spread of recent one-step changes."""

    name: ClassVar[str] = "last_value"

    def __init__(self, *, delta: float = 0.1, seed: int = 0, window: int = 200) -> None:
        super().__init__(delta=delta, seed=seed)
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self._last = 0.0
        self._steps: deque[float] = deque(maxlen=int(window))

    def _update(self, value: float) -> None:
        if self.n:
            self._steps.append(value - self._last)
        self._last = value

    def _forecast(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        steps = np.asarray(self._steps)
        s = float(np.sqrt(np.mean(steps**2))) if len(steps) else abs(self._last) + 1.0
        h = np.arange(1, horizon + 1)
        return np.full(horizon, self._last), s * np.sqrt(h)


class HoltWinters(Forecaster):
    """Additive Holt-Winters (level, trend, season of length ``period``).

    Smoothing parameters are fitted by minimizing the one-step squared error
    over the recent history (bounded: ``history`` points), refitted every
    ``refit_every`` updates. Interval variance follows the additive
    Holt-Winters state-space formula (Hyndman et al., class 1):
    var_h = s^2 (1 + sum_{j<h} (alpha + alpha*beta*j + gamma*[j % m == 0])^2).
    """

    name: ClassVar[str] = "holt_winters"

    def __init__(self, *, delta: float = 0.1, seed: int = 0, period: int = 1, history: int = 1000,
                 refit_every: int = 500) -> None:
        super().__init__(delta=delta, seed=seed)
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = int(period)
        self.refit_every = max(1, int(refit_every))
        self._hist: deque[float] = deque(maxlen=max(int(history), 4 * self.period + 4))
        self._params = (0.5, 0.05, 0.1 if self.period > 1 else 0.0)
        self._state: tuple[float, float, np.ndarray] | None = None
        self._sse = 0.0
        self._nerr = 0

    def _update(self, value: float) -> None:
        self._hist.append(value)
        if self.n + 1 >= 2 * self.period + 2 and (self._state is None or (self.n + 1) % self.refit_every == 0):
            self._refit()
        elif self._state is not None:
            err = self._step(value)
            self._sse += err * err
            self._nerr += 1

    def _init_state(self, y: np.ndarray) -> tuple[float, float, np.ndarray]:
        m = self.period
        level = float(np.mean(y[:m]))
        trend = float((np.mean(y[m: 2 * m]) - level) / m) if m > 1 else float(y[1] - y[0])
        season = y[:m] - level if m > 1 else np.zeros(1)
        return level, trend, season.astype(float)

    def _run(self, params: tuple[float, float, float], y: np.ndarray) -> tuple[float, tuple[float, float, np.ndarray], int]:
        a, b, g = params
        level, trend, season = self._init_state(y)
        season = season.copy()
        m = self.period
        sse, k = 0.0, 0
        for t in range(m, len(y)):
            i = t % m
            pred = level + trend + season[i]
            e = y[t] - pred
            sse += e * e
            k += 1
            new_level = level + trend + a * e
            trend = trend + a * b * e
            season[i] = season[i] + g * e
            level = new_level
        return sse, (level, trend, season), k

    def _refit(self) -> None:
        y = np.asarray(self._hist)
        g_hi = 0.5 if self.period > 1 else 0.0

        def loss(p: np.ndarray) -> float:
            return self._run((p[0], p[1], p[2]), y)[0]

        res = optimize.minimize(loss, np.array(self._params), method="L-BFGS-B",
                                bounds=[(0.01, 1.0), (0.0, 0.5), (0.0, g_hi)], options={"maxiter": 50})
        self._params = (float(res.x[0]), float(res.x[1]), float(res.x[2]))
        sse, self._state, k = self._run(self._params, y)
        self._sse, self._nerr = sse, k
        # Rotate the seasonal vector so that index 0 is the season of the next point.
        level, trend, season = self._state
        self._state = (level, trend, np.roll(season, -(len(y) % self.period)))

    def _step(self, value: float) -> float:
        assert self._state is not None
        a, b, g = self._params
        level, trend, season = self._state
        e = value - (level + trend + season[0])
        new_level = level + trend + a * e
        trend = trend + a * b * e
        season = np.roll(season, -1)
        season[-1] = season[-1] + g * e
        self._state = (new_level, trend, season)
        return e

    def _forecast(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        h = np.arange(1, horizon + 1)
        if self._state is None:  # too little data to fit: fall back to a random walk on what we have
            y = np.asarray(self._hist)
            s = float(np.std(np.diff(y))) if len(y) > 2 else abs(y[-1]) + 1.0
            return np.full(horizon, y[-1]), max(s, 1e-9) * np.sqrt(h)
        a, b, g = self._params
        level, trend, season = self._state
        mean = level + h * trend + season[(h - 1) % self.period]
        s2 = self._sse / max(self._nerr - 3, 1)
        j = np.arange(1, horizon)
        c = a * (1 + j * b) + g * ((j % self.period) == 0)
        var = s2 * (1 + np.concatenate([[0.0], np.cumsum(c * c)]))
        return mean, np.sqrt(var)


FORECASTERS: dict[str, type[Forecaster]] = {"last_value": LastValue, "holt_winters": HoltWinters}


def make_forecaster(name: str, **options: object) -> Forecaster:
    """A forecaster by registry name; unknown names raise ValueError listing the known ones."""
    try:
        cls = FORECASTERS[name]
    except KeyError:
        raise ValueError(f"unknown forecaster {name!r}; known: {sorted(FORECASTERS)}") from None
    return cls(**options)  # type: ignore[arg-type]
