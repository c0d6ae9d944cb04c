"""The backend-neutral control core: feedback, placement, GlobalAllocator (no Ray, ManualClock)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocators.policies.fair_share import ProportionalFairShare
from cluster_mgr.clock import ManualClock
from cluster_mgr.control.global_allocator import GlobalAllocator, spec_from_dict, spec_to_dict
from cluster_mgr.feedback import SIGMA_FLOOR, TelemetryLedger, aggregate, as_table, feedback
from cluster_mgr.model import (
    SLO,
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    PlacementPlan,
    ResourceVector,
    TelemetryWindow,
    histogram_percentile,
    latency_histogram,
)
from cluster_mgr.place import PlanError, check_plan, make_plan, plan_diff, replica_sizes
from cluster_mgr.store import RunLog
from learners.base import Learner


class CountingLearner(Learner):
    """A minimal learner: the weighted mean of values, flat in the allocation (for plumbing tests)."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []

    def _learn_batch(self, alloc, load, value, sigma) -> None:  # type: ignore[no-untyped-def]
        self.values.extend(value.tolist())

    def bounds(self, alloc, load):  # type: ignore[no-untyped-def]
        m = float(np.mean(self.values)) if self.values else 0.5
        a = np.asarray(alloc, dtype=float).reshape(-1)
        return np.full(a.shape, m - 0.1), np.full(a.shape, m), np.full(a.shape, m + 0.1)


def win(job: str, replica: str, seq: int, start: float, lat_ms: list[float], *, rejected: int = 0,
        timed_out: int = 0, slo_ms: float = 10.0, quota: float = 1.0, node: str = "n1") -> TelemetryWindow:  # fmt: skip
    lat = np.asarray(lat_ms, dtype=float)
    within = int((lat <= slo_ms).sum())
    return TelemetryWindow(
        job=job, node_id=node, replica=replica, seq=seq, start=start, end=start + 1.0,
        offered=len(lat) + rejected + timed_out, completed=len(lat), rejected=rejected,
        timed_out=timed_out, within_slo=within, cpu_quota=quota,
        latency_hist=tuple(latency_histogram(lat).tolist()),
    )  # fmt: skip


JOBS = (
    JobSpec("a", slo=SLO(target=10.0), weight=1.0, replica_cpus=1.0),
    JobSpec("b", slo=SLO(target=10.0), weight=3.0, replica_cpus=1.0),
)


def nodes(n: int = 3, cpu: float = 4.0) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(f"n{i}", ResourceVector(cpu=cpu)) for i in range(n))


# --------------------------------------------------------------------------- feedback


def test_aggregate_merges_replicas_and_counts_rejects_as_misses() -> None:
    w1 = win("a", "a-0", 0, 100.0, [1.0] * 90 + [50.0] * 10, rejected=5, quota=0.5)
    w2 = win("a", "a-1", 0, 100.02, [2.0] * 100, timed_out=5, quota=0.7, node="n2")
    w3 = win("b", "b-0", 0, 100.0, [3.0] * 10)
    jw = aggregate([w1, w2, w3])
    assert len(jw) == 2
    i = list(jw.job).index("a")
    assert jw.offered[i] == 210 and jw.within_slo[i] == 190 and jw.replicas[i] == 2
    assert jw.cpu_quota[i] == pytest.approx(1.2)
    merged = np.asarray(w1.latency_hist) + np.asarray(w2.latency_hist)
    assert jw.p99()[i] == pytest.approx(histogram_percentile(merged, 99.0))
    fb = feedback(jw, {j.name: j for j in JOBS})
    k = list(fb.job).index("a")
    assert fb.value[k] == pytest.approx(190 / 210)  # rejected and timed out are misses
    assert fb.load[k] == pytest.approx(210.0)
    assert fb.alloc[k, 0] == pytest.approx(1.2)
    p = 190 / 210
    assert fb.sigma[k] == pytest.approx(max(math.sqrt(p * (1 - p) / 210), SIGMA_FLOOR))
    kb = list(fb.job).index("b")
    assert fb.value[kb] == 1.0 and fb.sigma[kb] == SIGMA_FLOOR


