"""Which bound a policy reads (``below_threshold``) and the prepared bound query."""

from __future__ import annotations

import numpy as np
import pytest

from allocators.base import Snapshot
from allocators.problem import below_threshold, prepare_query, query_bounds
from allocators.registry import get_policy
from allocators.testing import BandModel, SaturatingModel
from cluster_mgr.curves import RewardCurve
from cluster_mgr.model import SLO, JobSpec, NodeInfo, ResourceVector


def test_below_threshold_keeps_optimism_only_below_the_threshold() -> None:
    ref = np.linspace(0.0, 1.0, 201)
    thr = 0.8
    for band in (0.0, 0.02, 0.1, 0.3):
        upper = np.minimum(ref + band, 1.0)
        got = below_threshold(upper, ref, thr)
        assert np.all(got >= ref - 1e-12) and np.all(got <= upper + 1e-12)
        # The threshold is claimed exactly where the reference bound reaches it.
        assert np.all(got[ref < thr] < thr) and np.all(got[ref >= thr] >= thr - 1e-12)
        assert np.all(np.diff(got) >= -1e-12)  # rising with the bounds
    assert np.array_equal(below_threshold(ref, ref, thr), ref)  # no band: the bound itself


def test_below_threshold_rises_in_the_upper_bound() -> None:
    ref = np.full(50, 0.5)
    upper = np.linspace(0.5, 1.0, 50)
    assert np.all(np.diff(below_threshold(upper, ref, 0.9)) > 0)


def _snapshot(band: float) -> Snapshot:
    """``a`` and ``b`` share a tanh curve, ``a`` with a wide band; ``c`` gains a little from
    any CPU it gets, so capacity left over has a taker and no job gets more by default."""
    curve = RewardCurve("tanh", coeff=1.0, scale=1.0)
    slo = SLO(target=50.0, threshold=0.9)
    jobs = (JobSpec("a", slo=slo), JobSpec("b", slo=slo), JobSpec("c", slo=slo))
    models = {
        "a": BandModel(curve, band, band),
        "b": BandModel(curve, 0.0, 0.0),
        "c": SaturatingModel(0.02),
    }
    nodes = (NodeInfo("n0", ResourceVector(cpu=6.0, memory=8)),)
    return Snapshot(0.0, 0, nodes, jobs, models, {"a": 1.0, "b": 1.0, "c": 1.0}, seed=0)


def test_an_uncertain_job_is_not_read_as_satisfied_on_its_upper_bound_alone() -> None:
    """On the plain upper bound, ``a`` reads its SLO met at 0.87 CPU (where tanh reaches
    0.9 - 0.2) and stops short of the 1.47 its mean needs; with the mean deciding
    saturation it gets the CPUs its SLO needs."""
    snap = _snapshot(0.2)
    plain = get_policy("utilitarian", saturate=None).decide(snap, {})[0]
    mean = get_policy("utilitarian", saturate="mean").decide(snap, {})[0]
    need = float(np.arctanh(0.9))
    assert plain.get("a").cpu <= float(np.arctanh(0.7)) + 0.1
    assert mean.get("a").cpu >= need - 0.1
    assert plain.get("b").cpu >= need - 0.1 and mean.get("b").cpu >= need - 0.1


def test_saturate_option_is_checked() -> None:
    with pytest.raises(ValueError, match="saturate"):
        get_policy("utilitarian", saturate="upper")


def test_saturate_defaults_per_policy() -> None:
    """Utilitarian waits for the mean by default; the others, and the oracles, read the
    bound as it is; "none" (what a TOML config can spell) is the plain upper bound."""
    assert get_policy("utilitarian").saturate == "mean"
    assert get_policy("utilitarian", saturate="none").saturate is None
    assert get_policy("utilitarian", saturate=None).saturate is None
    assert get_policy("nash").saturate is None
    assert get_policy("welfare").saturate is None
    assert get_policy("oracle_utilitarian").saturate is None
    snap = _snapshot(0.2)
    default = get_policy("utilitarian").decide(snap, {})[0]
    assert default == get_policy("utilitarian", saturate="mean").decide(snap, {})[0]


def test_prepared_query_equals_each_models_bounds() -> None:
    """Curves of every family, band models over them, and a model type without a batch
    query, mixed: the prepared query answers what each model's ``bounds`` answers."""
    rng = np.random.default_rng(0)
    families = ["tanh", "inverse", "logistic", "linear"]
    models: list = []
    for i in range(24):
        curve = RewardCurve(families[i % 4], scale=float(rng.uniform(0.5, 5.0)))
        kind = i % 3
        if kind == 0:
            models.append(curve)
        elif kind == 1:
            models.append(
                BandModel(
                    curve,
                    float(rng.uniform(0, 0.1)),
                    float(rng.uniform(0, 0.1)),
                    float(rng.uniform(-0.05, 0.05)),
                )
            )
        else:
            models.append(SaturatingModel(float(rng.uniform(0.1, 2.0))))
    loads = rng.uniform(0.5, 2.0, len(models))
    X = rng.uniform(0.0, 10.0, (len(models), 7))
    query = prepare_query(models, loads)
    for _ in range(2):  # a prepared query answers any number of batches
        got = query(X)
        for i, model in enumerate(models):
            want = model.bounds(X[i], float(loads[i]))
            for s in range(3):
                assert np.allclose(got[s][i], want[s], rtol=0, atol=1e-12)
        X = X * 0.5
    one_type = [m for m in models if isinstance(m, RewardCurve)]
    idx = [i for i, m in enumerate(models) if isinstance(m, RewardCurve)]
    a = prepare_query(one_type, loads[idx])(X[idx])
    b = query_bounds(one_type, X[idx], loads[idx])
    for s in range(3):
        assert np.array_equal(a[s], b[s])
