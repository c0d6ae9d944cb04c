"""The run log: parts renamed into place, schemas enforced, crashes lose no closed part."""

from __future__ import annotations

import pandas as pd
import pytest

from cluster_mgr.model import TelemetryWindow, latency_histogram
from cluster_mgr.store import RunLog
from cluster_mgr.telemetry import batch_to_windows, windows_to_batch


def _window(seq: int) -> TelemetryWindow:
    return TelemetryWindow(
        job="a", node_id="n1", replica="a-0", seq=seq, start=seq, end=seq + 1, offered=10, completed=9,
        rejected=1, within_slo=8, latency_p99_ms=12.5, latency_hist=tuple(latency_histogram([1.0, 2.0, 50.0])),
        extras={"rate_limited": 1.0},
    )


def test_telemetry_round_trips_through_arrow() -> None:
    ws = [_window(i) for i in range(3)]
    back = batch_to_windows(windows_to_batch(ws))
    assert back[1].latency_hist == ws[1].latency_hist and back[2].extras == {"rate_limited": 1.0}
    assert [w.seq for w in back] == [0, 1, 2]


def test_log_is_readable_with_pandas_and_ignores_partial_files(tmp_path) -> None:
    log = RunLog(str(tmp_path / "log"), writer="w1")
    log.append("telemetry", windows_to_batch([_window(0), _window(1)]))
    log.append("telemetry", windows_to_batch([_window(2)]))
    # A writer that died mid-write leaves only a hidden temporary file behind.
    (tmp_path / "log" / "telemetry" / ".part-w2-000000001.parquet.tmp").write_bytes(b"garbage")
    assert log.read("telemetry").num_rows == 3
    df = pd.read_parquet(tmp_path / "log" / "telemetry" / log.parts("telemetry")[0].split("/")[-1])
    assert list(df["seq"]) == [0, 1]


def test_decisions_round_trip_and_bad_tables_are_refused(tmp_path) -> None:
    log = RunLog(str(tmp_path / "log"))
    log.append_decision(round=1, epoch=1, time=30.0, policy="fair_share", allocation={"amounts": {}},
                        plan={"shares": []}, policy_state={"duals": [0.5]}, decision_ms=1.2, enforced=True)
    rows = log.read_decisions()
    assert rows[0]["policy_state"] == {"duals": [0.5]} and rows[0]["enforced"] is True
    with pytest.raises(ValueError, match="unknown log table"):
        log.append("nope", windows_to_batch([_window(0)]))
    with pytest.raises(ValueError, match="schema"):
        log.append("decisions", windows_to_batch([_window(0)]))


def test_part_buffer_writes_one_part_per_flush_and_reports_durable_tags(tmp_path) -> None:
    from cluster_mgr.store import PartBuffer

    log = RunLog(str(tmp_path / "log"), writer="w1")
    buf = PartBuffer(log, "telemetry")
    buf.add(windows_to_batch([_window(0)]), tag=("n1", "agent", 1))
    buf.add(None, tag=("n2", "agent", 7))  # an empty push still becomes durable with the part
    buf.add(windows_to_batch([_window(1), _window(2)]), tag=("n1", "agent", 2))
    assert log.read("telemetry").num_rows == 0  # buffered, not yet in the log
    table, tags = buf.flush()
    assert table is not None and table.num_rows == 3 and len(log.parts("telemetry")) == 1
    assert tags == [("n1", "agent", 1), ("n2", "agent", 7), ("n1", "agent", 2)]
    assert buf.flush() == (None, []) and len(log.parts("telemetry")) == 1


def test_part_buffer_keeps_rows_when_a_write_fails(tmp_path, monkeypatch) -> None:
    from cluster_mgr.store import PartBuffer

    log = RunLog(str(tmp_path / "log"), writer="w1")
    buf = PartBuffer(log, "telemetry")
    buf.add(windows_to_batch([_window(0)]), tag=1)

    def broken(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr(log, "append", broken)
    with pytest.raises(OSError):
        buf.flush()
    monkeypatch.undo()
    buf.add(windows_to_batch([_window(1)]), tag=2)
    table, tags = buf.flush()
    assert table is not None and table.num_rows == 2 and tags == [1, 2]
    assert [r["seq"] for r in log.read("telemetry").to_pylist()] == [0, 1]


def test_replica_marks_per_node_and_reading_listed_parts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    log = RunLog(str(tmp_path / "log"), writer="w1")
    first = log.append("telemetry", windows_to_batch([_window(0), _window(1)]))
    other = replace(_window(7), node_id="n2", replica="b-0")
    log.append("telemetry", windows_to_batch([_window(2), other]))
    assert log.replica_marks("n1") == {"a-0": 2}
    assert log.replica_marks("n2") == {"b-0": 7}
    assert log.replica_marks("n3") == {}
    assert log.read("telemetry", parts=[first]).num_rows == 2
