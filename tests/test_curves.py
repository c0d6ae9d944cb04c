"""Ground-truth reward curves: families, batching, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from cluster_mgr.curves import CILANTRO_FAMILIES, RewardCurve
from cluster_mgr.model import ModelError


@pytest.mark.parametrize("family", sorted(CILANTRO_FAMILIES))
def test_every_family_is_monotone_in_allocation_and_bounded(family: str) -> None:
    curve = RewardCurve(family, scale=100.0)
    r = curve.mean(np.linspace(0, 50, 200), 1000.0)
    assert np.all(np.diff(r) >= -1e-12) and r.min() >= 0 and r.max() <= 1


def test_batch_equals_one_call_per_curve() -> None:
    curves = [RewardCurve("tanh"), RewardCurve("logistic", scale=100), RewardCurve("inverse"),
              RewardCurve("tanh", coeff=300), RewardCurve("linear")]
    rng = np.random.default_rng(0)
    alloc, load = rng.uniform(0, 10, (5, 9)), rng.uniform(100, 3000, 5)
    lcb, mean, ucb = RewardCurve.bounds_batch(curves, alloc, load)
    ref = np.array([c.mean(alloc[i], load[i]) for i, c in enumerate(curves)])
    np.testing.assert_allclose(mean, ref, rtol=0, atol=1e-12)
    assert (lcb == mean).all() and (ucb == mean).all()


def test_sampled_reward_is_binomial_around_the_truth() -> None:
    curve = RewardCurve("tanh")
    rng = np.random.default_rng(3)
    alloc = np.full(4000, 2.0)
    p = float(curve.mean(alloc[:1], 1000.0)[0])
    r = curve.sample(alloc, 1000.0, np.full(4000, 400), rng)
    assert abs(r.mean() - p) < 4 * np.sqrt(p * (1 - p) / 400 / 4000)


def test_bad_curves_are_refused() -> None:
    with pytest.raises(ModelError, match="unknown curve family"):
        RewardCurve("cubic")
    with pytest.raises(ModelError, match="coeff"):
        RewardCurve("tanh", coeff=-1)
