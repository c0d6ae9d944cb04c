"""The LocalController protocol, the loop that enforces it, and our slack-driven controller.

A controller is a decision over arrays: ``decide(signals, knobs, now) -> knobs``
for N nodes at once (one row under Ray, thousands in the sim). Its state is
plain data (numpy arrays of numbers, exported by ``state_dict``), so a
restarted NodeAgent can hand it back. ``NodeControlLoop`` is the per-node
wrapper with the issue's shape, ``step(signals, budget, now) -> actions``: it
clips the decision into the node budget and turns it into FastActions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cluster_mgr.local.knobs import FastAction, Knobs, NodeBudget, diff_actions, fit_budget
from cluster_mgr.local.knobs import quantize_up as _qup
from cluster_mgr.local.planner import RoundPlan
from cluster_mgr.local.profile import ServiceProfile, cores_gain_cap
from cluster_mgr.local.signals import NodeSignals

FREQ_NOMINAL = 1.0
FREQ_QUANTUM = 0.05


class LocalController(Protocol):
    name: str

    def reset(self, plan: RoundPlan, knobs: Knobs) -> None:
        """Start from the global layer's first plan and the knobs in force."""

    def on_round(self, plan: RoundPlan) -> Knobs | None:
        """A new round's budget and targets; a controller may return knobs to impose at once."""

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        """The knobs for the next fast window (before the budget is applied)."""

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (lists of numbers), enough to resume after a restart."""


def state_of(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in names:
        v = getattr(obj, n)
        out[n] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


@dataclass
class NodeControlLoop:
    """One controller over N nodes with the knobs in force: ``step(signals, budget, now)``."""

    controller: LocalController
    knobs: Knobs
    services: tuple[str, ...]
    actions: list[FastAction] = field(default_factory=list)

    def step(self, sig: NodeSignals, budget: NodeBudget, now: float) -> list[FastAction]:
        new = fit_budget(self.knobs, self.controller.decide(sig, self.knobs, now), budget)
        acts = diff_actions(self.knobs, new, self.services)
        self.knobs = new
        self.actions = acts
        return acts


def quantize_freq_up(f: np.ndarray) -> np.ndarray:
    return np.ceil(np.asarray(f) / FREQ_QUANTUM - 1e-6) * FREQ_QUANTUM


@dataclass
class SlackController:
    """Ours: slack-driven per-node control that reads the graph's communication pattern.

    Every fast window, per service:

    * Where is the fix? A service over its execution-time target is the cause
      and fixes itself. A service whose *time-from-start* is late while every
      service upstream of it is within its own target sees a delay no CPU
      upstream can remove (a network surge): the services that see the excess
      make it up by tightening their own targets, in proportion to their
      profiled share, but only while the node's end-to-end P99 is near its SLO
      (otherwise there is nothing to make up).
    * Absorb upstream delay even when the own time looks fine (SurgeGuard's rule:
      downstream services speed up to absorb an upstream delay). The tightened
      target is floored at what the service can do at top speed, so a service
      already under that floor sees no violation of its own; yet while its
      time-from-start is late and the node's end-to-end P99 is over the gate, it
      still takes one step each window: frequency first (sized to cut the delay
      to make up off its current own time, at least one quantum, at most the
      top), then, at the top, one core (at most doubling a small quota), never
      past the point where a core's marginal gain falls under 2%.
    * Scale up in one step, sized by the model at the measured arrival rate plus
      the cores that drain the measured backlog within ``drain_s``: frequency
      first (if the speed-up fits under the node's top frequency, cores stay),
      else top frequency and the cores the model says are needed then. When the
      model under-predicts (measured over target, model content) the quota grows
      by the square root of the measured overshoot.
    * Release with hysteresis: only after ``calm_windows`` windows with slack
      above ``release_slack``, not within ``cooldown_windows`` of a scale-up, and
      only when the node's end-to-end P99 is comfortably inside its SLO. First
      the frequency returns to nominal (its cores re-sized at nominal speed),
      then cores go down to what the model sizes at ``release_target`` of the
      target. The released cores have small marginal gain by construction: the
      predicted P99 with them gone stays below that fraction of the target.
    """

    profile: ServiceProfile
    name: str = "ours"
    up_margin: float = 1.1  # load margin when sizing a scale-up
    down_margin: float = 1.15  # load margin when sizing a release
    release_target: float = 0.75
    release_slack: float = 0.3
    calm_windows: int = 5
    cooldown_windows: int = 10
    drain_s: float = 0.2
    e2e_gate: float = 0.9
    min_release: float = 0.2  # cores: smaller releases are noise, not savings
    plan: RoundPlan | None = None
    calm: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    last_up: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def reset(self, plan: RoundPlan, knobs: Knobs) -> None:
        self.plan = plan
        self.calm = np.zeros(knobs.quota.shape)
        self.last_up = np.full(knobs.quota.shape, -1e9)

    def on_round(self, plan: RoundPlan) -> Knobs | None:
        self.plan = plan
        return None

    def state_dict(self) -> dict[str, Any]:
        return state_of(self, ("calm", "last_up"))

    def make_up(self, sig: NodeSignals) -> tuple[np.ndarray, np.ndarray]:
        """(absorb, ms) per service, (N, S): whether the service is late by a delay no service
        upstream caused while the node's end-to-end P99 is over the gate, and the milliseconds
        of that delay it should make up (its profiled share, pushed harder the further over)."""
        assert self.plan is not None
        p, E, U = self.profile, self.plan.exec_target_ms, self.plan.upstream_target_ms
        over = sig.exec_p99_ms > E
        # anc_over[n, s]: some service upstream of s is itself over target (the cause is there).
        anc_over = (over.astype(float) @ p.ancestors.T.astype(float)) > 0
        late = (sig.upstream_ms > U) & ~anc_over
        # The delay to make up is what was added since profiling, on the latest service that sees it.
        added = np.where(late, np.maximum(sig.upstream_ms - p.upstream_ms, 0.0), 0.0)
        share = np.where(late, p.exec_p99_ms, 0.0)
        share = share / np.maximum(share.sum(axis=1, keepdims=True), 1e-12)
        # Only while the end-to-end P99 is near its SLO, and harder the further over it is.
        push = np.clip(sig.p99_ms / (self.e2e_gate * sig.slo_ms), 1.0, 3.0)
        push = np.where(sig.p99_ms > self.e2e_gate * sig.slo_ms, push, 0.0)
        make_up = added.max(axis=1, keepdims=True) * share * push[:, None]
        return late & (push > 0)[:, None], make_up

    def targets(self, sig: NodeSignals, make_up: np.ndarray | None = None) -> np.ndarray:
        """Execution-time targets after making up upstream (network) delay, (N, S)."""
        assert self.plan is not None
        p, E = self.profile, self.plan.exec_target_ms
        if make_up is None:
            make_up = self.make_up(sig)[1]
        # A service cannot beat its own processing time: floor at its no-queueing P99 at top speed.
        fmax = self.plan.budget.freq_max[:, None]
        floor = 1.1 * np.log(100.0) * p.service_ms / fmax**p.freq_exponent
        # Making up X ms means cutting X ms off the *current* time, not off a loose target.
        base = np.where(make_up > 0, np.minimum(E, sig.exec_p99_ms), E)
        return np.maximum(base - make_up, np.minimum(floor, base))

    def decide(self, sig: NodeSignals, knobs: Knobs, now: float) -> Knobs:
        assert self.plan is not None
        p, w = self.profile, sig.window
        E = self.plan.exec_target_ms
        absorb, make_up = self.make_up(sig)
        T = self.targets(sig, make_up)
        budget = self.plan.budget
        hi = budget.cores[:, None]
        fmax = budget.freq_max[:, None]
        q, f = knobs.quota, knobs.frequency
        lam = sig.arrival_rps
        per_core = p.capacity_rps(1.0, f)
        backlog = np.maximum(sig.queue_len - lam / 1000.0 * sig.exec_mean_ms, 0.0)
        drain = backlog / np.maximum(per_core * self.drain_s, 1e-9)
        viol = (sig.exec_p99_ms > T) | (drain > 0.05)

        # One model look-up for the three sizings (at the current speed, at top speed, and for a
        # release at nominal speed): a stacked bisection costs one third of three.
        f_nom = np.full_like(f, FREQ_NOMINAL)
        rel_target = self.release_target * E
        sizes = p.cores_for(
            np.stack([lam * self.up_margin, lam * self.up_margin, lam * self.down_margin]),
            np.stack(np.broadcast_arrays(f, fmax, f_nom)),
            np.stack([T, T, rel_target]),
            hi,
        )
        # --- scale up, one step sized by the model (frequency first, then cores)
        c_cur_f = sizes[0] + drain
        c_cur_f = np.maximum(c_cur_f, np.where(sig.exec_p99_ms > T,
                                               q * np.sqrt(sig.exec_p99_ms / T), 0.0))  # fmt: skip
        # Speed-up that would make the current quota enough (capacity ~ cores * f^e).
        f_need = f * (c_cur_f / np.maximum(q, 1e-9)) ** (1.0 / p.freq_exponent)
        by_freq = f_need <= fmax
        c_fmax_raw = sizes[1]
        c_top = c_fmax_raw
        c_top = c_top + backlog / np.maximum(p.capacity_rps(1.0, fmax) * self.drain_s, 1e-9)
        c_top = np.maximum(c_top, np.where(sig.exec_p99_ms > T, c_cur_f * (f / fmax)
                                           ** p.freq_exponent, 0.0))  # fmt: skip
        # A target no allocation meets (a network delay bigger than the service) must not drain
        # the node budget: at most double the quota per window, plus what the backlog needs.
        c_top = np.minimum(c_top, np.maximum(2.0 * q, q + 1.0) + drain)
        # Beyond reach at top speed (the model needs the whole budget): take the speed, keep cores.
        beyond = (c_fmax_raw >= hi - 1e-6) & (drain <= 0.05)
        c_top = np.where(beyond, q, c_top)
        # Cores whose marginal gain is below 2% are not worth taking on the way up either.
        cap = cores_gain_cap(p, lam, fmax, hi) + drain
        c_top = np.minimum(c_top, np.maximum(cap, q))
        up_f = np.where(by_freq, np.maximum(quantize_freq_up(f_need), f), fmax)
        up_q = np.where(by_freq, q, np.maximum(_qup(c_top), q))

        # --- release with hysteresis (frequency back to nominal first, then cores)
        slack = (E - sig.exec_p99_ms) / E
        calm_now = (slack > self.release_slack) & ~viol
        self.calm = np.where(calm_now, self.calm + 1, 0)
        node_ok = sig.p99_ms < 0.8 * sig.slo_ms
        may_release = (
            (self.calm >= self.calm_windows)
            & (w - self.last_up >= self.cooldown_windows)
            & node_ok[:, None]
        )
        c_nom = _qup(sizes[2])
        freq_down = may_release & (f > FREQ_NOMINAL + 1e-9)
        # Back to nominal speed only where the node can afford the cores that replace it.
        after = np.where(freq_down, np.maximum(q, c_nom), q).sum(axis=1)
        freq_down &= (after <= budget.cores)[:, None]
        core_down = may_release & ~freq_down & (q - c_nom >= self.min_release - 1e-9)
        new_f = np.where(viol, up_f, np.where(freq_down, f_nom, f))
        new_q = np.where(
            viol, up_q, np.where(freq_down, np.maximum(q, c_nom), np.where(core_down, c_nom, q))
        )
        # --- absorb upstream delay: at least one step while late and end-to-end over the gate,
        # even where the own time is under its (floored) target and the sizing above asked
        # for nothing. The own time scales ~ f^-e, so the speed that cuts ``make_up`` off it:
        e_now = np.maximum(sig.exec_p99_ms, 1e-9)
        rest = e_now - make_up
        f_abs = np.where(rest > 0, f * (e_now / np.maximum(rest, 1e-9)) ** (1.0 / p.freq_exponent),
                         fmax)  # fmt: skip
        f_abs = np.minimum(np.maximum(quantize_freq_up(f_abs), f + FREQ_QUANTUM), fmax)
        below_top = f < fmax - 1e-9
        # At the top: one core (at most doubling a small quota); cores past the 2% marginal-gain
        # cap would be released at once, so they are not taken; the loop clips to the budget.
        q_abs = np.maximum(np.minimum(_qup(q + np.minimum(1.0, q)), np.maximum(cap, q)), q)
        new_f = np.where(absorb & below_top, np.maximum(new_f, f_abs), new_f)
        new_q = np.where(absorb & ~below_top, np.maximum(new_q, q_abs), new_q)
        went_up = (new_q > q + 1e-9) | (new_f > f + 1e-9)
        self.last_up = np.where(went_up, w, self.last_up)
        self.calm = np.where(went_up | freq_down | core_down, 0, self.calm)
        return knobs.with_(quota=new_q, frequency=new_f,
                           concurrency=np.maximum(knobs.concurrency, np.ceil(new_q)))  # fmt: skip
