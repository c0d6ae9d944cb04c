"""Helpers shared by the PIM policies: page placement that follows cores, even
splits, capacity checks, handing leftovers to best-effort apps, and judging a
tail on enough requests."""

from __future__ import annotations

from collections.abc import Mapping

from scipy import stats

from allocators.pim.snapshot import AppPlan, PimApp, PimCapacity, PimPlan, PimSnapshot
from cluster_mgr.model import histogram_percentile

MIN_SAMPLES = 200  # requests pooled before a tail is judged (a P99 needs ~100s of samples)
MAX_POOL = 10  # ...or at most this many intervals (1 s)


def even(n: int) -> tuple[float, ...]:
    return tuple(1.0 / n for _ in range(n))


def split(total: int, parts: int) -> list[int]:
    """``total`` units over ``parts`` as evenly as integers allow (first parts get more)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def local_pages(pim: tuple[int, ...], fallback: tuple[float, ...]) -> tuple[float, ...]:
    """Hot pages follow the app's PIM cores (proportionally); an app on big cores
    alone keeps its pages where they are (big cores see every stack alike)."""
    total = sum(pim)
    if total == 0:
        return fallback
    return tuple(c / total for c in pim)


def follow_cores(cpu: int, pim: tuple[int, ...], fallback: tuple[float, ...]) -> AppPlan:
    """An app plan whose pages are local to its PIM cores, and whose shared read-only
    pages are copied to every stack it runs PIM cores on when it spans stacks."""
    pages = local_pages(pim, fallback)
    used = tuple(s for s, c in enumerate(pim) if c > 0)
    return AppPlan(cpu, tuple(pim), pages, used if len(used) > 1 else ())


def current_pages(snap: PimSnapshot, name: str) -> tuple[float, ...]:
    cur = snap.current.get(name) if snap.current else None
    if cur is not None:
        return cur.pages
    m = snap.measures.get(name)
    return m.page_fractions if m is not None else even(snap.capacity.n_stacks)


def free_cores(cap: PimCapacity, apps: Mapping[str, AppPlan]) -> tuple[int, list[int]]:
    cpu = cap.cpu_cores - sum(a.cpu for a in apps.values())
    pim = [
        cap.pim_cores_per_stack - sum(a.pim[s] for a in apps.values()) for s in range(cap.n_stacks)
    ]
    return cpu, pim


def stack_use(
    cap: PimCapacity, apps: tuple[PimApp, ...], plans: Mapping[str, AppPlan]
) -> list[float]:
    used = [0.0] * cap.n_stacks
    for a in apps:
        p = plans.get(a.name)
        fr = p.pages if p is not None else even(cap.n_stacks)
        for s in range(cap.n_stacks):
            used[s] += fr[s] * a.hot_pages + a.cold_pages / cap.n_stacks
        for s in p.replicas if p is not None else ():
            used[s] += a.shared_pages * (1.0 - fr[s])
    return used


def fits_memory(cap: PimCapacity, apps: tuple[PimApp, ...], plans: Mapping[str, AppPlan]) -> bool:
    return all(u <= cap.stack_capacity_pages for u in stack_use(cap, apps, plans))


def repair_memory(snap: PimSnapshot, plans: dict[str, AppPlan]) -> dict[str, AppPlan]:
    """If a stack would overflow, drop replicas, then spread big-core-only apps' pages
    evenly: the cheapest fixes that keep PIM cores' pages local."""
    cap = snap.capacity
    if fits_memory(cap, snap.apps, plans):
        return plans
    plans = {n: AppPlan(p.cpu, p.pim, p.pages, ()) for n, p in plans.items()}
    if fits_memory(cap, snap.apps, plans):
        return plans
    for n, p in plans.items():
        if sum(p.pim) == 0:
            plans[n] = AppPlan(p.cpu, p.pim, even(cap.n_stacks))
    return plans


def give_leftovers(snap: PimSnapshot, plans: dict[str, AppPlan]) -> dict[str, AppPlan]:
    """Best-effort apps share the cores no latency-critical app holds (PIMCloud's pool)."""
    be = snap.be
    if not be:
        return plans
    lc_only = {n: p for n, p in plans.items() if snap.app(n).latency_critical}
    cpu, pim = free_cores(snap.capacity, lc_only)
    cpu_parts = split(max(cpu, 0), len(be))
    pim_parts = [split(max(f, 0), len(be)) for f in pim]
    for i, a in enumerate(be):
        p = tuple(pim_parts[s][i] for s in range(snap.capacity.n_stacks))
        plans[a.name] = follow_cores(cpu_parts[i], p, current_pages(snap, a.name))
    return plans


def finish(snap: PimSnapshot, plans: dict[str, AppPlan]) -> PimPlan:
    return PimPlan(repair_memory(snap, give_leftovers(snap, plans)))


def same_plan(a: PimPlan | None, b: PimPlan | None) -> bool:
    if a is None or b is None:
        return a is b
    return dict(a.apps) == dict(b.apps)


def pool_tails(
    snap: PimSnapshot, pool: Mapping[str, list[int]], pooled: int
) -> tuple[dict[str, list[int]], int, bool]:
    """Add this interval's latency histograms of the latency-critical apps to ``pool``.

    Returns (pool, intervals pooled, ready): ready once every app has MIN_SAMPLES
    requests pooled, or MAX_POOL intervals have gone by. A single 100 ms window of a
    250 req/s app holds 25 requests, too few for a P99: a controller that acts on it
    moves on noise. The caller empties the pool after a change (judge only what
    followed it) and after judging.
    """
    out = {k: list(v) for k, v in pool.items()}
    for a in snap.lc:
        m = snap.measures.get(a.name)
        if m is not None and m.latency_hist:
            h = out.get(a.name) or [0] * len(m.latency_hist)
            out[a.name] = [x + y for x, y in zip(h, m.latency_hist, strict=True)]
    pooled += 1
    few = any(sum(out.get(a.name, ())) < MIN_SAMPLES for a in snap.lc)
    return out, pooled, not few or pooled >= MAX_POOL


def tail_ratio(snap: PimSnapshot, name: str, hist: list[int] | None) -> float:
    """P99 / target of ``name`` on its pooled histogram (the last window's P99 when
    nothing was pooled; 0 without a target or a measurement)."""
    slo = snap.app(name).slo_p99_ms
    if slo is None:
        return 0.0
    if hist and sum(hist) > 0:
        return histogram_percentile(hist, 99.0) / slo
    m = snap.measures.get(name)
    if m is None or m.p99_ms != m.p99_ms:
        return 0.0
    return m.p99_ms / slo


def tail_surely_over(hist: list[int] | None, slo_ms: float, confidence: float = 0.95) -> bool:
    """Whether a pooled histogram shows its P99 over ``slo_ms`` beyond sampling error:
    more requests over the target than a P99 within target leaves with ``confidence``
    (binomial quantile of n requests at 1%). 300 requests hold 3 over a true P99;
    a pooled P99 of them is over target about half the time when the truth is at it."""
    n = int(sum(hist)) if hist else 0
    if n == 0:
        return False
    allowed = float(stats.binom.ppf(confidence, n, 0.01))
    return histogram_percentile(hist, 100.0 * (1.0 - allowed / n)) > slo_ms
