"""Baseline per-node controllers, run exactly as ours is (same signals, budget, fast window).

* ``PartiesController`` (Parties, ASPLOS '19).
* ``CaladanController`` (Caladan, OSDI '20), at fast-window granularity.
* ``SurgeGuardController`` (SurgeGuard, SC '24) as published.
* ``AutothrottleController`` (Autothrottle, NSDI '24): Tower + Captains.
* ``GlobalOnly``: the per-round global plan enforced with no fast layer.

What is left out is stated per class; DESIGN.md lists the published facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster_mgr.local.controller import FREQ_NOMINAL, state_of
from cluster_mgr.local.knobs import MIN_QUOTA, Knobs
from cluster_mgr.local.planner import RoundPlan
from cluster_mgr.local.profile import ServiceProfile
from cluster_mgr.local.signals import NodeSignals

_EMPTY = lambda: np.zeros((0, 0))  # noqa: E731


@dataclass
class GlobalOnly:
    """The global allocator alone: each round's planned cores at nominal frequency, nothing faster."""

    name: str = "global_only"

    def reset(self, plan: RoundPlan, knobs: Knobs) -> None:
        pass

    def on_round(self, plan: RoundPlan) -> Knobs | None:
        return Knobs.initial(plan.cores)

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        return knobs

    def state_dict(self) -> dict[str, Any]:
        return {}


@dataclass
class PartiesController:
    """Parties: every 100 ms, slack = (target - latency) / target per service ("app").

    Upsize the service with the least slack by one unit when its slack < 0.05;
    otherwise downsize the service with the most slack by one unit when its
    slack > 0.2 (skipping services locked out). Units cycle through cores (1.0)
    and frequency (0.1), starting at a seeded random kind per service; an
    upsize that did not lower latency within ``revert_after`` intervals is
    reverted and the next kind is tried; a downsize after which slack fell
    below 0.05 is reverted and the service is locked out of downsizing for
    ``lockout`` intervals. One adjustment per interval, as Parties does.
    Not emulated: LLC ways and memory bandwidth (no cache model here), so the
    cycle is over two kinds instead of Parties' five.
    """

    profile: ServiceProfile
    seed: int = 0
    name: str = "parties"
    core_unit: float = 1.0
    freq_unit: float = 0.1
    up_slack: float = 0.05
    down_slack: float = 0.2
    revert_after: int = 5
    lockout: int = 100
    plan: RoundPlan | None = None
    kind: np.ndarray = field(default_factory=_EMPTY)  # 0 cores, 1 frequency
    pending: np.ndarray = field(default_factory=_EMPTY)  # (N, 5): svc, kind, sign, window, latency
    locked_until: np.ndarray = field(default_factory=_EMPTY)

    def reset(self, plan: RoundPlan, knobs: Knobs) -> None:
        self.plan = plan
        n, s = knobs.quota.shape
        self.kind = np.random.default_rng(self.seed).integers(0, 2, size=(n, s)).astype(float)
        self.pending = np.full((n, 5), -1.0)
        self.locked_until = np.full((n, s), -1.0)

    def on_round(self, plan: RoundPlan) -> Knobs | None:
        self.plan = plan
        return None

    def state_dict(self) -> dict[str, Any]:
        return state_of(self, ("kind", "pending", "locked_until"))

    def _apply(self, q: np.ndarray, f: np.ndarray, n: int, s: int, kind: int, sign: float) -> None:
        if kind == 0:
            q[n, s] = max(q[n, s] + sign * self.core_unit, MIN_QUOTA)
        else:
            f[n, s] = f[n, s] + sign * self.freq_unit

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        assert self.plan is not None
        w = sig.window
        target = self.plan.exec_target_ms
        lat = sig.exec_p99_ms
        slack = (target - lat) / target
        q, f = knobs.quota.copy(), knobs.frequency.copy()
        fmin, fmax = self.plan.budget.freq_min, self.plan.budget.freq_max
        for n in range(q.shape[0]):
            svc, kind, sign, at, before = self.pending[n]
            if svc >= 0:
                s, k = int(svc), int(kind)
                if sign > 0 and w - at >= self.revert_after:
                    if lat[n, s] >= before:  # no gain: undo, try the next resource kind
                        self._apply(q, f, n, s, k, -1.0)
                        self.kind[n, s] = 1 - k
                    self.pending[n] = -1.0
                elif sign < 0 and slack[n, s] < self.up_slack:
                    self._apply(q, f, n, s, k, +1.0)  # the downsize hurt: revert and lock out
                    self.locked_until[n, s] = w + self.lockout
                    self.pending[n] = -1.0
                    continue
                elif sign < 0 and w - at >= self.revert_after:
                    self.pending[n] = -1.0
                if self.pending[n, 0] >= 0:
                    continue  # one adjustment in flight per node, as Parties waits for its effect
            worst = int(np.argmin(slack[n]))
            if slack[n, worst] < self.up_slack:
                k = int(self.kind[n, worst])
                if k == 1 and f[n, worst] + self.freq_unit > fmax[n] + 1e-9:
                    k = 0  # frequency at the top: only cores can help
                self._apply(q, f, n, worst, k, +1.0)
                self.pending[n] = (worst, k, +1.0, w, lat[n, worst])
                continue
            # Services without a replica on this node (no quota) have nothing to give back.
            cand = np.where((self.locked_until[n] > w) | (q[n] <= 0.0), -np.inf, slack[n])
            best = int(np.argmax(cand))
            if cand[best] > self.down_slack:
                k = int(self.kind[n, best])
                if k == 1 and f[n, best] - self.freq_unit < fmin[n] - 1e-9:
                    k = 0
                if k == 0 and q[n, best] - self.core_unit < MIN_QUOTA - 1e-9:
                    continue
                self._apply(q, f, n, best, k, -1.0)
                self.kind[n, best] = 1 - k  # cycle kinds on the way down as well
                self.pending[n] = (best, k, -1.0, w, lat[n, best])
        return knobs.with_(quota=q, frequency=f)


