"""The seed papers' metrics (DESIGN.md, "Metric definitions"), computed from a run's arrays.

Pure numpy over plain arrays, so every function is unit-tested on hand-made
cases. ``summarize(result)`` gives the per-run and per-app dictionaries that
``summary.json`` and ``bench.json`` carry; a metric that does not apply to a
run is None (JSON null), never a made-up number.

Conventions: arrays are (W, A) = (windows, apps); ``present`` marks the
windows an app exists in; utilities are nan where an app had no traffic.
Headline statistics use the evaluation period (after the warm-up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cluster_mgr.feedback import percentiles
from cluster_mgr.model import CPU_QUANTUM

if TYPE_CHECKING:
    from cluster_mgr.sim.result import RunResult

#: The metric keys of summary.json and bench.json, in the order tables print them.
METRIC_KEYS: tuple[str, ...] = (
    "utilitarian_welfare",
    "egalitarian_welfare",
    "nash_welfare",
    "fairness_violation",
    "p99_ms",
    "goodput",
    "slo_violation_magnitude",
    "slo_violation_duration_s",
    "slo_violation_rate",
    "recovery_time_s",
    "cpu_seconds",
    "effective_machine_utilization",
    "decision_ms_p50",
    "reversals_per_hour",
    "regret",
)
#: Direction of "better" for each metric (ratios in bench tables are read with it).
HIGHER_IS_BETTER: dict[str, bool] = {
    "utilitarian_welfare": True,
    "egalitarian_welfare": True,
    "nash_welfare": True,
    "fairness_violation": False,
    "p99_ms": False,
    "goodput": True,
    "slo_violation_magnitude": False,
    "slo_violation_duration_s": False,
    "slo_violation_rate": False,
    "recovery_time_s": False,
    "cpu_seconds": False,
    "effective_machine_utilization": True,
    "decision_ms_p50": False,
    "reversals_per_hour": False,
    "regret": False,
}


# --------------------------------------------------------------------------- welfare


def utilitarian(u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per window: sum_j w_j u_j / sum_j w_j over the apps with a utility (nan if none)."""
    ok = ~np.isnan(u)
    ww = np.where(ok, w[None, :], 0.0)
    den = ww.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            den > 0, (np.nan_to_num(u) * ww).sum(axis=1) / np.where(den > 0, den, 1), np.nan
        )


def egalitarian(u: np.ndarray) -> np.ndarray:
    """Per window: min_j u_j over apps with a utility (nan if none)."""
    ok = ~np.isnan(u)
    out = np.where(ok, u, np.inf).min(axis=1)
    return np.where(ok.any(axis=1), out, np.nan)


