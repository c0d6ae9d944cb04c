"""The sim backend's fast layer: per-node local controllers stepped every fast window (100 ms).

For every graph of the scenario the layer keeps one ``GraphEmulator``
instance with one row per node (the services' replicas on that node) and one
LocalController over all those rows at once (batched over nodes). What the
GlobalAllocator puts in force each round becomes, per graph, a ``RoundPlan``:
each service's CPU share per node, the node budget = the sum of the graph's
shares on the node (as a NodeAgent's budget is its jobs' CPUs in the plan),
SurgeGuard's targets from an offline profile. Within a telemetry window the
layer runs ten fast windows: emulate with the knobs in force, let the
controller decide, clip into the node budget (``fit_budget``, as
``NodeControlLoop`` does on Ray), enforce from the next window.

Per telemetry window it hands the engine, per graph, the latency law of the
requests of those ten windows (for the telemetry sample) and, per service job,
the mean quota and frequency in force: the CPU the job held, which is what the
telemetry reports as ``cpu_quota`` and what resource metrics count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster_mgr.local.knobs import Knobs, fit_budget
from cluster_mgr.local.planner import RoundPlan, plan_for_shares
from cluster_mgr.local.registry import make_controller
from cluster_mgr.model import FAST_WINDOW_S, TELEMETRY_WINDOW_S, PlacementPlan
from cluster_mgr.scenario.schema import GraphEntry, LatencySurge, Scenario
from cluster_mgr.sim.fasttrace import ReversalCounter, Trace
from cluster_mgr.sim.fastwin import EdgeExtra, GraphEmulator
from cluster_mgr.sim.profiling import profile_graph
from cluster_mgr.sim.truth import EDGES, LatencyLaw

FAST_PER_WINDOW = int(round(TELEMETRY_WINDOW_S / FAST_WINDOW_S))
#: Measurement noise (lognormal sigma) on the fast signals.
FAST_NOISE = 0.03


@dataclass
class _GroupLoad:
    """Offered load and latency surges of a group's graphs, one instance each (a ``FastLoad``)."""

    entries: tuple[GraphEntry, ...]
    surges: tuple[tuple[int, int, int, LatencySurge], ...]  # (instance, parent, child, surge)
    seed: int
    noise: float = FAST_NOISE

    @property
    def n_instances(self) -> int:
        return len(self.entries)

    def mean_rps(self, t: float) -> np.ndarray:
        tt = np.array([t])
        return np.array([float(g.load.rates(tt)[0]) * float(g.arrival_s <= t < g.departure_s)
                         for g in self.entries])  # fmt: skip

    def edge_extra(self, t: float) -> EdgeExtra:
        out: EdgeExtra = {}
        for i, p, c, s in self.surges:
            if s.start_s <= t < s.end_s:
                out.setdefault((p, c), np.zeros(len(self.entries)))[i] += s.extra_ms
        return out


def _group_key(sc: Scenario, g: GraphEntry) -> tuple[object, ...]:
    """Graphs with the same services, calls and typical load share one emulator and profile."""
    p = g.params
    t = np.arange(0.0, sc.duration_s, TELEMETRY_WINDOW_S)
    nominal = float(np.median(g.load.rates(t))) or float(g.load.rate)
    arrays = (p.service_ms, p.cv, p.freq_exponent, p.mix, p.roots)
    return (p.services, p.types, p.type_edges, tuple(a.tobytes() for a in arrays), nominal)


