"""Compare the hotel-reservation emulation with the real Cilantro runs, window by window.

For every 30 s window of ``hotelres_<policy>_152cpu.csv`` the model is fed the
window's measured per-service CPUs and request rate, and its P99 and mean
latency (from the same sampled histograms the sim records) are set beside the
measured ones. Usage::

    python -m cluster_mgr.sim.calibrate examples/hotel_reservation.toml ../shared/data/cilantro
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cluster_mgr.scenario import load_scenario
from cluster_mgr.sim.sampling import sample_window
from cluster_mgr.sim.truth import GroundTruth

POLICIES = ("ucbopt", "msevoopt", "mssile", "propfair")


def compare(scenario_path: str, data_dir: Path, max_rows: int = 400, seed: int = 0) -> pd.DataFrame:
    sc = load_scenario(scenario_path)
    truth = GroundTruth(sc)
    graph = sc.graphs[0]
    services = graph.params.services
    rng = np.random.default_rng(seed)
    rows = []
    for policy in POLICIES:
        path = data_dir / f"hotelres_{policy}_152cpu.csv"
        if not path.exists():
            continue
        d = pd.read_csv(path)
        step = max(1, len(d) // max_rows)
        d = d.iloc[::step]
        dur = (d.event_end_time - d.event_start_time).to_numpy()
        rate = d["load"].to_numpy() / dur
        model_p99, model_mean = [], []
        for allocs, r, s in zip(d.allocs, rate, dur, strict=True):
            a = ast.literal_eval(allocs)
            cpu = np.array([float(a.get(f"root--{name}", 0.0)) for name in services])
            law = truth.graph_law(0, cpu, float(r))
            c = sample_window(law, np.array([r * s]), np.array([graph.slo.target]),
                              np.array([graph.timeout_ms]), rng)  # fmt: skip
            model_p99.append(float(c.percentile(99.0)[0]))
            model_mean.append(float(c.mean_ms()[0]))
        rows.append(
            {
                "policy": policy,
                "windows": len(d),
                "cpus_median": float(
                    np.median([sum(ast.literal_eval(a).values()) for a in d.allocs])
                ),
                "real_p99_median_ms": float(d.p99.median()),
                "model_p99_median_ms": float(np.median(model_p99)),
                "real_mean_median_ms": float(d.avg_latency.median()),
                "model_mean_median_ms": float(np.median(model_mean)),
                "real_p99_q90_ms": float(d.p99.quantile(0.9)),
                "model_p99_q90_ms": float(np.quantile(model_p99, 0.9)),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("data_dir")
    ap.add_argument("--rows", type=int, default=400, help="windows sampled per run (default 400)")
    args = ap.parse_args(argv)
    df = compare(args.scenario, Path(args.data_dir), args.rows)
    print(
        df.to_markdown(index=False, floatfmt=".1f")
        if _has_tabulate()
        else df.to_string(index=False)
    )
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
