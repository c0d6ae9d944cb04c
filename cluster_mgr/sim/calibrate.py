"""Compare the hotel-reservation emulation with the real Cilantro runs, window by window.

Two checks, both over every 30 s window of ``hotelres_<policy>_152cpu.csv``:

* ``compare``: the model is fed the window's measured per-service CPUs and
  request rate, and its P99 and mean latency (from the same sampled histograms
  the sim records) are set beside the measured ones, with the fraction of
  windows whose model P99 is within 2x of the real one.
* ``fit_saturation``: the best any per-service saturation model can do. Each
  service s gets a CPU demand per request d_s (ms); a window is saturated when
  some service's utilisation d_s * lambda_s / cpu_s exceeds ``RHO_MAX``, and a
  saturated window's P99 is the wrk2-capped seconds level the real runs show
  (the median P99 of their windows over 1 s); an unsaturated one sits at the
  latency floor (the median of those under 150 ms). The d_s are chosen by
  coordinate ascent to maximise the fraction of windows (all four runs) whose
  predicted P99 is within 2x of the real one. ``hypothesis`` scores a given
  set of d_s the same way (e.g. ``--hypothesis geo=4.5``).

Usage::

    python -m cluster_mgr.sim.calibrate examples/hotel_reservation.toml ../shared/data/cilantro
    python -m cluster_mgr.sim.calibrate examples/hotel_reservation.toml ../shared/data/cilantro \
        --rows 0 --fit --hypothesis geo=4.5
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cluster_mgr.scenario import load_scenario
from cluster_mgr.sim.sampling import sample_window
from cluster_mgr.sim.truth import GroundTruth
from cluster_mgr.workloads import RHO_MAX

POLICIES = ("ucbopt", "msevoopt", "mssile", "propfair")
#: Windows with a real P99 under this are "at the floor", over SATURATED_MS "saturated" (ms).
FLOOR_MS = 150.0
SATURATED_MS = 1000.0
META = ("window_rps", "p99", "mean_ms", "run")


def load_windows(data_dir: Path, services: Sequence[str]) -> pd.DataFrame:
    """Every window of the real runs: one column per service (CPUs), ``window_rps`` (completed
    req/s), ``p99`` and ``mean_ms`` (ms), ``run``. (hotelReservation has a service named "rate".)"""
    clash = set(services) & set(META)
    if clash:
        raise ValueError(f"service names {sorted(clash)} clash with the window columns {META}")
    frames = []
    for policy in POLICIES:
        path = Path(data_dir) / f"hotelres_{policy}_152cpu.csv"
        if not path.exists():
            continue
        d = pd.read_csv(path)
        allocs = [ast.literal_eval(a) for a in d.allocs]
        f = pd.DataFrame({s: [float(a.get(f"root--{s}", 0.0)) for a in allocs] for s in services})
        f["window_rps"] = (d["load"] / (d.event_end_time - d.event_start_time)).to_numpy()
        f["p99"] = d.p99.to_numpy()
        f["mean_ms"] = d.avg_latency.to_numpy()
        f["run"] = policy
        frames.append(f)
    if not frames:
        raise FileNotFoundError(f"no hotelres_<policy>_152cpu.csv under {data_dir}")
    return pd.concat(frames, ignore_index=True)


def within_2x(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    pred, real = np.asarray(pred, dtype=float), np.asarray(real, dtype=float)
    return (pred < 2.0 * real) & (real < 2.0 * pred)


def agreement_table(windows: pd.DataFrame, pred_p99: np.ndarray) -> pd.DataFrame:
    """Per run: real and predicted median P99 and the fraction of windows within 2x; plus 'all'."""
    ok = within_2x(pred_p99, windows.p99.to_numpy())
    rows = []
    for run in [*dict.fromkeys(windows.run), "all"]:
        m = np.ones(len(windows), bool) if run == "all" else (windows.run == run).to_numpy()
        rows.append(
            {
                "run": run,
                "windows": int(m.sum()),
                "real_p99_median_ms": float(np.median(windows.p99.to_numpy()[m])),
                "pred_p99_median_ms": float(np.median(pred_p99[m])),
                "within_2x": float(ok[m].mean()),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SaturationFit:
    """Per-service CPU demand per request (ms; 0: never saturates) and the 2x agreement it reaches."""

    demand_ms: dict[str, float]
    cpu_threshold: dict[str, float]  # CPUs below which the service saturates at the nominal load
    floor_ms: float
    saturated_ms: float
    agreement: float
    table: pd.DataFrame


def _levels(windows: pd.DataFrame) -> tuple[float, float]:
    p = windows.p99.to_numpy()
    return float(np.median(p[p < FLOOR_MS])), float(np.median(p[p > SATURATED_MS]))


def _score_thresholds(
    windows: pd.DataFrame, services: Sequence[str], thr: np.ndarray
) -> tuple[np.ndarray, float]:
    floor, sat = _levels(windows)
    x = windows[list(services)].to_numpy()
    pred = np.where((x < thr).any(axis=1), sat, floor)
    return pred, float(within_2x(pred, windows.p99.to_numpy()).mean())


def hypothesis(
    windows: pd.DataFrame, services: Sequence[str], service_rps: np.ndarray,
    demand_ms: Mapping[str, float],
) -> SaturationFit:  # fmt: skip
    """Score given per-service demands (ms per request) with the saturation model above."""
    d = np.array([float(demand_ms.get(s, 0.0)) for s in services])
    thr = d * np.asarray(service_rps) / 1000.0 / RHO_MAX
    pred, score = _score_thresholds(windows, services, thr)
    floor, sat = _levels(windows)
    return SaturationFit(
        {s: float(v) for s, v in zip(services, d, strict=True) if v > 0},
        {s: float(v) for s, v in zip(services, thr, strict=True) if v > 0},
        floor, sat, score, agreement_table(windows, pred),
    )  # fmt: skip


def fit_saturation(
    windows: pd.DataFrame, services: Sequence[str], service_rps: np.ndarray, sweeps: int = 3
) -> SaturationFit:
    """Per-service demands that maximise the 2x agreement over all windows (coordinate ascent
    over each service's saturation threshold, candidates at the CPUs the runs actually held)."""
    x = windows[list(services)].to_numpy()
    real = windows.p99.to_numpy()
    floor, sat = _levels(windows)
    ok_floor, ok_sat = within_2x(floor, real), within_2x(sat, real)

    def score(thr: np.ndarray) -> float:
        return float(np.where((x < thr).any(axis=1), ok_sat, ok_floor).mean())

    thr = np.zeros(len(services))
    best = score(thr)
    cands = [
        np.unique(np.concatenate([[0.0], np.round(x[:, j], 2) + 1e-6]))
        for j in range(len(services))
    ]
    for _ in range(sweeps):
        improved = False
        for j in range(len(services)):
            others = (np.delete(x, j, axis=1) < np.delete(thr, j)).any(axis=1)
            for t in cands[j]:
                s = float(np.where(others | (x[:, j] < t), ok_sat, ok_floor).mean())
                if s > best + 1e-12:
                    best, thr[j], improved = s, t, True
        if not improved:
            break
    assert abs(score(thr) - best) < 1e-9
    rps = np.maximum(np.asarray(service_rps, dtype=float), 1e-9)
    demand = {
        s: float(t * 1000.0 * RHO_MAX / r) for s, t, r in zip(services, thr, rps, strict=True)
    }
    return hypothesis(windows, services, rps, {s: v for s, v in demand.items() if v > 0})


def compare(scenario_path: str, data_dir: Path, max_rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """The emulation at each real window's CPUs and rate (``max_rows`` windows per run; 0: all)."""
    sc = load_scenario(scenario_path)
    truth = GroundTruth(sc)
    graph = sc.graphs[0]
    services = graph.params.services
    rng = np.random.default_rng(seed)
    rows = []
    allw = load_windows(data_dir, services)
    for policy in POLICIES:
        d = allw[allw.run == policy]
        if d.empty:
            continue
        step = max(1, len(d) // max_rows) if max_rows > 0 else 1
        d = d.iloc[::step]
        cpus = d[list(services)].to_numpy()
        model_p99, model_mean = [], []
        for cpu, r in zip(cpus, d.window_rps.to_numpy(), strict=True):
            law = truth.graph_law(0, cpu, float(r))
            c = sample_window(law, np.array([r * sc.round_s]), np.array([graph.slo.target]),
                              np.array([graph.timeout_ms]), rng)  # fmt: skip
            model_p99.append(float(c.percentile(99.0)[0]))
            model_mean.append(float(c.mean_ms()[0]))
        rows.append(
            {
                "policy": policy,
                "windows": len(d),
                "cpus_median": float(np.median(cpus.sum(axis=1))),
                "real_p99_median_ms": float(d.p99.median()),
                "model_p99_median_ms": float(np.median(model_p99)),
                "real_mean_median_ms": float(d["mean_ms"].median()),
                "model_mean_median_ms": float(np.median(model_mean)),
                "real_p99_q90_ms": float(d.p99.quantile(0.9)),
                "model_p99_q90_ms": float(np.quantile(model_p99, 0.9)),
                "p99_within_2x": float(within_2x(np.array(model_p99), d.p99.to_numpy()).mean()),
            }
        )
    return pd.DataFrame(rows)


def _print(df: pd.DataFrame) -> None:
    print(
        df.to_markdown(index=False, floatfmt=".3g")
        if _has_tabulate()
        else df.to_string(index=False)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("data_dir")
    ap.add_argument("--rows", type=int, default=400, help="windows per run (default 400; 0: all)")
    ap.add_argument("--fit", action="store_true", help="fit the best per-service saturation model")
    ap.add_argument("--hypothesis", action="append", default=[], metavar="SERVICE=MS",
                    help="score a per-request CPU demand (ms) for a service, e.g. geo=4.5")  # fmt: skip
    args = ap.parse_args(argv)
    _print(compare(args.scenario, Path(args.data_dir), args.rows))
    if not (args.fit or args.hypothesis):
        return 0
    sc = load_scenario(args.scenario)
    graph = sc.graphs[0]
    services = graph.params.services
    rps = graph.params.service_rates(float(graph.load.rates(np.array([0.0]))[0]))
    windows = load_windows(Path(args.data_dir), services)
    if args.fit:
        f = fit_saturation(windows, services, rps)
        print(f"\nbest saturation fit: demand ms/request {f.demand_ms or 'none (no service saturates)'}; "
              f"CPU thresholds {f.cpu_threshold}; floor {f.floor_ms:.1f} ms, saturated "
              f"{f.saturated_ms:.0f} ms; agreement {f.agreement:.3f}")  # fmt: skip
        _print(f.table)
    for h in args.hypothesis:
        name, ms = h.split("=")
        f = hypothesis(windows, services, rps, {name: float(ms)})
        print(f"\nhypothesis {name} = {float(ms)} ms/request (saturates below "
              f"{f.cpu_threshold.get(name, 0):.2f} CPUs): agreement {f.agreement:.3f}")  # fmt: skip
        _print(f.table)
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