def test_windows_without_traffic_give_no_observation() -> None:
    jw = aggregate([win("a", "a-0", 0, 0.0, [])])
    assert len(jw) == 1 and len(feedback(jw, {})) == 0


def test_throughput_slo_reward() -> None:
    spec = JobSpec("t", slo=SLO(metric="throughput", target=200.0))
    fb = feedback(aggregate([win("t", "t-0", 0, 0.0, [1.0] * 100)]), {"t": spec})
    assert fb.value[0] == pytest.approx(0.5)


def test_ledger_drops_duplicates_and_counts_gaps() -> None:
    led = TelemetryLedger()
    first = as_table([win("a", "r", s, float(s), [1.0]) for s in (0, 1, 2)])
    assert led.admit(first).num_rows == 3
    again = as_table([win("a", "r", s, float(s), [1.0]) for s in (1, 2, 3, 5)])
    kept = led.admit(again)
    assert kept.column("seq").to_pylist() == [3, 5]
    assert led.duplicates == 2 and led.lost == 1 and led.lost_by_replica == {"r": 1}
    led.record_lost("x", 4)
    assert led.lost == 5


# --------------------------------------------------------------------------- placement


def test_plan_keeps_shares_and_moves_off_dead_nodes() -> None:
    alloc = Allocation({"a": ResourceVector(cpu=2.0), "b": ResourceVector(cpu=6.0)}, epoch=1)
    first = make_plan(alloc, JOBS, nodes(), None, epoch=1, round=1)
    check_plan(first.plan, nodes())
    assert sum(s.resources.cpu for s in first.plan.shares) == pytest.approx(8.0)
    again = make_plan(alloc, JOBS, nodes(), first.plan, epoch=2, round=2)
    assert again.moves == 0 and again.plan.shares == first.plan.shares
    dead = first.plan.shares[0].node_id
    left = tuple(NodeInfo(n.node_id, n.capacity, alive=n.node_id != dead) for n in nodes())
    moved = make_plan(alloc, JOBS, left, first.plan, epoch=3, round=3)
    assert all(s.node_id != dead for s in moved.plan.shares)
    assert moved.moves >= 1
    diff = plan_diff(first.plan, moved.plan)
    assert any(v < 0 for v in diff[dead].values())


def test_check_plan_rejects_overcommit() -> None:
    plan = PlacementPlan(1, 1, (NodeShare("n0", "a", 5, ResourceVector(cpu=5.0)),))
    with pytest.raises(PlanError):
        check_plan(plan, nodes())


@pytest.mark.parametrize("cpu,rc", [(2.5, 1.0), (0.3, 1.0), (4.0, 2.0), (1.0, 0.3)])
def test_replica_sizes_sum_to_share(cpu: float, rc: float) -> None:
    share = NodeShare("n0", "a", max(1, math.ceil(cpu / rc - 1e-9)), ResourceVector(cpu=cpu))
    sizes = replica_sizes(share, rc)
    assert sum(sizes) == pytest.approx(cpu)
    assert max(sizes) <= rc + 1e-9 and min(sizes) >= 0.1 - 1e-9


# --------------------------------------------------------------------------- allocator


def make_ga(tmp_path, clock: ManualClock, shadow: bool = False) -> GlobalAllocator:  # type: ignore[no-untyped-def]
    return GlobalAllocator(
        JOBS, ProportionalFairShare(), lambda spec: CountingLearner(), clock,
        RunLog(str(tmp_path / "log"), writer="ga"), round_s=30.0, shadow=shadow,
    )  # fmt: skip


def test_rounds_epochs_and_logged_decisions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(1000.0)
    ga = make_ga(tmp_path, clock)
    assert ga.due()
    d1 = ga.step(nodes())
    assert d1.plan.epoch == 1 and d1.allocation.get("b").cpu == pytest.approx(9.0)
    assert d1.allocation.get("a").cpu == pytest.approx(3.0)
    assert not ga.due()
    clock.advance(29.0)
    assert not ga.due()
    clock.advance(1.0)
    assert ga.due()
    d2 = ga.step(nodes())
    assert d2.plan.epoch == 2 and d2.moves == 0 and d2.decision_ms > 0
    rows = ga.log.read_decisions()  # type: ignore[union-attr]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["allocation"]["amounts"]["b"]["cpu"] == pytest.approx(9.0)


