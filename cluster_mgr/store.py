"""The durable run log: telemetry, decisions, policy state and events at a storage URI.

Layout (one folder per table under the log's root; pyarrow.fs, so any URI that
pyarrow understands works: a local path by default, a shared store on a cluster)::

    <root>/telemetry/part-<writer>-<seq>.parquet
    <root>/decisions/part-<writer>-<seq>.parquet
    <root>/events/part-<writer>-<seq>.parquet

Each flush writes one part-file under a temporary name and renames it into
place when complete, so a crash never leaves a half-written part and never
loses a window that was flushed. Read any table with ``RunLog.read(table)`` or
``pandas.read_parquet(<root>/<table>)``.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cluster_mgr.telemetry import TELEMETRY_SCHEMA

DECISION_SCHEMA = pa.schema(
    [
        pa.field("round", pa.int64()),
        pa.field("epoch", pa.int64()),
        pa.field("time", pa.float64()),
        pa.field("policy", pa.string()),
        pa.field("allocation", pa.string()),  # JSON of Allocation.to_dict()
        pa.field("plan", pa.string()),  # JSON of PlacementPlan.to_dict()
        pa.field("policy_state", pa.string()),  # JSON of the policy's plain-data state
        pa.field("decision_ms", pa.float64()),
        pa.field("enforced", pa.bool_()),
        pa.field("note", pa.string()),
    ]
)

EVENT_SCHEMA = pa.schema(
    [
        pa.field("time", pa.float64()),
        pa.field("kind", pa.string()),
        pa.field("subject", pa.string()),
        pa.field("detail", pa.string()),  # JSON
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "telemetry": TELEMETRY_SCHEMA,
    "decisions": DECISION_SCHEMA,
    "events": EVENT_SCHEMA,
}


# Telemetry parts: zstd (4x smaller than the default snappy on histograms, same speed),
# dictionaries only for the repetitive string columns, no statistics on the histogram
# list column (its min/max say nothing). Readers need no options.
_WRITE_OPTIONS: dict[str, dict[str, Any]] = {
    "telemetry": {
        "compression": "zstd",
        "use_dictionary": ["job", "node_id", "replica"],
        "write_statistics": ["job", "node_id", "replica", "seq", "start", "end"],
    },
}


class RunLog:
    """Append-only, crash-safe log of one run (or one manager deployment).

    Thread-safe. Several writers (processes) may share a root: part names carry
    a writer id, so they never collide.
    """

    def __init__(self, uri: str, writer: str | None = None) -> None:
        if "://" in uri:
            self._fs, self._root = pafs.FileSystem.from_uri(uri)
        else:
            self._fs, self._root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.writer = writer or uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._seq = 0
        for table in SCHEMAS:
            self._fs.create_dir(f"{self._root}/{table}", recursive=True)

    @property
    def root(self) -> str:
        return self._root

    def append(self, table: str, data: pa.RecordBatch | pa.Table) -> str | None:
        """Write ``data`` as one new part of ``table``; returns its path (None if empty)."""
        schema = SCHEMAS.get(table)
        if schema is None:
            raise ValueError(f"unknown log table {table!r}; expected one of {sorted(SCHEMAS)}")
        if data.num_rows == 0:
            return None
        if data.schema.remove_metadata() != schema.remove_metadata():
            raise ValueError(f"{table}: data does not match the log schema: {data.schema}")
        t = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        with self._lock:
            self._seq += 1
            name = f"part-{self.writer}-{self._seq:09d}.parquet"
        final = f"{self._root}/{table}/{name}"
        tmp = f"{self._root}/{table}/.{name}.tmp"
        with self._fs.open_output_stream(tmp) as out:
            pq.write_table(t.cast(schema), out, **_WRITE_OPTIONS.get(table, {}))
        self._fs.move(tmp, final)  # atomic on local and POSIX-like filesystems
        return final

    def append_decision(self, **row: Any) -> str | None:
        row.setdefault("note", "")
        row.setdefault("enforced", False)
        for key in ("allocation", "plan", "policy_state"):
            if not isinstance(row.get(key), str):
                row[key] = json.dumps(row.get(key), sort_keys=True, default=_json_default)
        batch = pa.RecordBatch.from_pylist([row], schema=DECISION_SCHEMA)
        return self.append("decisions", batch)

    def append_event(
        self, time: float, kind: str, subject: str, detail: Mapping[str, Any] | None = None
    ) -> str | None:
        row = {
            "time": time,
            "kind": kind,
            "subject": subject,
            "detail": json.dumps(dict(detail or {}), sort_keys=True, default=_json_default),
        }
        return self.append("events", pa.RecordBatch.from_pylist([row], schema=EVENT_SCHEMA))

    def parts(self, table: str) -> list[str]:
        sel = pafs.FileSelector(f"{self._root}/{table}", allow_not_found=True)
        infos = self._fs.get_file_info(sel)
        return sorted(
            i.path
            for i in infos
            if i.is_file and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
        )

    def read(self, table: str, parts: Sequence[str] | None = None) -> pa.Table:
        """Every complete part of ``table`` (ignores temporary files of a crashed writer), or
        just ``parts`` (paths from ``parts(table)``)."""
        schema = SCHEMAS[table]
        parts = self.parts(table) if parts is None else list(parts)
        if not parts:
            return schema.empty_table()
        tables = [pq.read_table(p, filesystem=self._fs, schema=schema) for p in parts]
        return pa.concat_tables(tables)

    def replica_marks(self, node_id: str) -> dict[str, int]:
        """The highest telemetry ``seq`` logged per replica of ``node_id`` (two columns read,
        row groups of other nodes skipped by their statistics): what a restarted NodeAgent that
        logs its own telemetry needs to drop windows it already logged."""
        marks: dict[str, int] = {}
        for p in self.parts("telemetry"):
            t = pq.read_table(p, filesystem=self._fs, columns=["replica", "seq"],
                              filters=[("node_id", "==", node_id)])  # fmt: skip
            if not t.num_rows:
                continue
            g = t.group_by("replica").aggregate([("seq", "max")])
            for r, s in zip(g.column("replica").to_pylist(), g.column("seq_max").to_pylist(),
                            strict=True):  # fmt: skip
                marks[r] = max(int(s), marks.get(r, -1))
        return marks

    def read_decisions(self) -> list[dict[str, Any]]:
        rows = self.read("decisions").to_pylist()
        for r in rows:
            for key in ("allocation", "plan", "policy_state"):
                r[key] = json.loads(r[key]) if r[key] else None
        return sorted(rows, key=lambda r: (r["epoch"], r["round"]))


class PartBuffer:
    """Rows for one log table held in memory and written as one part per ``flush``.

    Writing a Parquet part per NodeAgent push cost ~110 ms per 14,000-row push on
    the controller's thread; one part per flush interval writes the same rows in
    fewer, larger parts, off the ingest path. Crash safety moves to the protocol:
    each ``add`` carries a tag (the controller uses (node, agent, push id)), and
    ``flush`` returns the tags whose rows it made durable, so the sender frees its
    copies only then (windows stay at their sources until acked). A crash before
    a flush loses only rows whose senders still hold them.
    """

    def __init__(self, log: RunLog, table: str) -> None:
        if table not in SCHEMAS:
            raise ValueError(f"unknown log table {table!r}; expected one of {sorted(SCHEMAS)}")
        self.log = log
        self.table = table
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one flush at a time: parts keep arrival order
        self._data: list[pa.Table] = []
        self._tags: list[Any] = []
        self._rows = 0
        self.parts_written = 0
        self.rows_written = 0

    @property
    def rows(self) -> int:
        return self._rows

    def add(self, data: pa.Table | pa.RecordBatch | None, tag: Any = None) -> int:
        """Buffer ``data`` (may be empty: the tag still becomes durable at the next flush)."""
        with self._lock:
            if data is not None and data.num_rows:
                self._data.append(data if isinstance(data, pa.Table) else pa.Table.from_batches([data]))
                self._rows += data.num_rows
            if tag is not None:
                self._tags.append(tag)
            return self._rows

    def flush(self) -> tuple[pa.Table | None, list[Any]]:
        """Write everything buffered as one part (renamed into place); returns (rows, tags)."""
        with self._write_lock:
            with self._lock:
                data, tags = self._data, self._tags
                self._data, self._tags, self._rows = [], [], 0
            if not data:
                return None, tags
            t = pa.concat_tables(data) if len(data) > 1 else data[0]
            try:
                self.log.append(self.table, t)
            except BaseException:
                with self._lock:  # not durable: keep it (and its tags) for the next flush
                    self._data, self._tags = data + self._data, tags + self._tags
                    self._rows += t.num_rows
                raise
            self.parts_written += 1
            self.rows_written += t.num_rows
            return t, tags


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_json_atomic(path: str, payload: Mapping[str, Any] | Sequence[Any]) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:6]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
