"""Conformal prediction bands (learners/conformal.py) and their use by Ernest and the GP."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from learners import ErnestLearner, GPUCBLearner
from learners.conformal import Reservoir, calibrated_band, conformal_quantile, heavy_tails


def test_reservoir_is_bounded_seeded_and_uniform() -> None:
    a, b = Reservoir(1, size=500, seed=3), Reservoir(1, size=500, seed=3)
    stream = np.arange(20_000, dtype=float)[:, None]
    for chunk in np.array_split(stream, 37):
        a.add(chunk)
        b.add(chunk)
    assert len(a) == 500 and a.seen == 20_000
    assert np.array_equal(a.sample, b.sample)  # same seed, same sample
    # a uniform sample of 0..19,999: mean 10,000 with sd ~ 5,774 / sqrt(500) = 258
    assert abs(a.sample.mean() - 10_000) < 1_000
    assert len(np.unique(a.sample)) == 500  # no row kept twice


def test_conformal_quantile_uses_the_finite_sample_rank() -> None:
    s = np.arange(1.0, 20.0)  # 19 scores: rank ceil(20 * 0.95) = 19, the largest
    assert conformal_quantile(s, 0.05) == 19.0
    assert conformal_quantile(s[:18], 0.05) == np.inf  # too few for any promise
    assert calibrated_band(np.zeros(3), np.zeros(3), np.ones(5), np.zeros(5), 0.05) is None


def test_calibrated_band_covers_skewed_noise() -> None:
    rng = np.random.default_rng(0)
    noise = lambda k: rng.exponential(1.0, k) ** 2  # noqa: E731 - skewed, heavy right tail
    lo, hi = calibrated_band(np.zeros(20_000), np.zeros(20_000), noise(1000), np.zeros(1000), 0.05)
    fresh = noise(20_000)
    assert np.mean((fresh >= lo) & (fresh <= hi)) >= 0.94


def test_heavy_tails_speaks_only_when_a_gaussian_band_would_fail() -> None:
    rng = np.random.default_rng(1)
    assert heavy_tails(rng.standard_normal(5000), 1e-3, 1.2) == ""
    # mass 10% at +/-3.16 (unit variance): a 95% Gaussian band misses all of it
    spiky = np.where(rng.random(5000) < 0.1, rng.choice([-1, 1], 5000) * np.sqrt(10.0), 0.0)
    assert "heavier than Gaussian" in heavy_tails(spiky, 1e-3, 1.2)


def _bimodal(rng: np.random.Generator, f: np.ndarray) -> np.ndarray:
    """A window that is fine (f plus small noise) or saturated (+20) one time in six."""
    return f + rng.normal(0, 1.0, len(f)) + 20.0 * (rng.random(len(f)) < 1 / 6)


def test_ernest_prediction_band_covers_bimodal_measurements() -> None:
    rng = np.random.default_rng(2)
    theta = np.array([5.0, 200.0, 1.0, 0.1])

    def f(a: np.ndarray, ld: np.ndarray) -> np.ndarray:
        return theta[0] + theta[1] * ld / a + theta[2] * np.log(a) + theta[3] * a

    a, ld = rng.uniform(1, 64, 3000), rng.uniform(1, 10, 3000)
    m = ErnestLearner()
    m.learn_arrays(a, ld, _bimodal(rng, f(a, ld)), np.ones(3000))  # stated sigma 1: far too small
    assert m.misspecified
    at, lt = rng.uniform(1, 64, 4000), rng.uniform(1, 10, 4000)
    yt = _bimodal(rng, f(at, lt))
    lo, mean, hi = m.predictive_bounds(at, lt)
    assert np.mean((yt >= lo) & (yt <= hi)) >= 0.95
    assert np.all(lo <= mean) and np.all(mean <= hi)
    # a restarted controller gets the same band from a pickle
    p = pickle.loads(pickle.dumps(m))
    assert all(np.array_equal(u, v) for u, v in zip(p.predictive_bounds(at, lt), (lo, mean, hi), strict=True))


@pytest.mark.parametrize("cls, attr", [(ErnestLearner, "_calib"), (GPUCBLearner, "_cal")])
def test_learner_pickled_before_the_sample_existed_still_answers(cls: type, attr: str) -> None:
    m = cls()
    rng = np.random.default_rng(4)
    a = rng.uniform(1, 64, 200)
    m.learn_arrays(a, np.ones(200), 5 + 100 / a + rng.normal(0, 1, 200), np.ones(200))
    m.bounds(np.array([8.0]), 1.0)
    state = m.__dict__.copy()
    del state[attr]
    old = cls.__new__(cls)
    old.__setstate__(state)
    lo, _, hi = old.predictive_bounds(np.array([8.0]), 1.0)  # Gaussian band until new data arrive
    assert np.isfinite(lo).all() and np.isfinite(hi).all()
    old.learn_arrays(a[:50], np.ones(50), 5 + 100 / a[:50], np.ones(50))  # and it learns on


@pytest.mark.parametrize("log_value", [False, True])
def test_gp_prediction_band_covers_bimodal_measurements(log_value: bool) -> None:
    rng = np.random.default_rng(3)

    def f(a: np.ndarray) -> np.ndarray:
        return 30.0 + 200.0 / a

    a = rng.uniform(2, 20, 1500)
    m = GPUCBLearner(log_value=log_value)
    m.learn_arrays(a, np.ones(1500), _bimodal(rng, f(a)), np.ones(1500))
    at = rng.uniform(2, 20, 3000)
    yt = _bimodal(rng, f(at))
    lo, mean, hi = m.predictive_bounds(at, 1.0)
    assert np.mean((yt >= lo) & (yt <= hi)) >= 0.95
    assert np.all(lo <= mean) and np.all(mean <= hi)
