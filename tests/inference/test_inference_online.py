"""Online latency learning on the Ray path, without Ray: the replica's execution-time summary
(``exec_extras`` -> telemetry extras -> ``exec_samples``), the controller's ``KnobModels.learn``
feeding it to the knob_profile learner, and the learner's robustness to one outlier window."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from actors.inference.control import KnobModels
from actors.inference.serving import EXEC_N, EXEC_SAMPLES, exec_extras, exec_samples
from allocators.base import Snapshot
from allocators.inference import KnobPolicy, set_bounds
from cluster_mgr.model import SLO, JobKind, JobSpec, NodeInfo, ResourceVector, TelemetryWindow
from cluster_mgr.telemetry import windows_to_batch
from learners.knob_profile import (
    KnobLatencyModel,
    KnobPrior,
    KnobProfileLearner,
    KnobProfileModel,
)

WORKLOAD = {"model": "inference", "widths": [96, 96, 96], "epochs": 8, "knob_space": "compact"}
FULL = "e3-fb32.fb32.fb32-std"
EARLY = "e1-fb32-std"


def _lat(rng: np.random.Generator, ms: float, n: int, sd: float = 0.1) -> list[float]:
    return list(ms * np.exp(rng.normal(0.0, sd, n)))


def _learner(seed: int = 1) -> KnobProfileLearner:
    rng = np.random.default_rng(seed)
    return KnobProfileLearner(
        [
            KnobPrior(FULL, tuple(_lat(rng, 10.0, 12)), 9_000_000, 500_000, 780, 800),
            KnobPrior(EARLY, tuple(_lat(rng, 4.0, 12)), 3_000_000, 300_000, 770, 800),
        ]
    )


def test_exec_summary_round_trip() -> None:
    rng = np.random.default_rng(0)
    few = [3.0, 1.5, 2.25]
    ex = exec_extras(few, rng)
    assert ex[EXEC_N] == 3.0 and exec_samples(ex) == few  # all of them, in order
    many = _lat(np.random.default_rng(1), 5.0, 200)
    ex = exec_extras(many, np.random.default_rng(7))
    got = exec_samples(ex)
    assert ex[EXEC_N] == 200.0 and len(got) == EXEC_SAMPLES == len(ex) - 1  # fixed size
    assert len(set(got)) == EXEC_SAMPLES and set(got) <= set(many)  # a sample, no repeats
    assert exec_samples(exec_extras(many, np.random.default_rng(7))) == got  # seeded
    assert exec_samples({}) == [] and exec_samples(exec_extras([], rng)) == []
    # pooled over windows the sample is uniform: its mean and tail track the requests'
    pool = [t for _ in range(200) for t in exec_samples(exec_extras(many, rng))]
    assert np.mean(pool) == pytest.approx(np.mean(many), rel=0.03)
    assert np.quantile(pool, 0.99) == pytest.approx(np.quantile(many, 0.99), rel=0.1)


def test_inference_work_reports_its_execution_times() -> None:
    """A real InferenceWork (conftest's small network): each request's forward pass is timed
    and the window reports them for the knob that ran."""
    pytest.importorskip("sklearn")
    from actors.inference.serving import InferenceWork

    w = InferenceWork(dict(WORKLOAD, knob=FULL), workers=1, seed=3)
    try:

        async def run(k: int) -> list[float]:
            return [await w.serve() for _ in range(k)]

        secs = asyncio.run(run(3))
        ex = w.window_extras()
        assert ex[EXEC_N] == 3.0
        assert exec_samples(ex) == pytest.approx([s * 1e3 for s in secs], rel=1e-9)
        w.set_knob(EARLY)  # times of the old knob are not reported as the new one's
        asyncio.run(run(2))
        ex = w.window_extras()
        assert ex[EXEC_N] == 2.0 and len(exec_samples(ex)) == 2
        assert w.window_extras()[EXEC_N] == 0.0  # a window without requests reports none
    finally:
        w.pool.shutdown()
        w._limits.restore_original_limits()  # the BLAS limit is per process: give it back


def _models(learner: KnobProfileLearner) -> tuple[KnobModels, KnobProfileModel]:
    """The controller's KnobModels with a synthetic-prior model for the job (no profiling)."""
    spec = JobSpec("digits", kind=JobKind.INFERENCE, slo=SLO(target=50.0), workload=WORKLOAD)
    models = KnobModels(lambda: {"digits": spec})
    models._models["digits"] = model = KnobProfileModel(learner, latency_bound_ms=50.0)
    return models, model


def _window(seq: int, knob: str, times_ms: list[float], cpu: float, rng: np.random.Generator
            ) -> TelemetryWindow:  # fmt: skip
    from actors.inference.measured import KNOB_SPACES

    ids = [s.id for s in KNOB_SPACES["compact"].settings()]
    extras = {"inference_knob": float(ids.index(knob)), "inference_memory_mb": 0.0,
              "inference_correct": 0.0, "inference_labelled": 0.0,
              **exec_extras(times_ms, rng)}  # fmt: skip
    n = len(times_ms)
    return TelemetryWindow(job="digits", node_id="n", replica="r", seq=seq, start=float(seq),
                           end=seq + 1.0, offered=n, completed=n, within_slo=n,
                           cpu_quota=cpu, extras=extras)  # fmt: skip


def test_controller_learns_execution_times_toward_the_truth() -> None:
    """The node is 1.5x slower than profiled: after windows of execution times the learned
    latency moves to the truth and the bounds contain it (at load 0: the service tail)."""
    lr = _learner()
    models, model = _models(lr)
    true = _lat(np.random.default_rng(5), 15.0, 20_000)  # the truth: 1.5x the prior's 10 ms
    true_q99 = float(np.quantile(true, 0.99))
    before = lr.estimate(FULL, 1.0, 0.0)
    assert before["latency_p99_hi_ms"] < true_q99  # the profile alone is wrong
    rng = np.random.default_rng(9)
    n0 = lr.n_samples(FULL)
    for w in range(20):
        times = list(rng.choice(true, 40))
        assert models.learn(windows_to_batch([_window(w, FULL, times, 1.0, rng)])) == 1
    assert lr.n_samples(FULL) == n0 + 20 * EXEC_SAMPLES
    after = lr.estimate(FULL, 1.0, 0.0)
    assert after["latency_p99_ms"] == pytest.approx(true_q99, rel=0.15)  # moved to the truth
    assert after["latency_p99_hi_ms"] >= true_q99  # the upper bound holds it
    lo, _, _ = model.bounds(np.array([1.0]), 0.0)
    lower, _, hi = KnobLatencyModel(lr, FULL).bounds(np.array([1.0]), 0.0)
    assert lower[0] <= true_q99 <= hi[0]
    assert lo[0] == 1.0  # 15 ms is within the job's 50 ms bound at 1 CPU


def test_fractional_quota_times_are_full_core_times() -> None:
    """Ray runs a worker at full speed whatever the quota: times at quota 0.5 are learned as
    the full-core times they are, not as twice as fast."""
    lr = _learner()
    models, _ = _models(lr)
    rng = np.random.default_rng(2)
    for w in range(20):
        models.learn(windows_to_batch([_window(w, EARLY, _lat(rng, 8.0, 30), 0.5, rng)]))
    # full-core median learned: about 8 ms (the prior said 4; halving would have said 4 again)
    assert np.exp(lr._mu[lr.index[EARLY]]) == pytest.approx(8.0, rel=0.1)


def _snap(job: JobSpec, cpu: float = 4.0, load: float = 20.0) -> Snapshot:
    return Snapshot(time=0.0, round=0, nodes=(NodeInfo("n0", ResourceVector(cpu=cpu, memory=64)),),
                    jobs=(job,), loads={job.name: load})  # fmt: skip


def test_one_outlier_window_barely_moves_the_bound_or_the_choice() -> None:
    """One window 3x slower (a burst of interference) among normal ones: the P99 upper bound
    moves by a few percent and the policy keeps its knob and CPUs; a slowdown that persists
    (three windows) is learned."""
    lr = _learner()
    rng = np.random.default_rng(4)
    for _ in range(30):
        lr.learn_window(FULL, 1.0, 50.0, service_ms=_lat(rng, 10.0, EXEC_SAMPLES))
    job = set_bounds(JobSpec("a", kind=JobKind.INFERENCE, slo=SLO(target=100.0)),
                     latency_ms=40.0, memory_mb=50.0)  # fmt: skip
    pol = KnobPolicy({"a": lr})
    alloc, st = pol.decide(_snap(job), {})
    assert st["knobs"]["a"] == FULL
    hi = lr.estimate(FULL, 1.0, 50.0)["latency_p99_hi_ms"]
    lr.learn_window(FULL, 1.0, 50.0, service_ms=_lat(rng, 30.0, EXEC_SAMPLES))  # the outlier
    hi1 = lr.estimate(FULL, 1.0, 50.0)["latency_p99_hi_ms"]
    assert hi1 == pytest.approx(hi, rel=0.05)
    alloc1, st1 = pol.decide(_snap(job), st)
    assert st1["knobs"]["a"] == FULL and alloc1.get("a").cpu == alloc.get("a").cpu
    for _ in range(2):  # it was no outlier: the node stays slow
        lr.learn_window(FULL, 1.0, 50.0, service_ms=_lat(rng, 30.0, EXEC_SAMPLES))
    assert lr.estimate(FULL, 1.0, 50.0)["latency_p99_hi_ms"] > 1.5 * hi


def test_agent_log_parts_are_learned_from_the_run_log(tmp_path: Path) -> None:
    """Agent-log mode: the agent logged the rows itself; the controller learns them by part."""
    from cluster_mgr.store import RunLog

    lr = _learner()
    models, _ = _models(lr)
    rng = np.random.default_rng(3)
    log = RunLog(str(tmp_path / "log"), writer="agent-x")
    windows = [_window(w, EARLY, _lat(rng, 4.0, 20), 1.0, rng) for w in range(3)]
    path = log.append("telemetry", windows_to_batch(windows))
    assert path is not None
    n0 = lr.n_samples(EARLY)
    name = path.rsplit("/", 1)[-1]
    assert models.learn_logged(log, [name, "tok:nolog:1", "part-gone.parquet"]) == 3
    assert lr.n_samples(EARLY) == n0 + 3 * EXEC_SAMPLES


def test_agent_log_mode_controller_learns_the_parts_agents_wrote(tmp_path: Path) -> None:
    """``ControllerCore.ingest_partials`` (agent-log mode, no Ray needed): the agent wrote its
    rows to the run log and sends partial sums keyed by part name; the knob model learns the
    part's inference rows once (a re-sent part is not learned twice), a part with no inference
    job is not read, and without inference jobs nothing is read at all."""
    from actors.controller import ControllerCore
    from cluster_mgr.feedback import aggregate
    from cluster_mgr.settings import ManagerConfig
    from cluster_mgr.store import RunLog

    spec = JobSpec("digits", kind=JobKind.INFERENCE, slo=SLO(target=50.0), workload=WORKLOAD)
    other = JobSpec("web", slo=SLO(target=20.0))
    uri = str(tmp_path / "log")

    def core(jobs: tuple[JobSpec, ...]) -> tuple[ControllerCore, list[list[str]]]:
        cfg = ManagerConfig(policy="inference_knobs", log_uri=uri, admin_bind="",
                            metrics_bind=None, jobs=jobs)  # fmt: skip
        c = ControllerCore(cfg, agent_log=True)
        reads: list[list[str]] = []
        real = c.knob_models.read_logged

        def spy(log: RunLog, parts: list[str]) -> list[object]:
            reads.append(list(parts))
            return real(log, parts)

        c.knob_models.read_logged = spy  # type: ignore[method-assign]
        return c, reads

    agent = RunLog(uri, writer="agent-x")
    rng = np.random.default_rng(3)

    def part(windows: list[TelemetryWindow]) -> tuple[str, object, dict[str, int]]:
        path = agent.append("telemetry", windows_to_batch(windows))
        assert path is not None
        stats = {"received": len(windows), "duplicates": 0, "lost": 0}
        return path.rsplit("/", 1)[-1], aggregate(windows_to_batch(windows)), stats

    web = [TelemetryWindow(job="web", node_id="n", replica="w", seq=s, start=float(s),
                           end=s + 1.0, offered=5, completed=5, within_slo=5, cpu_quota=1.0)
           for s in range(3)]  # fmt: skip
    mixed = part([_window(w, EARLY, _lat(rng, 4.0, 20), 1.0, rng) for w in range(3)] + web[:1])
    web_only = part(web[1:])

    ctl, reads = core((spec, other))
    lr = _learner()
    ctl.knob_models._models["digits"] = KnobProfileModel(lr, latency_bound_ms=50.0)  # no profiling
    n0 = lr.n_samples(EARLY)
    assert ctl.ingest_partials("n", [mixed, web_only, ("tok:nolog:1", None, {})], {})["windows"]
    assert lr.n_samples(EARLY) == n0 + 3 * EXEC_SAMPLES  # the three inference windows
    assert reads == [[mixed[0]]]  # the web-only part was not read back
    ctl.ingest_partials("n", [mixed], {})  # re-sent: dropped, not learned twice
    assert lr.n_samples(EARLY) == n0 + 3 * EXEC_SAMPLES and len(reads) == 1

    plain, plain_reads = core((other,))  # no inference job: no knob model, nothing read
    assert plain.ingest_partials("n", [part(web[:1])], {})["windows"]
    assert len(plain.knob_models) == 0 and plain_reads == []