def nash(u: np.ndarray, w: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Per window: weighted geometric mean of u_j (0 when any u_j is 0; ``floor`` can soften that)."""
    ok = ~np.isnan(u)
    ww = np.where(ok, w[None, :], 0.0)
    den = ww.sum(axis=1)
    uu = np.maximum(np.where(ok, u, 1.0), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(ww > 0, np.log(np.where(uu > 0, uu, 1.0)), 0.0)
        zero = ((uu <= 0) & ok).any(axis=1)
        g = np.exp((logs * ww).sum(axis=1) / np.where(den > 0, den, 1))
    return np.where(den > 0, np.where(zero, 0.0, g), np.nan)


def fairness_violation(fair_u: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per window: sum over apps of max(0, utility at entitlement - utility held) (nan-safe)."""
    ok = ~np.isnan(fair_u) & ~np.isnan(u)
    if not ok.any():
        return np.full(len(u), np.nan)
    short = np.where(ok, np.maximum(fair_u - u, 0.0), 0.0).sum(axis=1)
    return np.where(ok.any(axis=1), short, np.nan)


# --------------------------------------------------------------------------- SLOs


def slo_violations(
    p99: np.ndarray, target: np.ndarray, window_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per app: (magnitude s, duration s, rate) of P99 above target over the given windows.

    Magnitude: integral of (P99 - target) / target over time while above;
    duration: time above; rate: fraction of windows (with a P99) above target.
    """
    has = ~np.isnan(p99)
    over = has & (p99 > target[None, :])
    excess = np.where(over, (p99 - target[None, :]) / target[None, :], 0.0)
    mag = excess.sum(axis=0) * window_s
    dur = over.sum(axis=0) * window_s
    n = has.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, over.sum(axis=0) / np.maximum(n, 1), np.nan)
    return mag, dur, rate


def episodes(over: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in a 1-D boolean array as (first index, end index exclusive)."""
    o = np.concatenate(([False], np.asarray(over, dtype=bool), [False]))
    d = np.diff(o.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def recovery_times(p99: np.ndarray, target: float, window_s: float) -> list[float]:
    """Nodens' QoS recovery: from the first window over target to the first back within (s).

    An episode still open at the end of the run counts until the end (a lower bound).
    Windows without a P99 (no traffic) neither start nor end an episode.
    """
    has = ~np.isnan(p99)
    over = np.where(has, p99 > target, False)
    # carry the last state through windows without traffic
    idx = np.where(has, np.arange(len(p99)), 0)
    np.maximum.accumulate(idx, out=idx)
    over = over[idx] & has[idx]
    return [(e - s) * window_s for s, e in episodes(over)]


def reaction_times(over: np.ndarray, raised: np.ndarray, window_s: float) -> list[float]:
    """Per violation episode: windows from its first window to the first window in which the job's
    allocation is higher than when the episode began (a fix enforced), in seconds; episodes never
    fixed are left out."""
    out = []
    for s, _ in episodes(over):
        later = np.flatnonzero(raised[s:])
        if len(later):
            out.append(float(later[0]) * window_s)
    return out


# --------------------------------------------------------------------------- stability


def reversals(series: np.ndarray, within: int = 3, tol: float = CPU_QUANTUM / 2) -> int:
    """A job's allocation moving up then down (or down then up) within ``within`` rounds.

    ``series`` is the job's allocation per round; changes below ``tol`` are no change.
    """
    d = np.diff(np.asarray(series, dtype=float))
    moves = [(i, 1 if x > 0 else -1) for i, x in enumerate(d) if abs(x) > tol]
    count = 0
    for (i, a), (j, b) in zip(moves, moves[1:], strict=False):
        if a != b and j - i < within:
            count += 1
    return count


def allocation_changes(rounds: np.ndarray, tol: float = CPU_QUANTUM / 2) -> int:
    """(job, round) pairs whose allocation changed from the previous round."""
    if len(rounds) < 2:
        return 0
    return int((np.abs(np.diff(rounds, axis=0)) > tol).sum())


# --------------------------------------------------------------------------- utilisation


def effective_machine_utilization(
    load: np.ndarray, max_load: np.ndarray, ok: np.ndarray, step: float = 0.1
) -> float | None:
    """Parties/PIMCloud EMU over the load vectors a run visited.

    Each app's load is a fraction of ``max_load`` (what it sustains within its
    SLO alone on the whole machine), rounded down to ``step``; EMU is the
    largest sum of those fractions over windows in which every app met its SLO
    (``ok``). DESIGN.md defines it over a grid of load vectors: a run visits a
    subset of that grid, so this is the run's lower bound of it.
    """
    valid = np.isfinite(max_load) & (max_load > 0)
    if not valid.any() or not ok.any():
        return None
    frac = np.floor(load[:, valid] / max_load[None, valid] / step + 1e-9) * step
    return float(frac[ok].sum(axis=1).max())


# --------------------------------------------------------------------------- summaries


def _mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(r: RunResult, oracle: RunResult | None = None) -> dict[str, Any]:
    """Every metric of a run: {"metrics": {...}, "extra": {...}, "per_app": {...}}."""
    ev = r.eval_mask
    u = r.utility[ev]
    w = r.app_weight
    lat = np.array([m == "latency" for m in r.app_metric])
    target = np.where(lat, r.app_target, np.nan)
    p99w = r.p99_ms[ev][:, lat]
    mag, dur, rate = slo_violations(p99w, target[lat], r.window_s)
    rec: list[float] = []
    react: list[float] = []
    cpu_ev = r.app_cpu[ev]
    for a_pos, a in enumerate(np.flatnonzero(lat)):
        rec.extend(recovery_times(p99w[:, a_pos], target[a], r.window_s))
        col = p99w[:, a_pos]
        over = np.where(np.isnan(col), False, col > target[a])
        raised = np.zeros(len(col), dtype=bool)
        for s, _ in episodes(over):
            raised[s:] = cpu_ev[s:, a] > cpu_ev[s, a] + CPU_QUANTUM / 2
            react.extend(reaction_times(over[s:], raised[s:], r.window_s)[:1])
    hist_lat = r.hist[lat].sum(axis=0) if lat.any() else None
    headline = (
        percentiles(hist_lat[None, :], 99.0)[0] if hist_lat is not None and hist_lat.sum() else None
    )
    hours = max(r.duration_s / 3600.0, 1e-9)
    rev = (
        sum(reversals(r.round_cpu[:, j]) for j in range(r.round_cpu.shape[1]))
        if len(r.round_cpu)
        else 0
    )
    ok_windows = _all_within(r)
    emu = effective_machine_utilization(r.app_load[ev], r.max_load, ok_windows[ev])
    metrics = {
        "utilitarian_welfare": _mean(utilitarian(u, w)),
        "egalitarian_welfare": _mean(egalitarian(u)),
        "nash_welfare": _mean(nash(u, w)),
        "fairness_violation": _mean(fairness_violation(r.fair_utility[ev], r.truth_utility[ev])),
        "p99_ms": _num(headline),
        "goodput": float(r.within[ev].sum() / max(ev.sum() * r.window_s, 1e-9)),
        "slo_violation_magnitude": _mean(mag) if lat.any() else None,
        "slo_violation_duration_s": _mean(dur) if lat.any() else None,
        "slo_violation_rate": _mean(rate) if lat.any() else None,
        "recovery_time_s": _num(np.mean(rec)) if rec else (0.0 if lat.any() else None),
        "cpu_seconds": float(r.cpu_used[ev].sum() * r.window_s),
        "effective_machine_utilization": emu,
        "decision_ms_p50": _num(np.median(r.decision_ms)) if len(r.decision_ms) else None,
        "reversals_per_hour": float(rev / hours),
        "regret": regret(r, oracle) if oracle is not None else None,
    }
    extra = {
        "p99_mean_window_ms": _mean(np.nanmean(p99w, axis=1)) if lat.any() and p99w.size else None,
        "p95_ms": _num(percentiles(hist_lat[None, :], 95.0)[0]) if headline is not None else None,
        "p50_ms": _num(percentiles(hist_lat[None, :], 50.0)[0]) if headline is not None else None,
        "throughput": float(r.completed[ev].sum() / max(ev.sum() * r.window_s, 1e-9)),
        "timed_out_per_s": float(r.timed_out[ev].sum() / max(ev.sum() * r.window_s, 1e-9)),
        "average_reward": _mean(r.reward[ev]),
        "resource_loss_cpu": _mean(r.resource_loss[ev]),
        "pim_core_seconds": float(r.pim_used[ev].sum() * r.window_s),
        "reaction_time_s": _num(np.mean(react)) if react else None,
        "allocation_changes_per_hour": float(allocation_changes(r.round_cpu) / hours),
        "replica_moves_per_hour": float(r.moves.sum() / hours) if len(r.moves) else 0.0,
        "rounds": len(r.round_times),
        "decision_failures": r.failures,
        "truth_utilitarian_welfare": _mean(utilitarian(r.truth_utility[ev], w)),
        "wall_s": r.wall_s,
    }
    per_app = {}
    for a, name in enumerate(r.app_names):
        h = r.hist[a]
        per_app[name] = {
            "utility": _mean(u[:, a]),
            "reward": _mean(r.reward[ev][:, a]),
            "p99_ms": _num(percentiles(h[None, :], 99.0)[0]) if h.sum() else None,
            "cpu_mean": _mean(np.where(r.present[ev][:, a], cpu_ev[:, a], np.nan)),
            "goodput": float(r.within[ev][:, a].sum() / max(ev.sum() * r.window_s, 1e-9)),
        }
    out: dict[str, Any] = {"metrics": metrics, "extra": extra, "per_app": per_app}
    out.update(r.extra)  # sections a run adds (inference: within_bounds_fraction, accuracy loss)
    return out


def _all_within(r: RunResult) -> np.ndarray:
    """Per window: every present app met its SLO (latency: P99 <= target; else reward >= threshold)."""
    ok = np.ones(len(r.times), dtype=bool)
    for a, m in enumerate(r.app_metric):
        pres = r.present[:, a]
        if m == "latency":
            good = ~(r.p99_ms[:, a] > r.app_target[a])
        else:
            good = ~(r.reward[:, a] < r.app_threshold[a] - 1e-9)
        ok &= good | ~pres
    return ok


def regret(r: RunResult, oracle: RunResult, round_s: float | None = None) -> float | None:
    """The oracle's objective minus the policy's, summed over rounds of equal length.

    Both runs are cut into the same rounds (the scenario's round length, from
    the oracle's schedule) so that policies with other cadences compare fairly.
    """
    if len(r.times) != len(oracle.times):
        return None
    step = round_s or (
        float(np.median(np.diff(oracle.round_times)))
        if len(oracle.round_times) > 1
        else r.duration_s
    )
    bins = np.floor(r.times / step).astype(np.int64)
    mine = _per_bin(r, bins)
    best = _per_bin(oracle, bins)
    d = best - mine
    d = d[~np.isnan(d)]
    return float(d.sum()) if len(d) else None


def _per_bin(r: RunResult, bins: np.ndarray) -> np.ndarray:
    per_w = {
        "egalitarian": lambda: egalitarian(r.truth_utility),
        "nash": lambda: nash(r.truth_utility, r.app_weight),
    }.get(r.objective, lambda: utilitarian(r.truth_utility, r.app_weight))()
    ev = r.eval_mask
    out = np.full(bins.max() + 1, np.nan)
    for b in np.unique(bins[ev]):
        m = (bins == b) & ev & ~np.isnan(per_w)
        if m.any():
            out[b] = per_w[m].mean()
    return out


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return float(value) / float(reference)


def best_of(values: Sequence[float | None], metric: str) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return max(vals) if HIGHER_IS_BETTER[metric] else min(vals)
