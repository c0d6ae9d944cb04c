"""What the fast layer records, and the surge metrics over it (DESIGN.md; SurgeGuard, Nodens).

A ``Trace`` is one graph's run at fast-window resolution: end-to-end P99 per
window, the quota and frequency in force, which windows enforced a change,
and reversals. Per surge event, over the event plus a tail (the backlog a late
reaction built still hurts after the surge ends), up to the next event on the
same instance:

* magnitude: integral of max(0, (P99 - target) / target) dt, in seconds;
* duration: fast windows with P99 over target;
* recovery: windows from the first over target to the first back within
  (0 when never over; to the end of the span when never back);
* reaction: windows from the first over target to the first window in which a
  change the controller made is in force (None when it never acted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cluster_mgr.model import FAST_WINDOW_S
from cluster_mgr.sim.fastwin import SurgeEvent

#: A change against the previous one within this many decision intervals is a reversal.
REVERSAL_INTERVALS = 3


@dataclass(frozen=True)
class Trace:
    """One graph's run: arrays over fast windows (W) and its instances (n)."""

    name: str
    p99_ms: np.ndarray  # (W, n)
    slo_ms: np.ndarray  # (n,)
    quota: np.ndarray  # (W, n, S) in force during each window (summed over the instance's rows)
    frequency: np.ndarray  # (W, n, S) quota-weighted mean
    enforced: np.ndarray  # (W, n) bool: a change decided earlier took effect in this window
    reversals: int
    changes: int


class ReversalCounter:
    """Counts knob moves and reversals (a move against the previous one within 3 intervals)."""

    def __init__(self, shape: tuple[int, ...], interval: int) -> None:
        self.last_dir = np.zeros(shape)
        self.last_w = np.full(shape, -(10**9))
        self.interval = interval
        self.reversals = 0
        self.changes = 0

    def record(self, w: int, old: np.ndarray, new: np.ndarray) -> None:
        d = np.sign(np.round(new - old, 6))
        moved = d != 0
        near = w - self.last_w <= REVERSAL_INTERVALS * self.interval
        rev = moved & (d == -self.last_dir) & near
        self.reversals += int(rev.sum())
        self.changes += int(moved.sum())
        self.last_dir = np.where(moved, d, self.last_dir)
        self.last_w = np.where(moved, w, self.last_w)


@dataclass(frozen=True)
class EventScore:
    magnitude_s: float
    duration_windows: int
    recovery_windows: int
    reaction_windows: int | None


def event_spans(
    events: Sequence[SurgeEvent], n_windows: int, tail_s: float
) -> list[tuple[int, int, int]]:
    """(instance, first window, end window) per event, cut at the next event on the instance."""
    spans = []
    for e in events:
        start = int(round(e.start_s / FAST_WINDOW_S))
        end = int(round((e.end_s + tail_s) / FAST_WINDOW_S))
        nxt = [o.start_s for o in events if o.node == e.node and o.start_s > e.start_s]
        if nxt:
            end = min(end, int(round(min(nxt) / FAST_WINDOW_S)))
        spans.append((e.node, start, min(end, n_windows)))
    return spans


def score_event(trace: Trace, node: int, start: int, end: int) -> EventScore:
    p, slo = trace.p99_ms[start:end, node], trace.slo_ms[node]
    over = p > slo
    mag = float(np.maximum((p - slo) / slo, 0.0).sum() * FAST_WINDOW_S)
    if not over.any():
        return EventScore(mag, 0, 0, 0)
    w0 = int(np.argmax(over))
    back = np.nonzero(~over[w0:])[0]
    rec = int(back[0]) if len(back) else len(over) - w0
    acted = np.nonzero(trace.enforced[start + w0 + 1 : end, node])[0]
    react = int(acted[0]) + 1 if len(acted) else None
    return EventScore(mag, int(over.sum()), rec, react)


def core_seconds(trace: Trace, frequency_weighted: bool = False) -> float:
    """Quota held over the run (sum over instances and services), optionally x frequency."""
    q = trace.quota * (trace.frequency if frequency_weighted else 1.0)
    return float(q.sum() * FAST_WINDOW_S)