class _GroupFast:
    """Graphs of one shape: one emulator (an instance per graph, a row per node and graph), one
    controller over all those rows (batched over nodes), the knobs in force and the trace."""

    def __init__(self, sc: Scenario, members: list[int], controller: str, seed: int) -> None:
        self.entries = tuple(sc.graphs[k] for k in members)
        p = self.entries[0].params
        pos = {s: i for i, s in enumerate(p.services)}
        names = {g.name: i for i, g in enumerate(self.entries)}
        surges = tuple((names[s.graph], pos[s.src], pos[s.dst], s) for s in sc.surges
                       if s.graph in names)  # fmt: skip
        n, m, s = len(sc.nodes), len(members), len(p.services)
        self.n_nodes = n
        # The operator profiles once, at the graphs' typical load (the median over the run).
        nominal = float(_group_key(sc, self.entries[0])[-1])  # type: ignore[arg-type]
        self.profile = profile_graph(p, max(nominal, 1e-3))

        def per(attr: str) -> np.ndarray:
            return np.array([float(getattr(g, attr)) for g in self.entries])

        self.emu = GraphEmulator(
            p, _GroupLoad(self.entries, surges, seed * 1009 + members[0]),
            slo_ms=np.array([g.slo.target for g in self.entries]),
            row_instance=np.repeat(np.arange(m), n), base_ms=per("base_ms"),
            base_sd_ms=per("base_sd_ms"), network_ms=per("network_ms"),
        )  # fmt: skip
        self.controller = make_controller(controller, self.profile, seed)
        self.kind = controller
        self.knobs: Knobs | None = None
        self.plan: RoundPlan | None = None
        self.shares = np.zeros((m * n, s))
        self.reversals = [ReversalCounter((n, s, 2), 1) for _ in members]
        self.p99: list[np.ndarray] = []
        self.quota: list[np.ndarray] = []
        self.freq: list[np.ndarray] = []
        self.enforced: list[np.ndarray] = []
        self._prev: np.ndarray | None = None  # knobs in force in the last window run

    def set_plan(self, round_: int, shares: np.ndarray, round_windows: int) -> None:
        """A plan in force: new budgets and targets; knobs of services that left a node go."""
        plan = plan_for_shares(round_, self.profile, shares)
        hosted, was = shares > 0, self.shares > 0
        if self.knobs is None:
            knobs = _masked(Knobs.initial(shares), hosted)
            self.controller.reset(plan, knobs)
            if self.kind == "none":  # the plan alone changes once a round
                for r in self.reversals:
                    r.interval = round_windows
        else:
            k = self.knobs
            keep = hosted & was
            q = np.where(keep, k.quota, shares)
            # A node whose budget shrank below what is in force starts again from its shares.
            over = q.sum(axis=1) > plan.budget.cores + 1e-9
            q = np.where(over[:, None], shares, q)
            knobs = _masked(k.with_(quota=q, frequency=np.where(keep, k.frequency, 1.0)), hosted)
            imposed = self.controller.on_round(plan)
            if imposed is not None:
                knobs = _masked(imposed, hosted)
        self.plan, self.shares, self.knobs = plan, shares, knobs

    def _per_instance(self, x: np.ndarray) -> np.ndarray:
        """(rows, S) -> (instances, S): sums over each instance's node rows."""
        return x.reshape(len(self.entries), self.n_nodes, -1).sum(axis=1)

    def run(self, t0: float) -> tuple[list[LatencyLaw], np.ndarray, np.ndarray]:
        """Ten fast windows from ``t0``: per graph the window's law, mean quota and frequency."""
        assert self.knobs is not None and self.plan is not None
        emu, hosted, m = self.emu, self.shares > 0, len(self.entries)
        w0 = int(round(t0 / FAST_WINDOW_S))
        emu.window = w0  # the emulator's clock is the fast-window index
        points = np.stack([np.concatenate([EDGES, [g.slo.target, g.timeout_ms]])
                           for g in self.entries])  # fmt: skip
        cdf_sum = np.zeros(points.shape)
        served_sum, mean_sum = np.zeros(m), np.zeros(m)
        q_sum = np.zeros((m, self.shares.shape[1]))
        fq_sum = np.zeros_like(q_sum)
        p = self.entries[0].params
        for i in range(FAST_PER_WINDOW):
            k = self.knobs
            qs, fq = self._per_instance(k.quota), self._per_instance(k.quota * k.frequency)
            q_sum += qs
            fq_sum += fq
            self.quota.append(qs)
            self.freq.append(np.where(qs > 0, fq / np.maximum(qs, 1e-12), 1.0))
            now_k = np.stack([k.quota, k.frequency], -1).reshape(m, -1)
            changed = (
                (now_k != self._prev).any(axis=1) if self._prev is not None else np.zeros(m, bool)
            )
            self.enforced.append(changed)
            self._prev = now_k
            sig = emu.step(k)
            law = emu.last
            assert law is not None
            self.p99.append(law.p99_ms.copy())
            # Each graph's CDF at its own points: the mixture over request types, per instance.
            cdf_sum += np.stack([p.e2e_cdf(points[j], law.means[j:j + 1], law.varis[j:j + 1],
                                           law.served[j:j + 1])[0] for j in range(m)])  # fmt: skip
            served_sum += 1.0 - law.rejected
            mean_sum += (p.mix * law.means).sum(axis=1)
            now = (w0 + i + 1) * FAST_WINDOW_S  # decisions are made at the end of the window
            dec = self.controller.decide(sig, k, now)
            new = _masked(fit_budget(k, dec, self.plan.budget), hosted)
            old_s = np.stack([k.quota, k.frequency], -1)
            new_s = np.stack([new.quota, new.frequency], -1)
            for j, rc in enumerate(self.reversals):
                rows = slice(j * self.n_nodes, (j + 1) * self.n_nodes)
                rc.record(w0 + i, old_s[rows], new_s[rows])
            self.knobs = new
        n = float(FAST_PER_WINDOW)
        cdf = cdf_sum / n
        laws = [
            LatencyLaw(
                cdf_edges=cdf[j : j + 1, : len(EDGES)],
                cdf_target=cdf[j : j + 1, -2],
                cdf_timeout=cdf[j : j + 1, -1],
                served=served_sum[j : j + 1] / n,
                mean_ms=mean_sum[j : j + 1] / n,
                busy_cores=np.zeros(1),
            )  # fmt: skip
            for j in range(m)
        ]
        return laws, q_sum / n, np.where(q_sum > 0, fq_sum / np.maximum(q_sum, 1e-12), 1.0)

    def traces(self) -> dict[str, Trace]:
        """The run so far at fast-window resolution, one Trace per graph."""
        p99, quota, freq = np.array(self.p99), np.array(self.quota), np.array(self.freq)
        enforced = np.array(self.enforced, dtype=bool)
        return {
            g.name: Trace(
                name=g.name,
                p99_ms=p99[:, j : j + 1],
                slo_ms=np.array([g.slo.target]),
                quota=quota[:, j : j + 1],
                frequency=freq[:, j : j + 1],
                enforced=enforced[:, j : j + 1],
                reversals=self.reversals[j].reversals,
                changes=self.reversals[j].changes,
            )  # fmt: skip
            for j, g in enumerate(self.entries)
        }


