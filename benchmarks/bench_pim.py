"""PIM policies side by side on TailBench-like 2-app and 3-app mixes (PIMCloud's setting).

Per DESIGN.md: each app's load is a percentage of the highest load it sustains
within its P99 target alone on the whole machine (found on the device's ground
truth over every core assignment); EMU is the largest sum of those percentages,
over a 10%-step grid, for which the policy keeps every app within its SLO.

A grid point is run closed-loop against the emulated device through the PIM
client (in-memory transport, the same servicer as the gRPC server): the policy
decides every 100 ms for RUN_S seconds; the point counts as met when every app's
request-level P99 over the last EVAL_S seconds is within its target, judged with
the sampling error of a P99 from that many requests (``within_slo``): a P99 from
n requests is an order statistic, and at 121 req/s (Moses at 10% load) the last
5 s hold about 600 requests, whose P99 scatters by about 10% of the target: the
ground-truth oracle's own plan, true P99 0.93 of target, read as a miss on one
seed in five. So a point is missed when more requests exceed the target than a
P99 within target would leave with 95% probability (binomial, one-sided). The
margin shrinks as requests grow (60,000 requests: 0.07 percentile points); the
same judge serves every policy, and the point-estimate judge (pooled P99 within
target, no margin) is reported beside it as ``slo_met_fraction_point``. Points the
ground-truth oracle (best static assignment, exact search) cannot meet are not
run: no policy can meet them. The frontier is walked as a staircase, assuming a
policy that meets a load vector also meets every smaller one; the reported EMU
is always a point that was actually run and met.

slo_met_fraction: over the balanced points (every app at the same level) the
oracle can meet, the fraction a policy meets. time_to_feasible_s (ours): from
the start to the first 1 s window after which every 1 s window meets every SLO
(same judge), median over those points ours meets.

Prints a rich table, then exactly one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time

import numpy as np
from scipy import stats

from allocators.pim import POLICIES
from allocators.pim.search import min_max
from cluster_mgr.model import histogram_percentile
from pim_agent.client import InMemoryTransport, PimClient
from pim_agent.device import Assignment, PimDevice, app_p99_ms
from pim_agent.loop import PimControlLoop
from pim_agent.presets import PIMCLOUD, AppProfile, DevicePreset
from pim_agent.workloads import TAILBENCH

RUN_S = 15.0
EVAL_S = 5.0
MIXES_2 = (("masstree", "imgdnn"), ("silo", "xapian"), ("moses", "imgdnn"))
MIXES_3 = (("masstree", "imgdnn", "xapian"),)
OURS = "learned"
PIMCLOUD_RULE = "pimcloud"
CONFIDENCE = 0.95  # a miss must show beyond the sampling error of the P99 at this level


def within_slo(hist: np.ndarray, slo_ms: float, margin: bool = True) -> bool:
    """Whether a pooled latency histogram meets a P99 target.

    With ``margin``: met unless more requests exceed the target than the most a
    true P99 within target leaves with CONFIDENCE probability (the binomial
    quantile of n requests at 1%), i.e. unless the percentile at that rank is above
    the target. Without: the pooled P99 itself. No request served: not met.
    """
    n = int(np.sum(hist))
    if n == 0:
        return False
    q = 99.0
    if margin:
        q = 100.0 * (1.0 - float(stats.binom.ppf(CONFIDENCE, n, 0.01)) / n)
    return histogram_percentile(hist, q) <= slo_ms


# ---------------------------------------------------------------- ground truth


def options(p: DevicePreset) -> list[Assignment]:
    """Every assignment the oracle considers: big cores x (PIM cores on one stack, or
    one full stack plus some on another), pages local, shared pages replicated."""
    out = []
    for c in range(p.cpu_cores + 1):
        pims = [tuple(0 for _ in range(p.n_stacks))]
        for s in range(p.n_stacks):
            for k in range(1, p.pim_cores_per_stack + 1):
                v = [0] * p.n_stacks
                v[s] = k
                pims.append(tuple(v))
                if k == p.pim_cores_per_stack:
                    for s2 in range(s + 1, p.n_stacks):
                        for k2 in range(1, p.pim_cores_per_stack + 1):
                            w = list(v)
                            w[s2] = k2
                            pims.append(tuple(w))
        for pim in pims:
            tot = sum(pim)
            pages = tuple(x / tot for x in pim) if tot else tuple(1.0 / p.n_stacks for _ in pim)
            used = tuple(s for s, x in enumerate(pim) if x > 0)
            out.append(Assignment(c, pim, pages, used if len(used) > 1 else ()))
    return out


def max_load(p: DevicePreset, prof: AppProfile, a: Assignment) -> float:
    """Highest load (req/s) with steady-state P99 within the SLO under ``a``."""
    if a.cpu + a.pim_total == 0:
        return 0.0
    hi = (a.cpu / prof.cpu_service_ms + a.pim_total / (prof.r_pim * prof.cpu_service_ms)) * 1000
    lo = 0.0
    if app_p99_ms(p, prof, a, hi * 1e-3) > prof.slo_p99_ms:
        return 0.0
    for _ in range(22):
        mid = 0.5 * (lo + hi)
        if app_p99_ms(p, prof, a, mid) <= prof.slo_p99_ms:
            lo = mid
        else:
            hi = mid
    return lo


@functools.cache
def capacity_table(p: DevicePreset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(usage rows, max sustainable load per row) over the oracle's options."""
    opts = options(p)
    usage = np.array([[a.cpu, *a.pim] for a in opts], dtype=np.int64)
    lam = np.array([max_load(p, TAILBENCH[name], a) for a in opts])
    return usage, lam


