"""The one Arrow schema for telemetry, and conversions to and from TelemetryWindow.

Telemetry crosses process boundaries (replica -> NodeAgent -> controller) as
pyarrow RecordBatches with this schema, and lands in the run log unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from cluster_mgr.model import TelemetryWindow

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("job", pa.string(), nullable=False),
        pa.field("node_id", pa.string(), nullable=False),
        pa.field("replica", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("offered", pa.int64()),
        pa.field("completed", pa.int64()),
        pa.field("rejected", pa.int64()),
        pa.field("timed_out", pa.int64()),
        pa.field("within_slo", pa.int64()),
        pa.field("latency_mean_ms", pa.float64()),
        pa.field("latency_p50_ms", pa.float64()),
        pa.field("latency_p95_ms", pa.float64()),
        pa.field("latency_p99_ms", pa.float64()),
        pa.field("exec_ms_mean", pa.float64()),
        pa.field("upstream_ms_mean", pa.float64()),
        pa.field("cpu_quota", pa.float64()),
        pa.field("cpu_used_s", pa.float64()),
        pa.field("throttled_s", pa.float64()),
        pa.field("frequency", pa.float64()),
        pa.field("concurrency", pa.int64()),
        pa.field("latency_hist", pa.list_(pa.int64())),
        pa.field("extras", pa.map_(pa.string(), pa.float64())),
    ],
    metadata={"cluster_mgr.schema": "telemetry/1"},
)

_SCALAR_FIELDS = [f.name for f in TELEMETRY_SCHEMA if f.name not in ("latency_hist", "extras")]


def windows_to_batch(windows: Sequence[TelemetryWindow]) -> pa.RecordBatch:
    """Columns in one pass; the schema is fixed, so a batch of zero windows is valid too."""
    cols: dict[str, list] = {name: [getattr(w, name) for w in windows] for name in _SCALAR_FIELDS}
    cols["latency_hist"] = [list(w.latency_hist) for w in windows]
    cols["extras"] = [list(w.extras.items()) for w in windows]
    return pa.RecordBatch.from_pydict(cols, schema=TELEMETRY_SCHEMA)


def batch_to_windows(batch: pa.RecordBatch | pa.Table) -> list[TelemetryWindow]:
    if batch.schema.remove_metadata() != TELEMETRY_SCHEMA.remove_metadata():
        raise ValueError(f"telemetry batch does not have the telemetry schema: {batch.schema}")
    d = batch.to_pydict()
    out = []
    for i in range(batch.num_rows):
        kw = {name: d[name][i] for name in _SCALAR_FIELDS}
        for name, value in kw.items():
            if value is None and TELEMETRY_SCHEMA.field(name).type == pa.float64():
                kw[name] = math.nan
        out.append(
            TelemetryWindow(
                **kw,
                latency_hist=tuple(d["latency_hist"][i] or ()),
                extras=dict(d["extras"][i] or ()),
            )
        )
    return out


def concat_batches(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    batches = list(batches)
    if not batches:
        return TELEMETRY_SCHEMA.empty_table()
    return pa.Table.from_batches(batches, schema=TELEMETRY_SCHEMA)


def merged_histogram(hists: Iterable[Sequence[int]]) -> np.ndarray:
    from cluster_mgr.model import N_LATENCY_BUCKETS

    total = np.zeros(N_LATENCY_BUCKETS, dtype=np.int64)
    for h in hists:
        if len(h):
            total += np.asarray(h, dtype=np.int64)
    return total
