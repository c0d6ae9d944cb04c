"""Real DeathStarBench hotel-reservation runs (Cilantro's data): learn three, check the fourth."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from learners import ErnestLearner, GPUCBLearner


def _run(folder: Path, run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = pd.read_csv(folder / f"hotelres_{run}_152cpu.csv")
    allocs = [ast.literal_eval(s) for s in df["allocs"]]
    services = sorted(allocs[0])
    cpus = np.array([[a[s] for s in services] for a in allocs], dtype=float)
    rps = df["load"].to_numpy() / (df["event_end_time"] - df["event_start_time"]).to_numpy()
    return cpus, rps, df["p99"].to_numpy(dtype=float)


def test_gp_on_held_out_ucbopt_run(shared_data) -> None:  # type: ignore[no-untyped-def]
    folder = shared_data / "cilantro"
    train = [_run(folder, r) for r in ("propfair", "msevoopt", "mssile")]
    X = np.vstack([t[0] for t in train])
    y = np.concatenate([t[2] for t in train])
    ld = np.concatenate([t[1] for t in train])
    assert X.shape[1] == 19
    m = GPUCBLearner(dim=19, log_value=True)
    m.learn_arrays(X, ld, y, 0.25 * y)  # the stated 25% is too small: the learner must notice
    assert m.misspecified and "noise" in m.misspecification_reason
    Xt, lt, yt = _run(folder, "ucbopt")
    lo, mean, hi = m.predictive_bounds(Xt, lt)
    coverage = float(np.mean((yt >= lo) & (yt <= hi)))
    assert coverage >= 1 - m.delta  # the promised rate, measured on every held-out window
    assert np.all(lo > 0) and np.all(lo <= mean) and np.all(mean <= hi)
    # The conformal band is about as wide as the training runs' own 95% range (~7.3 s); the
    # Gaussian log-space band it replaced was 45 s wide on average.
    assert float(np.mean(hi - lo)) < 10_000


def test_ernest_on_held_out_ucbopt_run(shared_data) -> None:  # type: ignore[no-untyped-def]
    folder = shared_data / "cilantro"
    train = [_run(folder, r) for r in ("propfair", "msevoopt", "mssile")]
    X = np.vstack([t[0] for t in train])
    y = np.concatenate([t[2] for t in train])
    ld = np.concatenate([t[1] for t in train])
    m = ErnestLearner()
    m.learn_arrays(X.sum(1), ld, y, 0.25 * y)
    assert m.misspecified  # P99 against total CPUs does not follow the Ernest form
    Xt, lt, yt = _run(folder, "ucbopt")
    lo, mean, hi = m.predictive_bounds(Xt.sum(1), lt)
    # was 0.943 with a Gaussian band from the residual std: the residuals are bimodal
    assert float(np.mean((yt >= lo) & (yt <= hi))) >= 1 - m.delta
    assert np.all(lo >= 0) and np.all(lo <= mean) and np.all(mean <= hi)