class _FollowsThePlan:
    """For controllers whose only state between steps is the round's plan."""

    plan: RoundPlan | None

    def reset(self, plan: RoundPlan, knobs: Knobs) -> None:
        self.plan = plan

    def on_round(self, plan: RoundPlan) -> Knobs | None:
        self.plan = plan
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}


@dataclass
class CaladanController(_FollowsThePlan):
    """Caladan-style: congestion gives a service one more core at once; idle cores go back.

    Congestion signals are Caladan's two: queueing delay (mean wait above half a
    service time) and backlog (requests queued beyond what the quota serves).
    A whole idle core (busy cores below quota - 1) is yielded. Latency-critical
    services keep their guaranteed cores: the plan's cores are re-granted at
    once on congestion, never waited for. Caladan reacts in microseconds; here
    it acts once per fast window, the finest step the telemetry has, and it has
    no frequency knob (Caladan does not do DVFS). Best-effort jobs, which may
    use only idle cores, are not part of this graph.
    """

    profile: ServiceProfile
    name: str = "caladan"
    delay_factor: float = 0.5
    plan: RoundPlan | None = None

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        assert self.plan is not None
        q = knobs.quota
        svc_ms = self.profile.service_ms / knobs.frequency**self.profile.freq_exponent
        backlog = sig.queue_len - sig.arrival_rps / 1000.0 * sig.exec_mean_ms
        congested = (sig.queue_delay_ms > self.delay_factor * svc_ms) | (backlog > 0.5)
        guaranteed = self.plan.cores
        # One more core at once; below its guarantee an LC service gets the guarantee back at once.
        grant = np.where(congested, np.maximum(q + 1.0, guaranteed), q)
        busy = sig.utilization * q
        idle = ~congested & (busy < q - 1.0)
        new_q = np.where(idle, np.maximum(q - 1.0, MIN_QUOTA), grant)
        return knobs.with_(quota=new_q)


