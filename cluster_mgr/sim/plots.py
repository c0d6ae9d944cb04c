"""PNG plots of sim runs and bench comparisons (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cluster_mgr.metrics_calc import egalitarian, utilitarian  # noqa: E402
from cluster_mgr.sim.result import RunResult  # noqa: E402

MAX_LINES = 12  # more apps than this: the busiest ones are drawn, the figure says so


def _pick(r: RunResult, values: np.ndarray) -> np.ndarray:
    if len(r.app_names) <= MAX_LINES:
        return np.arange(len(r.app_names))
    return np.argsort(-np.nan_to_num(values))[:MAX_LINES]


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(x) < k:
        return x
    kernel = np.ones(k) / k
    ok = ~np.isnan(x)
    num = np.convolve(np.where(ok, x, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def plot_run(r: RunResult, out: Path) -> list[Path]:
    """allocation.png (CPUs per app), p99.png (P99 against SLO), utility.png (utility over time)."""
    out.mkdir(parents=True, exist_ok=True)
    t = r.times / 60.0
    k = max(1, len(t) // 300)  # smooth to about 300 points so long runs stay legible
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4))
    for a in _pick(r, r.app_cpu.mean(axis=0)):
        ax.plot(t, r.app_cpu[:, a], lw=1, label=r.app_names[a])
    ax.set_xlabel("time (min)")
    ax.set_ylabel("CPUs in force")
    ax.set_title(f"{r.scenario}: allocation per app ({r.policy})")
    _legend(ax, r)
    paths.append(_save(fig, out / "allocation.png"))

    lat = [a for a, m in enumerate(r.app_metric) if m == "latency"]
    fig, ax = plt.subplots(figsize=(9, 4))
    if lat:
        ratio = r.p99_ms[:, lat] / r.app_target[lat][None, :]
        for pos in _pick_lat(r, lat):
            ax.plot(t, _smooth(ratio[:, pos], k), lw=1, label=r.app_names[lat[pos]])
        ax.axhline(1.0, color="k", ls="--", lw=1, label="SLO target")
        ax.set_yscale("log")
        ax.set_ylabel("P99 / target (per window)")
    else:
        ax.text(0.5, 0.5, "no latency SLOs in this scenario", ha="center", transform=ax.transAxes)
    ax.set_xlabel("time (min)")
    ax.set_title(f"{r.scenario}: P99 against SLO ({r.policy})")
    _legend(ax, r)
    paths.append(_save(fig, out / "p99.png"))

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(
        t, _smooth(utilitarian(r.utility, r.app_weight), k), lw=1.5, label="utilitarian welfare"
    )
    ax.plot(t, _smooth(egalitarian(r.utility), k), lw=1.5, label="egalitarian welfare")
    ax.axvline(r.warmup_s / 60.0, color="grey", ls=":", lw=1, label="end of warm-up")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("utility")
    ax.set_title(f"{r.scenario}: utility over time ({r.policy})")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "utility.png"))
    return paths


def _pick_lat(r: RunResult, lat: list[int]) -> list[int]:
    if len(lat) <= MAX_LINES:
        return list(range(len(lat)))
    worst = np.nanmean(r.p99_ms[:, lat] / r.app_target[lat][None, :], axis=0)
    return list(np.argsort(-np.nan_to_num(worst))[:MAX_LINES])


def _legend(ax: plt.Axes, r: RunResult) -> None:
    n = len(r.app_names)
    title = None if n <= MAX_LINES else f"{MAX_LINES} of {n} apps shown"
    ax.legend(fontsize=7, ncol=2, title=title, title_fontsize=7, loc="best")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bench(
    runs: Mapping[str, RunResult], table: Mapping[str, Mapping[str, float | None]], out: Path
) -> list[Path]:
    """welfare_over_time.png (every policy), metrics.png (key metrics per policy, bars)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, r in runs.items():
        k = max(1, len(r.times) // 200)
        ax.plot(
            r.times / 60.0, _smooth(utilitarian(r.utility, r.app_weight), k), lw=1.2, label=name
        )
    ax.set_xlabel("time (min)")
    ax.set_ylabel("utilitarian welfare")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("welfare over time, side by side")
    paths.append(_save(fig, out / "welfare_over_time.png"))

    keys = [
        "utilitarian_welfare",
        "egalitarian_welfare",
        "p99_ms",
        "slo_violation_rate",
        "cpu_seconds",
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.6))
    names = list(table)
    for ax, key in zip(axes, keys, strict=True):
        vals = [table[n].get(key) for n in names]
        ax.bar(range(len(names)), [v if v is not None else 0.0 for v in vals], color="C0")
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
        ax.set_title(key, fontsize=8)
        if key == "p99_ms" and any(v for v in vals):
            ax.set_yscale("log")
    paths.append(_save(fig, out / "metrics.png"))
    return paths
