"""The shared data model: validation, arithmetic, serialisation, histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster_mgr.model import (
    SLO,
    Allocation,
    JobSpec,
    ModelError,
    NodeShare,
    Observation,
    PlacementPlan,
    ResourceVector,
    histogram_percentile,
    latency_histogram,
    utility_from_reward,
)


def test_resource_vector_arithmetic_and_custom_kinds() -> None:
    a = ResourceVector(cpu=2, memory=4, custom=(("accel", 1.0),))
    b = ResourceVector.from_dict({"cpu": 1.5, "accel": 0.5, "fpga": 2})
    s = a + b
    assert s.cpu == 3.5 and s.get("accel") == 1.5 and s.get("fpga") == 2
    assert (s - b) == a.with_amount("fpga", 0.0)
    assert a.fits_in(s) and not s.fits_in(a)
    assert s.over(a) == pytest.approx({"cpu": 1.5, "accel": 0.5, "fpga": 2.0})


@pytest.mark.parametrize("bad", [math.nan, math.inf, "x"])
def test_resource_vector_rejects_non_finite(bad: object) -> None:
    with pytest.raises(ModelError, match="cpu"):
        ResourceVector(cpu=bad)  # type: ignore[arg-type]


def test_jobspec_validation_names_the_problem() -> None:
    with pytest.raises(ModelError, match="weight must be > 0"):
        JobSpec("a", weight=0)
    with pytest.raises(ModelError, match="minimum exceeds maximum"):
        JobSpec("a", minimum=ResourceVector(cpu=2), maximum=ResourceVector(cpu=1))
    with pytest.raises(ModelError, match="not a valid name"):
        JobSpec("Bad Name")
    with pytest.raises(ModelError, match="kind"):
        JobSpec("a", kind="nope")  # type: ignore[arg-type]
    assert JobSpec("a", slo=SLO(target=50)).reward_threshold == pytest.approx(0.99)


def test_observation_normalises_scalar_alloc_and_validates() -> None:
    assert Observation("a", 0.0, 2.0, 10.0, 0.9, 0.1).alloc == (2.0,)
    for kw in ({"alloc": -1.0}, {"sigma": 0.0}, {"load": -1.0}, {"value": math.nan}):
        args = {"job": "a", "time": 0.0, "alloc": 1.0, "load": 1.0, "value": 0.5, "sigma": 0.1} | kw
        with pytest.raises(ModelError):
            Observation(**args)


def test_allocation_and_plan_round_trip_through_dicts() -> None:
    alloc = Allocation({"a": ResourceVector(cpu=1.5), "b": ResourceVector(cpu=2, pim_cores=4)}, round=3, epoch=2)
    assert Allocation.from_dict(alloc.to_dict()) == alloc
    plan = PlacementPlan(epoch=2, round=3, shares=(NodeShare("n1", "a", 2, ResourceVector(cpu=1.5)),))
    assert PlacementPlan.from_dict(plan.to_dict()) == plan
    assert plan.node_usage()["n1"].cpu == 1.5


def test_histogram_percentiles_are_within_bucket_error() -> None:
    rng = np.random.default_rng(1)
    lat = rng.lognormal(mean=2.0, sigma=0.7, size=200_000)
    hist = latency_histogram(lat)
    assert hist.sum() == lat.size
    for q in (50, 95, 99):
        exact = np.percentile(lat, q)
        assert abs(histogram_percentile(hist, q) / exact - 1) < 0.10
    assert math.isnan(histogram_percentile(np.zeros_like(hist), 99))


def test_utility_scalings() -> None:
    r = np.array([0.0, 0.495, 0.99, 1.0])
    assert utility_from_reward(r, 0.99).tolist() == pytest.approx([0, 0.5, 1, 1])
    assert utility_from_reward(r, 0.99, "sqrt")[1] == pytest.approx(math.sqrt(0.5))
    assert utility_from_reward(r, 0.99, "quadratic")[1] == pytest.approx(0.25)
    with pytest.raises(ModelError):
        utility_from_reward(r, 0.99, "cubic")
