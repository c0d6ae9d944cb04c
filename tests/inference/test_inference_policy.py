import itertools

import numpy as np
import pytest

from allocators.base import Snapshot
from allocators.inference import FixedKnobPolicy, KnobPolicy, job_bounds, set_bounds
from allocators.inference.solver import solve
from cluster_mgr.model import SLO, JobKind, JobSpec, NodeInfo, ResourceVector
from learners.knob_profile import KnobPrior, KnobProfileLearner


def _learner():
    rng = np.random.default_rng(1)

    def lat(ms):
        return tuple(ms * np.exp(rng.normal(0, 0.05, 40)))

    return KnobProfileLearner(
        [
            KnobPrior("full", lat(10), 9_000_000, 500_000, 780, 800),
            KnobPrior("mid", lat(4), 3_000_000, 300_000, 770, 800),
            KnobPrior("tiny", lat(1), 500_000, 100_000, 740, 800),
        ]
    )


def _snap(jobs, cpu=4.0, loads=None):
    return Snapshot(
        time=0.0,
        round=0,
        nodes=(NodeInfo("n0", ResourceVector(cpu=cpu, memory=64)),),
        jobs=tuple(jobs),
        loads=loads or {j.name: 20.0 for j in jobs},
    )


def _job(name, lat_ms, mem_mb):
    spec = JobSpec(name, kind=JobKind.INFERENCE, slo=SLO(target=100.0))
    return set_bounds(spec, latency_ms=lat_ms, memory_mb=mem_mb)


def test_bounds_api_roundtrip():
    j = _job("a", 25.0, 6.0)
    b = job_bounds(j)
    assert b.latency_ms == 25.0 and b.memory_mb == pytest.approx(6.0)
    with pytest.raises(ValueError):
        set_bounds(j, latency_ms=0)


def test_picks_most_accurate_knob_that_meets_both_bounds():
    pol = KnobPolicy({"a": _learner()})
    cases = [
        ((60.0, 50.0), "full"),
        ((60.0, 5.0), "mid"),
        ((3.0, 50.0), "tiny"),
        ((60.0, 1.0), "tiny"),
    ]
    for (lat, mem), want in cases:
        alloc, st = pol.decide(_snap([_job("a", lat, mem)]), {})
        assert st["knobs"]["a"] == want, (lat, mem)
        assert st["feasible"]["a"]
        assert st["predicted"]["a"]["latency_hi_ms"] <= lat
        assert alloc.get("a").memory * 1024 <= mem + 1e-9
        assert alloc.get("a").cpu <= 4.0


def test_runtime_bound_change_is_reconsidered_and_explained():
    pol = KnobPolicy({"a": _learner()})
    job = _job("a", 60.0, 50.0)
    _, st = pol.decide(_snap([job]), {})
    assert st["knobs"]["a"] == "full" and st["reasons"]["a"] == "initial"
    _, st = pol.decide(_snap([set_bounds(job, memory_mb=5.0)]), st)
    assert st["knobs"]["a"] == "mid" and st["reasons"]["a"] == "bounds changed"


def test_capacity_shared_by_exact_knapsack_and_load_reconsidered():
    lrs = {"a": _learner(), "b": _learner()}
    pol = KnobPolicy(lrs)
    jobs = [_job("a", 40.0, 50.0), _job("b", 40.0, 50.0)]
    alloc, st = pol.decide(_snap(jobs, cpu=8.0, loads={"a": 60.0, "b": 60.0}), {})
    assert st["knobs"] == {"a": "full", "b": "full"}
    assert alloc.total().cpu <= 8.0 + 1e-9
    # load triples on 2 CPUs: full no longer fits both, the policy gives up the least accuracy
    alloc, st = pol.decide(_snap(jobs, cpu=2.0, loads={"a": 150.0, "b": 150.0}), st)
    assert alloc.total().cpu <= 2.0 + 1e-9
    assert all(st["feasible"].values())
    assert set(st["knobs"].values()) <= {"mid", "tiny"}
    assert "load changed" in st["reasons"].values() or "capacity changed" in st["reasons"].values()


def test_fixed_baseline_keeps_its_knob_and_reports_infeasible():
    pol = FixedKnobPolicy("full", {"a": _learner()})
    _, st = pol.decide(_snap([_job("a", 5.0, 50.0)]), {})
    assert st["knobs"]["a"] == "full" and not st["feasible"]["a"]


def test_solver_matches_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(30):
        opts = [
            [(int(rng.integers(0, 6)), float(rng.random())) for _ in range(4)] for _ in range(3)
        ]
        budget = int(rng.integers(0, 12))
        picks = solve(opts, budget)
        feasible = [
            c
            for c in itertools.product(range(4), repeat=3)
            if sum(opts[j][c[j]][0] for j in range(3)) <= budget
        ]
        if not feasible:
            assert picks is None
            continue
        best = max(sum(opts[j][c[j]][1] for j in range(3)) for c in feasible)
        assert sum(opts[j][picks[j]][1] for j in range(3)) == pytest.approx(best)
        assert sum(opts[j][picks[j]][0] for j in range(3)) <= budget
