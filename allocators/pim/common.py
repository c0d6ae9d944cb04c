"""Helpers shared by the PIM policies: page placement that follows cores, even
splits, capacity checks, and handing leftovers to best-effort apps."""

from __future__ import annotations

from collections.abc import Mapping

from allocators.pim.snapshot import AppPlan, PimApp, PimCapacity, PimPlan, PimSnapshot


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
