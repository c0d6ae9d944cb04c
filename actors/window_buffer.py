"""Closed telemetry windows kept until a NodeAgent has taken them and the controller has them.

Every telemetry source (a replica, or the benchmark's many-job source) puts
closed windows here as Arrow batches. A NodeAgent ``take``s everything after
the last entry it took and, once the controller confirmed receipt, ``ack``s up
to that entry, which frees it. A restarted agent has forgotten what it took,
takes from the oldest unacked entry again, and the controller drops the
duplicates by (replica, seq): so an agent restart loses nothing.

The buffer is bounded (``max_rows``): when nobody collects for that long the
oldest windows are dropped and counted; the replica ``seq`` gap then shows the
loss at the controller, so it is recorded, never silent.
"""

from __future__ import annotations

from collections import deque

import pyarrow as pa


class WindowBuffer:
    def __init__(self, max_rows: int = 10_000) -> None:
        self.max_rows = int(max_rows)
        self._entries: deque[tuple[int, pa.RecordBatch]] = deque()
        self._next = 0
        self._rows = 0
        self.dropped_rows = 0
        self.acked = -1

    def put(self, batch: pa.RecordBatch) -> int:
        if batch.num_rows == 0:
            return self._next - 1
        self._entries.append((self._next, batch))
        self._next += 1
        self._rows += batch.num_rows
        while self._rows > self.max_rows and len(self._entries) > 1:
            _, old = self._entries.popleft()
            self._rows -= old.num_rows
            self.dropped_rows += old.num_rows
        return self._next - 1

    def take(self, after: int = -1) -> tuple[list[pa.RecordBatch], int]:
        """Batches of entries after ``after`` (all unacked ones with -1), and the last entry id."""
        out = [b for i, b in self._entries if i > after]
        last = self._entries[-1][0] if self._entries else max(after, self.acked)
        return out, max(last, after)

    def ack(self, upto: int) -> int:
        """Free entries up to ``upto``; returns how many rows are still held."""
        while self._entries and self._entries[0][0] <= upto:
            _, b = self._entries.popleft()
            self._rows -= b.num_rows
        self.acked = max(self.acked, upto)
        return self._rows

    @property
    def rows(self) -> int:
        return self._rows