def alone_max(p: DevicePreset, name: str) -> float:
    return float(capacity_table(p, name)[1].max())


def oracle_feasible(p: DevicePreset, mix: tuple[str, ...], loads: tuple[float, ...]) -> bool:
    shape = (p.cpu_cores + 1, *([p.pim_cores_per_stack + 1] * p.n_stacks))
    usage = capacity_table(p, mix[0])[0]
    scores = []
    for name, load in zip(mix, loads, strict=True):
        lam = capacity_table(p, name)[1]
        scores.append(np.where(lam > 0, load / np.maximum(lam, 1e-9), np.inf))
    best, _ = min_max(usage, scores, shape)
    return best <= 1.0


# ---------------------------------------------------------------- closed-loop runs


def run_point(
    p: DevicePreset, policy: str, mix: tuple[str, ...], loads: tuple[float, ...], seed: int
) -> tuple[bool, float, bool]:
    """(every SLO met over the evaluation window, time to feasible in s or inf, every
    SLO met by the point estimate alone)."""
    dev = PimDevice(p, seed=seed)
    for name, load in zip(mix, loads, strict=True):
        dev.register(TAILBENCH[name], load)
    loop = PimControlLoop(
        PimClient(InMemoryTransport(dev)), POLICIES[policy](), {n: TAILBENCH[n] for n in mix}
    )
    ticks = int(round(RUN_S / p.interval_s))
    per_s = int(round(1.0 / p.interval_s))
    hists = {n: [] for n in mix}
    for _ in range(ticks):
        w = loop.tick()
        for n in mix:
            hists[n].append(np.asarray(w.app(n).latency_hist))
    eval_ticks = int(round(EVAL_S / p.interval_s))
    last = {n: np.sum(hists[n][-eval_ticks:], axis=0) for n in mix}
    met = all(within_slo(last[n], TAILBENCH[n].slo_p99_ms) for n in mix)
    met_point = all(within_slo(last[n], TAILBENCH[n].slo_p99_ms, margin=False) for n in mix)
    seconds = ticks // per_s
    ok = [
        all(
            within_slo(
                np.sum(hists[n][s * per_s : (s + 1) * per_s], axis=0), TAILBENCH[n].slo_p99_ms
            )
            for n in mix
        )
        for s in range(seconds)
    ]
    ttf = math.inf
    for s in range(seconds - 1, -1, -1):
        if not ok[s]:
            break
        ttf = float(s)
    return met, ttf, met_point


