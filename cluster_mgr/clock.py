"""Injectable clocks (trio-style): control loops take a Clock so the same loop
runs in wall-clock time under Ray and in virtual time in tests and the sim."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds; only differences are meaningful."""
        ...

    def sleep_until(self, deadline: float) -> None:
        """Block until ``now() >= deadline`` (returns at once if already past)."""
        ...


class SystemClock:
    """Wall-clock time (Unix seconds, so log records line up across processes)."""

    def now(self) -> float:
        return time.time()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.time()
        if remaining > 0:
            time.sleep(remaining)


class ManualClock:
    """A test clock: time moves only when ``advance`` or ``sleep_until`` says so.

    ``sleep_until`` jumps straight to the deadline, so a control loop driven by
    this clock runs as fast as the machine allows and deterministically.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards (advance {seconds})")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep_until(self, deadline: float) -> None:
        with self._lock:
            self._now = max(self._now, deadline)