def test_ingest_settles_after_grace_and_feeds_learners(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(100.0)
    ga = make_ga(tmp_path, clock)
    ga.ingest([win("a", "a-0", 0, 100.0, [1.0] * 50, quota=1.5)])
    assert ga.counters["observations"] == 0  # the other replica may still report this window
    ga.ingest([win("a", "a-1", 0, 100.0, [20.0] * 50, quota=1.5)])
    clock.advance(3.0)
    ga.settle()
    assert ga.counters["observations"] == 1
    learner = ga.model("a")
    assert isinstance(learner, CountingLearner) and learner.values == [pytest.approx(0.5)]
    assert ga.feedback_of("a").cpu == pytest.approx(3.0)
    assert ga.feedback_of("a").load == pytest.approx(100.0)
    # a straggler for a window already learned is counted late and learned as its own
    # observation (never dropped, never merged into the one already learned)
    ga.ingest([win("a", "a-2", 0, 100.0, [1.0] * 5), win("a", "a-3", 0, 100.0, [20.0] * 5)])
    assert ga.counters["late"] == 2 and ga.counters["observations"] == 2
    assert learner.values == [pytest.approx(0.5), pytest.approx(0.5)]
    assert ga.feedback_of("a").load == pytest.approx(100.0)  # the latest window still rules


def test_observe_vectorized_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ga = make_ga(tmp_path, ManualClock())
    ga.observe(["a", "b", "a"], np.array([[1.0], [2.0], [1.0]]), np.array([10.0, 20.0, 10.0]),
               np.array([0.9, 0.8, 0.7]), np.full(3, 0.05), 5.0)  # fmt: skip
    assert ga.model("a").values == [0.9, 0.7]  # type: ignore[union-attr]
    assert ga.model("b").values == [0.8]  # type: ignore[union-attr]
    snap = ga.snapshot(nodes())
    assert snap.loads["b"] == 20.0 and set(snap.models) == {"a", "b"}


def test_drain_and_submit_remove(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    ga = make_ga(tmp_path, clock)
    ga.step(nodes())
    ga.drain("n0")
    assert ga.due()
    d = ga.step(nodes())
    assert all(s.node_id != "n0" for s in d.plan.shares)
    assert d.allocation.total().cpu <= 8.0 + 1e-9
    ga.submit(JobSpec("c", weight=4.0))
    d = ga.step(nodes())
    assert d.allocation.get("c").cpu == pytest.approx(4.0)
    with pytest.raises(ValueError):
        ga.submit(JobSpec("huge", minimum=ResourceVector(cpu=100.0)))
    assert "huge" not in {j.name for j in ga.jobs}
    ga.remove("c")
    with pytest.raises(KeyError):
        ga.remove("c")
    ex = ga.explain("a")
    assert ex.job == "a" and ex.allocation["cpu"] > 0 and "capacity" in ex.binding


def test_shadow_logs_note(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ga = make_ga(tmp_path, ManualClock(), shadow=True)
    d = ga.step(nodes())
    assert d.shadow
    assert ga.log.read_decisions()[0]["note"].startswith("shadow")  # type: ignore[union-attr]


def test_restore_replays_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(50.0)
    ga = make_ga(tmp_path, clock)
    ga.submit(JobSpec("c", weight=2.0, workload={"service_ms": 3.0}))
    ga.step(nodes())
    ga.step(nodes())
    batch = as_table([win("a", "a-0", s, 50.0 + s, [1.0] * 10) for s in range(3)])
    ga.log.append("telemetry", batch)  # type: ignore[union-attr]
    ga.ingest_batch(batch)
    clock.advance(10.0)
    ga.settle()
    fresh = GlobalAllocator(JOBS, ProportionalFairShare(), lambda s: CountingLearner(), clock,
                            ga.log, round_s=30.0)  # fmt: skip
    assert fresh.restore() == 3
    assert "c" in {j.name for j in fresh.jobs}
    assert fresh.epoch == ga.epoch  # the next plan is last + 1
    assert fresh.plan == ga.plan and fresh.last is not None
    assert fresh.model("a").values == ga.model("a").values  # type: ignore[union-attr]
    # windows the old incarnation already had are duplicates now
    fresh.ingest_batch(batch)
    assert fresh.counters["duplicates"] == 3
    d = fresh.step(nodes())
    assert d.plan.epoch == ga.epoch + 1


def test_aborted_plan_leaves_the_last_good_plan_in_force(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(50.0)
    ga = make_ga(tmp_path, clock)
    good = ga.step(nodes())
    clock.advance(30.0)
    ga.submit(JobSpec("c", weight=2.0))
    refused = ga.step(nodes())
    assert refused.plan.epoch == good.plan.epoch + 1 and ga.plan == refused.plan
    ga.abort_plan(refused.plan.epoch, {"n1/mesh": "no capacity"})
    assert ga.plan == good.plan and ga.last == good.allocation and ga.epoch == refused.plan.epoch
    events = [e for e in ga.log.read("events").to_pylist() if e["kind"] == "plan_aborted"]  # type: ignore[union-attr]
    assert len(events) == 1 and "no capacity" in events[0]["detail"]
    nxt = ga.step(nodes())
    assert nxt.plan.epoch == refused.plan.epoch + 1  # a refused epoch is never reused
    ga.abort_plan(nxt.plan.epoch, {"n2/pim": "timeout"})
    # a restarted controller takes the last plan that was not refused, and fences past all
    fresh = GlobalAllocator(JOBS, ProportionalFairShare(), lambda s: CountingLearner(), clock,
                            ga.log, round_s=30.0)  # fmt: skip
    fresh.restore()
    assert fresh.plan == good.plan and fresh.epoch == nxt.plan.epoch


def test_spec_roundtrip() -> None:
    spec = JobSpec("x", slo=SLO(target=5.0), minimum=ResourceVector(cpu=0.5), pins=("n1",),
                   maximum=ResourceVector(cpu=3.0), workload={"service_ms": 2.0})  # fmt: skip
    assert spec_from_dict(spec_to_dict(spec)) == spec


def test_ledger_seed_and_rollback() -> None:
    ledger = TelemetryLedger()
    ledger.seed({"a-0": 4})
    t = as_table([win("a", "a-0", s, 100.0 + s, [1.0]) for s in range(3, 8)])
    state = ledger.checkpoint()
    fresh = ledger.admit(t)
    assert fresh.column("seq").to_pylist() == [5, 6, 7] and ledger.duplicates == 2
    ledger.rollback(state)  # the rows could not be logged: admitting them again finds them new
    assert ledger.mark("a-0") == 4 and ledger.duplicates == 0
    assert ledger.admit(t).num_rows == 3


def test_partial_sums_learn_like_the_rows_they_sum(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = [win(j, f"{j}-{r}", s, 100.0 + s, [1.0] * 10 + [30.0] * (r + 1)) for j in ("a", "b")
            for r in range(3) for s in range(4)]  # fmt: skip
    # the clock inside the windows: nothing is final (nor late) before flush
    by_rows, by_sums = make_ga(tmp_path / "1", ManualClock(101.0)), make_ga(tmp_path / "2", ManualClock(101.0))
    by_rows.ingest_batch(as_table(rows))
    for r in range(3):  # one agent's partial sums per replica group, as agents send them
        by_sums.ingest_partials(aggregate([w for w in rows if w.replica.endswith(f"-{r}")]))
    by_rows.flush()
    by_sums.flush()
    assert by_rows.counters["windows"] == by_sums.counters["windows"] == len(rows)
    for job in ("a", "b"):
        assert by_rows.model(job).values == by_sums.model(job).values  # type: ignore[union-attr]