class Evaluator:
    def __init__(self, p: DevicePreset, mix: tuple[str, ...], seed: int):
        self.p, self.mix, self.seed = p, mix, seed
        self.alone = [alone_max(p, n) for n in mix]
        self.cache: dict[tuple[str, tuple[int, ...]], tuple[bool, float, bool]] = {}
        self.runs = 0

    def loads(self, levels: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(lv / 10 * m for lv, m in zip(levels, self.alone, strict=True))

    def met(self, policy: str, levels: tuple[int, ...]) -> tuple[bool, float, bool]:
        key = (policy, levels)
        if key not in self.cache:
            loads = self.loads(levels)
            if not oracle_feasible(self.p, self.mix, loads):
                self.cache[key] = (False, math.inf, False)
            else:
                self.runs += 1
                self.cache[key] = run_point(self.p, policy, self.mix, loads, self.seed)
        return self.cache[key]

    def emu(self, policy: str) -> int:
        """Largest met sum of levels (x10 %), by a staircase walk of the frontier."""
        n = len(self.mix)
        best = 0
        if n == 2:
            b = 10
            for a in range(1, 11):
                while b >= 1 and not self.met(policy, (a, b))[0]:
                    b -= 1
                if b < 1:
                    break
                best = max(best, a + b)
            return best
        prev = [10] * 11
        for a in range(1, 11):
            c = 10
            any_met = False
            for b in range(1, 11):
                c = min(c, prev[b])
                while c >= 1 and not self.met(policy, (a, b, c))[0]:
                    c -= 1
                prev[b] = max(c, 0)
                if c < 1:
                    for bb in range(b + 1, 11):
                        prev[bb] = 0
                    break
                any_met = True
                best = max(best, a + b + c)
            if not any_met:
                break
        return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="2-app mixes only, one of them")
    args = ap.parse_args(argv)
    p = PIMCLOUD
    mixes = MIXES_2[:1] if args.quick else MIXES_2 + MIXES_3
    policies = list(POLICIES)
    t0 = time.time()
    emu: dict[str, dict[str, float]] = {pol: {} for pol in policies}
    met_frac: dict[str, list[bool]] = {pol: [] for pol in policies}
    met_point: dict[str, list[bool]] = {pol: [] for pol in policies}
    ttf: dict[str, list[float]] = {pol: [] for pol in policies}
    oracle: dict[str, float] = {}
    for mix in mixes:
        ev = Evaluator(p, mix, args.seed)
        label = "+".join(mix)
        for pol in policies:
            emu[pol][label] = ev.emu(pol) * 10.0
        balanced = [
            (lv,) * len(mix)
            for lv in range(1, 11)
            if oracle_feasible(p, mix, ev.loads((lv,) * len(mix)))
        ]
        oracle[label] = 10.0 * max(
            (sum(x) for x in _grid(len(mix)) if oracle_feasible(p, mix, ev.loads(x))), default=0
        )
        for pol in policies:
            for lv in balanced:
                ok, t, ok_point = ev.met(pol, lv)
                met_frac[pol].append(ok)
                met_point[pol].append(ok_point)
                if ok and math.isfinite(t):
                    ttf[pol].append(t)
        print(f"# {label}: {ev.runs} closed-loop runs, {time.time() - t0:.0f}s", file=sys.stderr)
    mean_emu = {pol: statistics.fmean(v.values()) for pol, v in emu.items()}
    slo = {pol: (sum(v) / len(v) if v else 0.0) for pol, v in met_frac.items()}
    slo_point = {pol: (sum(v) / len(v) if v else 0.0) for pol, v in met_point.items()}
    others = [pol for pol in policies if pol not in (OURS, PIMCLOUD_RULE)]
    best_other = max(mean_emu[o] for o in others + [PIMCLOUD_RULE])
    best_baseline = max(mean_emu[o] for o in others)
    ours_ttf = ttf[OURS]
    _table(mixes, policies, emu, mean_emu, slo, ttf, oracle)
    result = {
        "emu": {pol: round(v, 1) for pol, v in mean_emu.items()},
        "slo_met_fraction": {pol: round(v, 3) for pol, v in slo.items()},
        "slo_met_fraction_point": {pol: round(v, 3) for pol, v in slo_point.items()},
        "slo_points": len(met_frac[OURS]),
        "emu_ratio_vs_pimcloud": (
            round(mean_emu[OURS] / mean_emu[PIMCLOUD_RULE], 3) if mean_emu[PIMCLOUD_RULE] else None
        ),
        "emu_ratio_vs_best_other": round(mean_emu[OURS] / max(best_other, 1e-9), 3),
        "emu_ratio_vs_best_baseline": round(mean_emu[OURS] / max(best_baseline, 1e-9), 3),
        "time_to_feasible_s": statistics.median(ours_ttf) if ours_ttf else None,
        "time_to_feasible_max_s": max(ours_ttf) if ours_ttf else None,
        "emu_by_mix": emu,
        "oracle_emu_by_mix": oracle,
        "preset": p.name,
        "seed": args.seed,
    }
    print(json.dumps(result, sort_keys=True))
    return 0


def _grid(n: int) -> list[tuple[int, ...]]:
    import itertools

    return list(itertools.product(range(1, 11), repeat=n))


def _table(mixes, policies, emu, mean_emu, slo, ttf, oracle) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    t = Table(title="PIM policies: effective machine utilization (%) on PIMCloud's preset")
    t.add_column("policy")
    for mix in mixes:
        t.add_column("+".join(mix), justify="right")
    t.add_column("mean EMU", justify="right")
    t.add_column("SLO met (balanced)", justify="right")
    t.add_column("median time to feasible (s)", justify="right")
    for pol in policies:
        tt = ttf[pol]
        t.add_row(
            pol,
            *(f"{emu[pol]['+'.join(m)]:.0f}" for m in mixes),
            f"{mean_emu[pol]:.1f}",
            f"{slo[pol]:.2f}",
            f"{statistics.median(tt):.1f}" if tt else "-",
        )
    t.add_row(
        "oracle (static, ground truth)", *(f"{oracle['+'.join(m)]:.0f}" for m in mixes), "", "", ""
    )
    Console(file=sys.stdout).print(t)


if __name__ == "__main__":
    raise SystemExit(main())
