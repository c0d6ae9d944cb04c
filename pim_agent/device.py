"""The emulated HBM-PIM memory system of one node: pure state advanced by ``step(dt)``.

State per app: the cores it was given by type (big cores; PIM cores per
stack), the cores actually serving (a new core warms up over 2-3 intervals; a
removed core stops at once), where its hot pages live per stack, copies of its
shared read-only pages, a backlog left by overloads, and its offered load.
Per node: one page-migration engine (about 1 us per 4 KB page, shared by the
apps that are moving pages) and per-stack bandwidth demand.

Each ``step`` advances settling and migrations, then computes every app's
service time per core group from its memory accesses and where they land
(65 ns from a big core, 21 ns local / 86 ns remote from a PIM core, inflated
by bandwidth contention), the response-time distribution of the app's queue
(pim_agent.queueing), and samples the window's counters (Poisson request
counts, a multinomial latency histogram) with a seeded generator, so runs are
deterministic. No wall clock is read anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from cluster_mgr.model import LATENCY_BUCKET_EDGES_MS, N_LATENCY_BUCKETS, histogram_percentile
from pim_agent.presets import CACHE_LINE_BYTES, PIMCLOUD, AppProfile, DevicePreset
from pim_agent.queueing import Pool

BW_RHO_CAP = 0.95  # bandwidth utilisation beyond which latency inflation stops growing


class PlanError(ValueError):
    """A plan the device refuses; the message is the reason. Nothing was changed."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """What one app is given: big cores, PIM cores per stack, hot-page fractions per
    stack (sum 1), and the stacks that hold a copy of its shared read-only pages."""

    cpu: int
    pim: tuple[int, ...]
    pages: tuple[float, ...]
    replicas: tuple[int, ...] = ()

    @property
    def pim_total(self) -> int:
        return sum(self.pim)


@dataclass(frozen=True, slots=True)
class AppWindow:
    """One app's counters for the last window (the quantities the gRPC service reports)."""

    name: str
    kind: str
    offered_rps: float
    throughput_rps: float
    completed: int
    p99_ms: float
    mean_ms: float
    latency_hist: tuple[int, ...]
    cpu_cores: float  # cores serving (fractional while settling)
    pim_cores: tuple[float, ...]
    cpu_completions: int
    cpu_busy_s: float  # core-seconds spent serving on big cores
    pim_completions: tuple[int, ...]
    pim_busy_s: tuple[float, ...]
    locality: tuple[float, ...]  # share of a PIM core's accesses that hit its own stack
    page_fractions: tuple[float, ...]
    pages_pending: int  # hot pages still to move or copy
    migration_progress: float  # 1.0 when placement matches the plan
    backlog: float


@dataclass(frozen=True, slots=True)
class NodeWindow:
    time: float
    interval_s: float
    version: int
    apps: tuple[AppWindow, ...]
    channel_bw_gbs: tuple[float, ...]  # per channel, stack-major
    pim_utilization: tuple[float, ...]  # per stack, busy PIM cores / PIM cores
    cpu_utilization: float
    migration_engine_busy: float  # fraction of the window the engine was moving pages

    def app(self, name: str) -> AppWindow:
        for a in self.apps:
            if a.name == name:
                return a
        raise KeyError(name)


@dataclass
class _App:
    profile: AppProfile
    load_rps: float
    target: Assignment
    cpu_eff: float
    pim_eff: np.ndarray
    cpu_ramp: float = 0.0  # cores per second while warming
    pim_ramp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pages: np.ndarray = field(default_factory=lambda: np.zeros(0))  # hot pages per stack
    replica: np.ndarray = field(default_factory=lambda: np.zeros(0))  # copied shared pages
    backlog: float = 0.0
    moved_total: float = 0.0

    @property
    def shared_pages(self) -> float:
        return self.profile.shared_fraction * self.profile.hot_pages

    def target_pages(self) -> np.ndarray:
        return np.asarray(self.target.pages) * self.profile.hot_pages

    def replica_need(self) -> np.ndarray:
        """Copies each stack must hold: the shared pages it lacks as primary."""
        need = np.zeros(len(self.target.pages))
        frac = np.asarray(self.target.pages)
        for s in self.target.replicas:
            need[s] = self.shared_pages * (1.0 - frac[s])
        return need