@dataclass
class SurgeGuardController(_FollowsThePlan):
    """SurgeGuard as published: per-service targets, frequency first, then cores.

    Targets: 2x the profiled execution time and 1.2x the profiled
    time-from-start (the plan carries both). A service over either target
    scales up: its frequency goes to the node's top at once (DVFS is the fast
    knob), and once at the top one core is added per interval while it stays
    over. Scale down: a service within both targets gives back one core per
    interval when that core's marginal gain (predicted mean execution time with
    one core fewer, from the profile) is below 2%, and steps its frequency back
    toward nominal while its execution time is below 0.8x target.
    """

    profile: ServiceProfile
    name: str = "surgeguard"
    gain_floor: float = 0.02
    freq_step: float = 0.1
    plan: RoundPlan | None = None

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        assert self.plan is not None
        p = self.profile
        E, U = self.plan.exec_target_ms, self.plan.upstream_target_ms
        q, f = knobs.quota, knobs.frequency
        fmax = self.plan.budget.freq_max[:, None]
        viol = (sig.exec_p99_ms > E) | (sig.upstream_ms > U)
        at_top = f >= fmax - 1e-9
        up_f = np.where(viol & ~at_top, fmax, f)
        up_q = np.where(viol & at_top, q + 1.0, q)
        lam = sig.arrival_rps
        m_now = p.exec_mean(lam, q, f)
        m_less = p.exec_mean(lam, np.maximum(q - 1.0, MIN_QUOTA), f)
        with np.errstate(invalid="ignore"):
            gain = (m_less - m_now) / np.maximum(m_now, 1e-9)
        gain = np.where(np.isfinite(gain), gain, np.inf)  # overloaded: the core is needed
        release = ~viol & (gain < self.gain_floor) & (q - 1.0 >= MIN_QUOTA - 1e-9)
        slow = ~viol & (sig.exec_p99_ms < 0.8 * E) & (f > FREQ_NOMINAL + 1e-9)
        new_q = np.where(release, q - 1.0, up_q)
        new_f = np.where(slow, np.maximum(f - self.freq_step, FREQ_NOMINAL), up_f)
        return knobs.with_(quota=new_q, frequency=new_f)


@dataclass
class AutothrottleController:
    """Autothrottle-style: a Tower sets per-service throttle targets, Captains track them.

    Captains (every fast window, per service): when the measured throttled
    fraction is above the target the CPU quota grows in proportion to the
    overshoot (at most doubling); when it is well below, the quota shrinks
    slowly (3% a window), never under what the service used. Tower (every
    ``tower_s``, about once a minute): a bandit-ish step per node on the
    service's throttle target: after a minute with SLO violations the targets
    are halved (more CPU), after a clean minute they grow by 1.3x (less CPU),
    with a seeded exploration jitter. Autothrottle's Tower is a contextual
    bandit over the whole app's action vector; this per-node hill-climb keeps
    its cadence and its direction of learning, not its model.
    """

    seed: int = 0
    name: str = "autothrottle"
    tower_s: float = 60.0
    init_target: float = 0.1
    plan: RoundPlan | None = None
    target: np.ndarray = field(default_factory=_EMPTY)
    viol_windows: np.ndarray = field(default_factory=_EMPTY)
    windows: int = 0
    next_tower: float = 0.0

    def reset(self, plan: RoundPlan, knobs: Knobs) -> None:
        self.plan = plan
        self.target = np.full(knobs.quota.shape, self.init_target)
        self.viol_windows = np.zeros(knobs.quota.shape[0])
        self.windows = 0
        self.next_tower = self.tower_s

    def on_round(self, plan: RoundPlan) -> Knobs | None:
        self.plan = plan
        return None

    def state_dict(self) -> dict[str, Any]:
        return state_of(self, ("target", "viol_windows", "windows", "next_tower"))

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        self.viol_windows += sig.p99_ms > sig.slo_ms
        self.windows += 1
        if now >= self.next_tower:
            rng = np.random.default_rng((self.seed, int(now)))
            bad = self.viol_windows / max(self.windows, 1) > 0.01
            jitter = np.exp(rng.normal(0.0, 0.1, size=self.target.shape))
            step = np.where(bad[:, None], 0.5, 1.3) * jitter
            self.target = np.clip(self.target * step, 0.01, 0.5)
            self.viol_windows[:] = 0
            self.windows = 0
            self.next_tower = now + self.tower_s
        q = knobs.quota
        thr, tgt = sig.throttled_frac, self.target
        grow = thr > tgt
        up = q * np.minimum(1.0 + (thr - tgt) / np.maximum(tgt, 1e-3) * 0.5, 2.0)
        used = sig.utilization * q
        down = np.maximum(q * 0.97, used * 1.05)
        new_q = np.where(grow, up, np.where(thr < 0.5 * tgt, np.minimum(down, q), q))
        return knobs.with_(quota=new_q)
