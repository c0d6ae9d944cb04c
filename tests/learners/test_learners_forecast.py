"""Load forecasters: interval coverage on seasonal and real load, bad input, registry."""

from __future__ import annotations

import numpy as np
import pytest

from learners import FORECASTERS, make_forecaster


def _coverage(name: str, series: np.ndarray, warm: int = 100, **opts: object) -> tuple[float, float]:
    f = make_forecaster(name, **opts)
    hits, errs = [], []
    for i, v in enumerate(series):
        if i >= warm:
            m, lo, hi = f.forecast(1)
            hits.append(lo[0] <= v <= hi[0])
            errs.append(abs(m[0] - v))
        f.update(v)
    return float(np.mean(hits)), float(np.mean(errs))


def test_holt_winters_beats_last_value_on_a_seasonal_series() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(800)
    y = 1000 + 200 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 20, len(t))
    cov_hw, err_hw = _coverage("holt_winters", y, period=24, refit_every=200)
    cov_lv, err_lv = _coverage("last_value", y)
    assert err_hw < 0.6 * err_lv
    assert cov_hw >= 0.85  # delta = 0.1: nominal 0.9


def test_forecasters_on_the_real_twitter_load(shared_data) -> None:  # type: ignore[no-untyped-def]
    y = np.loadtxt(shared_data / "cilantro" / "twitter_load_1476.txt")
    for name in FORECASTERS:
        cov, _ = _coverage(name, y)
        assert cov >= 0.85, (name, cov)


def test_multi_step_intervals_widen() -> None:
    f = make_forecaster("holt_winters", period=12)
    rng = np.random.default_rng(1)
    f.update_many(500 + 50 * np.sin(np.arange(200) * 2 * np.pi / 12) + rng.normal(0, 5, 200))
    mean, lo, hi = f.forecast(24)
    assert mean.shape == (24,) and np.all(np.diff(hi - lo) >= -1e-9)


def test_cold_forecast_is_wide_and_bad_input_raises() -> None:
    f = make_forecaster("last_value")
    mean, lo, hi = f.forecast(3)
    assert np.all(lo == 0) and np.all(np.isinf(hi))
    for bad in (np.nan, -1.0, float("inf")):
        with pytest.raises(ValueError):
            f.update(bad)
    assert f.n == 0
    with pytest.raises(ValueError):
        f.forecast(0)
    with pytest.raises(ValueError, match="holt_winters"):
        make_forecaster("prophet")