class PimDevice:
    """One node's HBM-PIM system. Not thread-safe: the gRPC server serialises calls."""

    def __init__(self, preset: DevicePreset = PIMCLOUD, seed: int = 0, start: float = 0.0):
        self.preset = preset
        self.rng = np.random.default_rng(seed)
        self.time = float(start)
        self.version = 0
        self._apps: dict[str, _App] = {}
        self._bw_factor = np.ones(preset.n_stacks)
        self._last: NodeWindow | None = None

    # ------------------------------------------------------------------ apps and load

    @property
    def apps(self) -> tuple[str, ...]:
        return tuple(self._apps)

    def profile(self, name: str) -> AppProfile:
        return self._apps[name].profile

    def register(self, profile: AppProfile, load_rps: float = 0.0) -> None:
        """Add an app with no cores and its pages interleaved (the OS's first touch)."""
        if profile.name in self._apps:
            raise PlanError(f"app {profile.name!r} is already registered")
        n = self.preset.n_stacks
        even = tuple(1.0 / n for _ in range(n))
        app = _App(
            profile=profile,
            load_rps=float(load_rps),
            target=Assignment(0, (0,) * n, even),
            cpu_eff=0.0,
            pim_eff=np.zeros(n),
            pim_ramp=np.zeros(n),
            pages=np.asarray(even) * profile.hot_pages,
            replica=np.zeros(n),
        )
        self._apps[profile.name] = app
        over = self._capacity_excess({})
        if over:
            del self._apps[profile.name]
            raise PlanError(f"app {profile.name!r} does not fit: {over}")

    def remove(self, name: str) -> None:
        if name not in self._apps:
            raise PlanError(f"unknown app {name!r}")
        del self._apps[name]

    def set_load(self, name: str, rps: float) -> None:
        if name not in self._apps:
            raise PlanError(f"unknown app {name!r}")
        if not math.isfinite(rps) or rps < 0:
            raise PlanError(f"load must be a finite number >= 0, got {rps}")
        self._apps[name].load_rps = float(rps)

    def assignment(self, name: str) -> Assignment:
        return self._apps[name].target

    # ------------------------------------------------------------------ plans

    def validate(self, changes: Mapping[str, Assignment]) -> None:
        """Raise PlanError with the reason when applying ``changes`` would be wrong."""
        p = self.preset
        unknown = sorted(set(changes) - set(self._apps))
        if unknown:
            raise PlanError(f"unknown app(s) {unknown}")
        for name, a in changes.items():
            if a.cpu < 0 or any(c < 0 for c in a.pim):
                raise PlanError(f"app {name!r}: negative core count")
            if len(a.pim) != p.n_stacks or len(a.pages) != p.n_stacks:
                raise PlanError(f"app {name!r}: expected {p.n_stacks} stacks in pim and pages")
            if any(f < -1e-9 for f in a.pages) or abs(sum(a.pages) - 1.0) > 1e-6:
                raise PlanError(f"app {name!r}: page fractions must be >= 0 and sum to 1")
            if any(not 0 <= s < p.n_stacks for s in a.replicas) or len(set(a.replicas)) != len(
                a.replicas
            ):
                raise PlanError(f"app {name!r}: replica stacks must be distinct stack indices")
        full = {n: changes.get(n, app.target) for n, app in self._apps.items()}
        cpu = sum(a.cpu for a in full.values())
        if cpu > p.cpu_cores:
            raise PlanError(f"over-subscribed: {cpu} big cores asked, {p.cpu_cores} exist")
        for s in range(p.n_stacks):
            pim = sum(a.pim[s] for a in full.values())
            if pim > p.pim_cores_per_stack:
                raise PlanError(
                    f"over-subscribed: {pim} PIM cores asked on stack {s}, "
                    f"{p.pim_cores_per_stack} exist"
                )
        over = self._capacity_excess(changes)
        if over:
            raise PlanError(f"over-subscribed memory: {over}")

    def _capacity_excess(self, changes: Mapping[str, Assignment]) -> str:
        p = self.preset
        used = np.zeros(p.n_stacks)
        for name, app in self._apps.items():
            a = changes.get(name, app.target)
            frac = np.asarray(a.pages)
            used += frac * app.profile.hot_pages + app.profile.cold_pages / p.n_stacks
            for s in a.replicas:
                used[s] += app.shared_pages * (1.0 - frac[s])
        cap = p.stack_capacity_pages
        bad = [
            f"stack {s} needs {used[s]:.0f} pages of {cap}"
            for s in range(p.n_stacks)
            if used[s] > cap
        ]
        return "; ".join(bad)

    def apply(self, changes: Mapping[str, Assignment], version: int) -> None:
        """Validate the whole plan, then apply it; a rejected plan changes nothing."""
        if version <= self.version:
            raise PlanError(f"stale plan version {version}: version {self.version} is in force")
        self.validate(changes)
        for name, a in changes.items():
            self._retarget(self._apps[name], a)
        self.version = version

    def _retarget(self, app: _App, a: Assignment) -> None:
        p = self.preset
        dt = p.interval_s
        # Added cores warm up (thread migration, cache and TLB refill) linearly over
        # the settle intervals; removed cores stop serving at once.
        if a.cpu > app.cpu_eff:
            app.cpu_ramp = (a.cpu - app.cpu_eff) / (p.cpu_settle_intervals * dt)
        else:
            app.cpu_eff, app.cpu_ramp = float(a.cpu), 0.0
        pim = np.asarray(a.pim, float)
        grow = pim > app.pim_eff
        app.pim_ramp = np.where(grow, (pim - app.pim_eff) / (p.pim_settle_intervals * dt), 0.0)
        app.pim_eff = np.where(grow, app.pim_eff, pim)
        # Dropping a replica frees its copies at once; adding one copies page by page.
        keep = np.zeros(p.n_stacks, bool)
        keep[list(a.replicas)] = True
        app.replica = np.where(keep, app.replica, 0.0)
        app.target = replace(a, pim=tuple(int(c) for c in a.pim), pages=tuple(a.pages))

    # ------------------------------------------------------------------ time

    def step(self, dt: float | None = None) -> NodeWindow:
        """Advance the device by ``dt`` seconds (one control interval by default)."""
        dt = self.preset.interval_s if dt is None else float(dt)
        if dt <= 0:
            raise ValueError(f"step needs dt > 0, got {dt}")
        self._settle_cores(dt)
        engine_busy = self._migrate(dt)
        windows, demand, pim_busy, cpu_busy = [], np.zeros(self.preset.n_stacks), None, 0.0
        pim_busy = np.zeros(self.preset.n_stacks)
        for app in self._apps.values():
            w, app_demand = self._serve(app, dt)
            windows.append(w)
            demand += app_demand
            pim_busy += np.asarray(w.pim_busy_s)
            cpu_busy += w.cpu_busy_s
        p = self.preset
        rho = np.minimum(demand / (p.stack_bandwidth_gbs * 1e9), BW_RHO_CAP)
        # Memory latency grows with channel queueing; used by the next step (the
        # demand of this window shapes the latency of the next one).
        self._bw_factor = 1.0 + rho * rho / (1.0 - rho)
        self.time += dt
        channel = np.repeat(demand / p.channels_per_stack / 1e9, p.channels_per_stack)
        self._last = NodeWindow(
            time=self.time,
            interval_s=dt,
            version=self.version,
            apps=tuple(windows),
            channel_bw_gbs=tuple(float(x) for x in channel),
            pim_utilization=tuple(
                float(x) for x in pim_busy / max(p.pim_cores_per_stack * dt, 1e-12)
            ),
            cpu_utilization=float(cpu_busy / max(p.cpu_cores * dt, 1e-12)),
            migration_engine_busy=engine_busy,
        )
        return self._last

    def last_window(self) -> NodeWindow | None:
        return self._last

    def _settle_cores(self, dt: float) -> None:
        for app in self._apps.values():
            app.cpu_eff = min(float(app.target.cpu), app.cpu_eff + app.cpu_ramp * dt)
            app.pim_eff = np.minimum(
                np.asarray(app.target.pim, float), app.pim_eff + app.pim_ramp * dt
            )

    def _pending(self, app: _App) -> tuple[np.ndarray, np.ndarray]:
        move = np.maximum(app.target_pages() - app.pages, 0.0)
        copy = np.maximum(app.replica_need() - app.replica, 0.0)
        return move, copy

    def _migrate(self, dt: float) -> float:
        """Move and copy pages with one engine of 1 page per ``page_migrate_us``, shared
        equally by the apps that have work (what one app leaves goes to the others)."""
        budget = dt * 1e6 / self.preset.page_migrate_us
        work = {n: sum(x.sum() for x in self._pending(a)) for n, a in self._apps.items()}
        work = {n: w for n, w in work.items() if w > 0.5}
        used = 0.0
        while work and budget - used > 1e-6:
            share = (budget - used) / len(work)
            for name in sorted(work, key=work.get):
                take = min(share, work[name])
                self._move_pages(self._apps[name], take)
                used += take
                work[name] -= take
                if work[name] <= 0.5:
                    del work[name]
            if all(w > share for w in work.values()):
                break
        return min(used / budget, 1.0) if budget > 0 else 0.0

    def _move_pages(self, app: _App, amount: float) -> None:
        move, copy = self._pending(app)
        total_move = move.sum()
        surplus = np.maximum(app.pages - app.target_pages(), 0.0)
        m = min(amount, total_move, surplus.sum())
        if m > 0:
            app.pages = app.pages + move * (m / total_move) - surplus * (m / surplus.sum())
            app.moved_total += m
        c = min(amount - m, copy.sum())
        if c > 0:
            app.replica = app.replica + copy * (c / copy.sum())

    def _locality(self, app: _App) -> np.ndarray:
        frac = app.pages / max(app.pages.sum(), 1e-12)
        sh = app.profile.shared_fraction
        copied = app.replica / app.shared_pages if app.shared_pages > 0 else np.zeros_like(frac)
        return (1.0 - sh) * frac + sh * np.minimum(1.0, frac + copied)

    def _serve(self, app: _App, dt: float) -> tuple[AppWindow, np.ndarray]:
        p, prof = self.preset, app.profile
        n_acc = prof.accesses_per_request(p.cpu_mem_ns)
        frac = app.pages / max(app.pages.sum(), 1e-12)
        loc = self._locality(app)
        f = self._bw_factor
        mean_f = float(frac @ f)
        cpu_s = (
            1.0 - prof.mem_intensity
        ) * prof.cpu_service_ms + n_acc * p.cpu_mem_ns * mean_f * 1e-6
        pim_c = prof.pim_compute_ms(p)
        other_f = np.array(
            [(mean_f - frac[s] * f[s]) / max(1.0 - frac[s], 1e-12) for s in range(p.n_stacks)]
        )
        pim_lat = loc * p.pim_local_ns * f + (1.0 - loc) * p.pim_remote_ns * other_f
        pim_s = pim_c + n_acc * pim_lat * 1e-6
        n = np.concatenate([[app.cpu_eff], app.pim_eff])
        s = np.concatenate([[cpu_s], pim_s])
        capacity = float((n / s).sum()) * 1000.0  # requests/s
        if prof.kind == "be":
            served_rps, delay = capacity, 0.0  # best effort always has work queued
        else:
            arrivals = app.load_rps * dt
            served = min(arrivals + app.backlog, capacity * dt)
            app.backlog = max(app.backlog + arrivals - served, 0.0)
            served_rps = served / dt
            delay = app.backlog / capacity * 1000.0 if capacity > 0 else math.inf
        pool = Pool(
            n,
            s,
            min(app.load_rps, served_rps) / 1000.0,
            0.0 if math.isinf(delay) else delay,
            proportional=prof.kind == "be",
        )
        completed = int(self.rng.poisson(served_rps * dt)) if served_rps > 0 else 0
        hist = self._sample_hist(pool, completed, prof.kind == "be")
        groups = (
            self.rng.multinomial(completed, _probs(pool.share_all))
            if completed
            else np.zeros(len(n), int)
        )
        busy = np.array(
            [
                self.rng.gamma(k, sg) / 1000.0 if k > 0 else 0.0
                for k, sg in zip(groups, s, strict=True)
            ]
        )
        if prof.kind == "be":
            busy = n * dt  # saturated: every core it holds is busy all window
        p99 = histogram_percentile(hist, 99.0) if completed else math.nan
        move, copy = self._pending(app)
        pending = float(move.sum() + copy.sum())
        total = pending + app.moved_total
        demand = served_rps * n_acc * CACHE_LINE_BYTES * frac  # bytes/s per stack
        w = AppWindow(
            name=prof.name,
            kind=prof.kind,
            offered_rps=app.load_rps if prof.kind == "lc" else served_rps,
            throughput_rps=completed / dt,
            completed=completed,
            p99_ms=p99,
            mean_ms=pool.mean_ms()
            if prof.kind == "lc"
            else float(pool.share @ pool.s)
            if pool.served
            else math.nan,
            latency_hist=tuple(hist.tolist()),
            cpu_cores=float(app.cpu_eff),
            pim_cores=tuple(float(x) for x in app.pim_eff),
            cpu_completions=int(groups[0]),
            cpu_busy_s=float(busy[0]),
            pim_completions=tuple(int(x) for x in groups[1:]),
            pim_busy_s=tuple(float(x) for x in busy[1:]),
            locality=tuple(float(x) for x in loc),
            page_fractions=tuple(float(x) for x in frac),
            pages_pending=int(round(pending)),
            migration_progress=1.0 if pending < 0.5 else float(app.moved_total / total),
            backlog=float(app.backlog),
        )
        return w, demand

    def _sample_hist(self, pool: Pool, completed: int, best_effort: bool) -> np.ndarray:
        if completed == 0 or not pool.served:
            return np.zeros(N_LATENCY_BUCKETS, dtype=np.int64)
        if best_effort:
            # Closed loop: a best-effort request's latency is its service time alone.
            pool = Pool(pool.n, pool.s, 0.0, proportional=True)
        cdf = 1.0 - pool.tail(LATENCY_BUCKET_EDGES_MS)
        probs = np.diff(cdf)
        probs[0] += cdf[0]
        probs[-1] += 1.0 - cdf[-1]
        probs = np.clip(probs, 0.0, None)
        return self.rng.multinomial(completed, probs / probs.sum()).astype(np.int64)

    # ------------------------------------------------------------------ ground truth

    def steady_p99_ms(self, name: str, assignment: Assignment, load_rps: float) -> float:
        """P99 the app would settle at under ``assignment`` (no noise, no backlog, pages
        in place); used by oracles and to size loads, never by the manager."""
        return app_p99_ms(self.preset, self._apps[name].profile, assignment, load_rps)