def _masked(k: Knobs, hosted: np.ndarray) -> Knobs:
    """No quota (and no frequency above nominal) where a service has no replica on the node."""
    return k.with_(
        quota=np.where(hosted, k.quota, 0.0), frequency=np.where(hosted, k.frequency, 1.0)
    )


class FastLayer:
    """Every graph's fast layer; the engine calls ``set_plan`` and ``window``."""

    def __init__(self, sc: Scenario, controller: str, seed: int) -> None:
        self.sc = sc
        self.controller = controller
        self.node_pos = {n.node_id: i for i, n in enumerate(sc.nodes)}
        groups: dict[tuple[object, ...], list[int]] = {}
        for k, g in enumerate(sc.graphs):
            groups.setdefault(_group_key(sc, g), []).append(k)
        self.groups = [_GroupFast(sc, ks, controller, seed) for ks in groups.values()]
        # job -> (group, instance, service)
        self.service_of: dict[str, tuple[int, int, int]] = {
            job: (gi, i, s)
            for gi, grp in enumerate(self.groups)
            for i, g in enumerate(grp.entries)
            for s, job in enumerate(g.jobs)
        }
        self.round_windows = int(round(sc.round_s / FAST_WINDOW_S))

    def set_plan(self, plan: PlacementPlan, alive: dict[str, bool]) -> None:
        shares = [np.zeros(g.shares.shape) for g in self.groups]
        n = len(self.node_pos)
        for sh in plan.shares:
            where = self.service_of.get(sh.job)
            if where is None or not alive.get(sh.node_id, False):
                continue
            gi, i, s = where
            shares[gi][i * n + self.node_pos[sh.node_id], s] += sh.resources.cpu
        for g, s in zip(self.groups, shares, strict=True):
            g.set_plan(plan.round, s, self.round_windows)

    def window(
        self, t0: float, cpu: np.ndarray, index: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray, list[LatencyLaw]]:
        """Run one telemetry window of fast windows from ``t0``.

        Returns the CPU per job with each graph service's mean quota in force, the
        frequency per job (1 outside graphs) and the law of each graph's requests, in the
        scenario's graph order.
        """
        cpu = cpu.copy()
        freq = np.ones(len(cpu))
        laws: dict[str, LatencyLaw] = {}
        for grp in self.groups:
            gl, q, f = grp.run(t0)
            for i, g in enumerate(grp.entries):
                laws[g.name] = gl[i]
                for s, job in enumerate(g.jobs):
                    cpu[index[job]], freq[index[job]] = q[i, s], f[i, s]
        return cpu, freq, [laws[g.name] for g in self.sc.graphs]

    def traces(self) -> dict[str, Trace]:
        out: dict[str, Trace] = {}
        for grp in self.groups:
            out.update(grp.traces())
        return out
