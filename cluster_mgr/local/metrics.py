"""Surge metrics over a Trace (DESIGN.md "Metric definitions"; SurgeGuard, Nodens).

Per surge event, over the event plus a tail (the backlog a late reaction built
still hurts after the surge ends), up to the next event on the same node:

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

from cluster_mgr.local.batch import Trace
from cluster_mgr.local.emulator import SurgeEvent
from cluster_mgr.model import FAST_WINDOW_S


@dataclass(frozen=True)
class EventScore:
    magnitude_s: float
    duration_windows: int
    recovery_windows: int
    reaction_windows: int | None


def event_spans(
    events: Sequence[SurgeEvent], n_windows: int, tail_s: float
) -> list[tuple[int, int, int]]:
    """(node, first window, end window) per event, cut at the next event on the node."""
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
    """Quota held over the run (sum over nodes and services), optionally x frequency."""
    q = trace.quota * (trace.frequency if frequency_weighted else 1.0)
    return float(q.sum() * FAST_WINDOW_S)