def _probs(share: np.ndarray) -> np.ndarray:
    share = np.clip(np.asarray(share, float), 0.0, None)
    total = share.sum()
    return share / total if total > 0 else np.full(len(share), 1.0 / len(share))


def service_times_ms(
    preset: DevicePreset, prof: AppProfile, locality: np.ndarray
) -> tuple[float, np.ndarray]:
    """(big-core service ms, PIM-core service ms per stack) at the given locality,
    without bandwidth contention."""
    n_acc = prof.accesses_per_request(preset.cpu_mem_ns)
    cpu_s = prof.cpu_service_ms
    pim_lat = locality * preset.pim_local_ns + (1.0 - locality) * preset.pim_remote_ns
    return cpu_s, prof.pim_compute_ms(preset) + n_acc * pim_lat * 1e-6


def settled_locality(prof: AppProfile, a: Assignment) -> np.ndarray:
    frac = np.asarray(a.pages, float)
    copied = np.zeros_like(frac)
    copied[list(a.replicas)] = 1.0
    sh = prof.shared_fraction
    return (1.0 - sh) * frac + sh * np.minimum(1.0, frac + copied)


def app_p99_ms(preset: DevicePreset, prof: AppProfile, a: Assignment, load_rps: float) -> float:
    cpu_s, pim_s = service_times_ms(preset, prof, settled_locality(prof, a))
    n = np.concatenate([[a.cpu], np.asarray(a.pim, float)])
    s = np.concatenate([[cpu_s], pim_s])
    pool = Pool(n, s, load_rps / 1000.0)
    if not pool.served or pool.rho >= 1.0:
        return math.inf
    return pool.percentile_ms(99.0)
