"""The inference policies and the knob_profile learner in the registries, and the conformance
kit's per-decision checks on inference snapshots (the kit's random snapshots hold no inference
jobs, so tests/allocators skips these policies there)."""

from __future__ import annotations

import numpy as np
import pytest

from allocators.base import Snapshot
from allocators.inference import set_bounds
from allocators.registry import KIND_POLICIES, get_policy, list_policies
from allocators.testing import check_decision, check_infeasible, check_sequence
from cluster_mgr.model import SLO, JobKind, JobSpec, NodeInfo, Observation, ResourceVector
from learners import KIND_LEARNERS, LearnerBank
from learners.knob_profile import KnobPrior, KnobProfileLearner, KnobProfileModel

NAMES = ("inference_knobs", "fixed_knob", "fixed_knob_approx")


def _model(bound_ms: float = 40.0) -> KnobProfileModel:
    rng = np.random.default_rng(1)

    def lat(ms: float) -> tuple[float, ...]:
        return tuple(ms * np.exp(rng.normal(0, 0.05, 40)))

    learner = KnobProfileLearner(
        [
            KnobPrior("full", lat(10), 9_000_000, 500_000, 780, 800),
            KnobPrior("mid", lat(4), 3_000_000, 300_000, 770, 800),
            KnobPrior("tiny", lat(1), 500_000, 100_000, 740, 800),
        ]
    )
    return KnobProfileModel(learner, latency_bound_ms=bound_ms)


def _snapshot(seed: int) -> Snapshot:
    rng = np.random.default_rng(seed)
    jobs, models, loads = [], {}, {}
    for i in range(int(rng.integers(1, 5))):
        name = f"inf-{i}"
        spec = JobSpec(name, kind=JobKind.INFERENCE, slo=SLO(target=100.0))
        lat, mem = float(rng.uniform(15, 60)), float(rng.choice([2.0, 5.0, 20.0]))
        jobs.append(set_bounds(spec, latency_ms=lat, memory_mb=mem))
        models[name] = _model(lat)
        loads[name] = float(rng.uniform(20, 200))
    jobs.append(JobSpec("other", minimum=ResourceVector(cpu=0.5)))
    cpu = float(rng.integers(4, 12))
    nodes = (NodeInfo("n0", ResourceVector(cpu=cpu, memory=64)),)
    return Snapshot(time=0.0, round=0, nodes=nodes, jobs=tuple(jobs), models=models, loads=loads)


def test_registered_listed_and_kind_scoped() -> None:
    infos = {i.name: i for i in list_policies()}
    assert infos["inference_knobs"].kind == "ours"
    assert infos["fixed_knob"].kind == infos["fixed_knob_approx"].kind == "baseline"
    assert all(KIND_POLICIES[n] == "inference" for n in NAMES)
    assert KIND_LEARNERS["inference"] == ("knob_profile", KnobProfileModel)


def test_bench_all_runs_them_only_where_inference_jobs_are() -> None:
    from cluster_mgr.sim.bench import all_policies

    assert not set(NAMES) & set(all_policies({"latency_critical"}))
    assert set(NAMES) <= set(all_policies({"inference", "latency_critical"}))


def test_fixed_knobs_resolve_full_and_most_approximate() -> None:
    snap = _snapshot(0)
    for name, knob in (("fixed_knob", "full"), ("fixed_knob_approx", "tiny")):
        _, state = get_policy(name).decide(snap, {})
        assert set(state["knobs"].values()) == {knob}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(6))
def test_kit_decision_checks_pass_on_inference_snapshots(name: str, seed: int) -> None:
    snap = _snapshot(seed)
    assert check_decision(lambda: get_policy(name), snap) == []
    assert check_sequence(lambda: get_policy(name), [snap, _snapshot(seed + 100)]) == []
    assert check_infeasible(lambda: get_policy(name), snap) == []


def test_knob_profile_model_is_a_bank_learner_with_monotone_bounds() -> None:
    m = _model(20.0)
    bank = LearnerBank(lambda job: m)
    bank.learn(["j"], np.array([1.0]), np.array([50.0]), np.array([0.9]), np.array([0.05]), 0.0)
    assert bank.model("j") is m and m.n_observations == 1
    m.learn_one(Observation("j", 1.0, (2.0,), 50.0, 1.0, 0.05))  # reward-only: counted
    cpus = np.linspace(0.1, 6, 60)
    lo, mid, hi = m.bounds(cpus, 50.0)
    assert np.all(lo <= mid) and np.all(mid <= hi)
    # the bound is met with enough CPU, not with a tenth of one (monotone only between integers:
    # one more worker shares the quota, so a request runs slower just above an integer)
    assert lo[-1] == 1.0 and hi[0] == 0.0
    m.learn_window("mid", 2.0, 50.0, p99_ms=5.0, service_ms=[4.0, 4.1], memory_bytes=3.6e6)
    assert m.knob == "mid" and m.profile.n_windows == 1


def test_ray_controller_knob_models_learn_from_replica_windows() -> None:
    """actors/inference/control.py: the controller's knob models, built from the measured
    profiles, learn the knob in force (an index in the window's extras), P99 and accuracy."""
    pytest.importorskip("sklearn")
    from actors.inference.control import KnobModels, attach_knob_models
    from actors.inference.measured import KNOB_SPACES
    from allocators.inference import KnobPolicy
    from cluster_mgr.model import TelemetryWindow
    from cluster_mgr.telemetry import windows_to_batch

    workload = {"model": "inference", "widths": [96, 96, 96], "epochs": 8,
                "knob_space": "compact", "profile_reps": 8}  # fmt: skip
    spec = JobSpec("digits", kind=JobKind.INFERENCE, slo=SLO(target=5.0), workload=workload)
    policy = KnobPolicy()
    factory, models = attach_knob_models(policy, lambda s: _model(), lambda: {"digits": spec})
    assert isinstance(policy.profiles, KnobModels) and "digits" in policy.profiles
    assert factory is not None and factory(spec) is models["digits"]
    assert isinstance(factory(JobSpec("other")), KnobProfileModel)  # the base factory's
    ids = [s.id for s in KNOB_SPACES["compact"].settings()]
    early = ids.index("e1-fb32-std")
    w = TelemetryWindow(job="digits", node_id="n", replica="r", seq=0, start=0.0, end=1.0,
                        offered=50, completed=50, within_slo=50, latency_p99_ms=0.9,
                        cpu_quota=1.0, extras={"inference_knob": float(early),
                                               "inference_memory_mb": 0.1,
                                               "inference_correct": 60.0,
                                               "inference_labelled": 64.0})  # fmt: skip
    other = TelemetryWindow(job="other", node_id="n", replica="o", seq=0, start=0.0, end=1.0)
    assert models.learn(windows_to_batch([w, other])) == 1
    m = models["digits"]
    assert m.knob == "e1-fb32-std" and m.profile.n_windows == 1
