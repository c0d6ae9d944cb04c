"""Device plan participants: the node's DPU mesh agent and its PIM agent (actors.participants).

Each participant either starts its node's agent (and owns it: ``close`` stops
it) or connects to one already running at a configured address; either way it
is the agent's only client (the shared token). Both follow the two-phase
protocol:

- ``prepare(plan, node_id)`` translates this node's part of the plan into the
  agent's terms (``plan.mesh`` -> ``dpu_agent.placement.mesh_configs``;
  ``plan.pages`` and the shares' ``pim_cores`` -> ``pim_agent.placement.plan_for_node``)
  and checks it with the agent's own validation code, changing nothing in force:
  the mesh agent's ``config.validate`` over the proto round trip the agent does,
  against a live agent (``GetDevice``); the PIM device's ``PimDevice.validate``,
  run on a mirror of the agent's device (preset from ``GetInfo``, the same app
  profiles, the assignments this participant last committed), plus the agent's
  version fence. Neither agent has a dry-run RPC, so nothing is sent that could
  change what serves. A refusal is a no vote with the reason.
- ``commit(epoch)`` pushes what was staged. The agent ACKs, or NACKs (Envoy may
  refuse what our validation let through); a NACK at commit is recorded
  (``last_commit``, ``mesh.commit_nacks`` / ``pim.commit_rejects`` in telemetry)
  and the agent keeps its last good version in force.
- ``abort(epoch)`` drops what was staged for ``epoch``.
- ``telemetry(now)`` returns the agent's counters since the last call as
  TelemetryWindows, device counters in ``extras`` (``mesh.*`` and ``dpu.*``;
  ``pim.*``).

Meshed jobs in the Ray backend (workload key ``mesh``): their replicas also
listen on loopback (``mesh_port`` in their info) and callers send real HTTP
through their node's Envoy. ``ReplicaEndpoints`` reads where those replicas
listen from every NodeAgent's report; the mesh participant re-pushes its
shares in force whenever that set changes (version ``e<epoch>.d<k>``: the
replicas of a new plan start after its commit, in the make phase), checked
once per telemetry poll. With ``upstream_reports`` (set when endpoints come
from replicas) a mesh window counts only what the proxy itself refused (rate
limit, breaker overflow): the requests it forwarded are counted by the
replicas that served them, so a job's merged window counts every request once.

Network-latency surges (issue 8 item 2): ``MeshParticipant.set_fault`` puts a fixed delay
(Envoy's HTTP fault filter, ``dpu_agent.config.Fault``) on a job's route at this node's
proxy, beside the shares in force (version ``e<epoch>.n<k>``; it survives new plans, which
re-push the shares with it, until ``clear_fault``). From outside the agent's process a fault
is a participant: ``register_participant({"factory": "actors.devices:mesh_fault", ...})``
puts it in force, ``unregister_participant("fault.<job>")`` removes it (an agent restart
removes it too: the emulated network heals with the proxy's config).

No Ray here: the NodeAgent (a Ray actor) holds these objects; tests drive them
directly.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cluster_mgr.model import Allocation, PlacementPlan, TelemetryWindow

log = logging.getLogger(__name__)

Endpoints = Mapping[str, Mapping[str, Sequence[tuple[str, int]]]]  # job -> node -> [(host, port)]


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass
class CommitOutcome:
    """What the last commit did: ``ok`` False means the agent refused and the old version serves."""

    epoch: int
    ok: bool
    version: str
    reason: str = ""


# --------------------------------------------------------------------------- mesh

# The mesh participant of each node in this process (a NodeAgent's), so that a fault
# participant built by a factory in the same process finds the node's proxy.
_MESH_OF_NODE: weakref.WeakValueDictionary[str, MeshParticipant] = weakref.WeakValueDictionary()


class MeshParticipant:
    """The node's DPU mesh agent (a real Envoy behind the dpu_agent gRPC service)."""

    name = "mesh"

    def __init__(
        self,
        node_id: str,
        *,
        preset: str = "bluefield2",
        address: str | None = None,
        token: str | None = None,
        endpoints: Endpoints | Callable[[], Endpoints] | None = None,
        preset_overrides: Mapping[str, float] | None = None,
        timeout_s: float = 30.0,
        upstream_reports: bool = False,
    ) -> None:
        from dpu_agent.client import GrpcTransport, MeshClient

        self.node_id = node_id
        self._handle: Any = None
        if address:
            if not token:
                raise ValueError(f"mesh agent at {address}: a token is required to connect")
            self.token = token
            self.address = address
        else:
            from dpu_agent.device import preset as dpu_preset
            from dpu_agent.server import start_agent

            self.token = token or new_token()
            spec = dpu_preset(preset, **dict(preset_overrides or {}))
            self._handle = start_agent(spec, "127.0.0.1:0", token=self.token, node_id=node_id)
            self.address = self._handle.address
        self._transport = GrpcTransport(self.address, self.token, timeout_s)
        self.client = MeshClient(self._transport)
        try:
            self.device = self.client.device()
        except Exception:
            self.close()
            raise
        self.listener: str = self.device["envoy_listener"]
        self._endpoints = endpoints or {}
        self._lock = threading.Lock()
        self._staged: tuple[int, Any, tuple[Any, ...]] | None = None  # (epoch, resources, shares)
        self._shares: tuple[Any, ...] = ()  # MeshShares in force on this node
        self._epoch = -1
        self.last_commit: CommitOutcome | None = None
        self.commit_nacks = 0
        self._prev_stats: Any = None
        self._seen_jobs: dict[str, list[str]] = {}  # job -> upstream nodes it was routed to
        self._seq: dict[str, int] = {}
        self.upstream_reports = bool(upstream_reports)
        self._res_in_force: Any = None  # MeshResources the agent last ACKed from this participant
        self._eds = 0  # endpoint-only re-pushes (version e<epoch>.d<k>)
        self.endpoint_pushes = 0
        self.endpoint_nacks = 0
        self._faults: dict[str, tuple[float, float]] = {}  # job -> (delay_ms, percent) in force
        self._fault_pushes = 0
        self._prev_fault_delays = 0.0
        _MESH_OF_NODE[node_id] = self

    # -- endpoints -------------------------------------------------------------------
    def set_endpoints(self, endpoints: Endpoints | Callable[[], Endpoints]) -> None:
        """Where each job's replicas listen, per node (``job -> node -> [(host, port)]``)."""
        with self._lock:
            self._endpoints = endpoints

    def endpoints(self) -> Endpoints:
        e = self._endpoints
        return e() if callable(e) else e

    def _resources(self, shares: Sequence[Any], eps: Endpoints) -> Any:
        """This node's MeshResources for ``shares``. With ``upstream_reports`` (replicas as
        endpoints), a node whose replicas do not listen yet (a new plan's replicas start after
        its commit) gets weight 0 while another node of the share has some, instead of a
        cluster without endpoints answering 503; the endpoint refresh puts the plan's weights
        back once they listen."""
        from dpu_agent import config as cfg
        from dpu_agent.placement import mesh_configs

        if self.upstream_reports:
            routable = []
            for s in shares:
                live = {n for n, addrs in eps.get(s.job, {}).items() if addrs}
                if s.weights and any(n in live and w > 0 for n, w in s.weights):
                    s = replace(s, weights=tuple((n, w if n in live else 0.0) for n, w in s.weights))
                routable.append(s)
            shares = routable
        from dpu_agent.placement import with_faults

        return with_faults(mesh_configs(shares, eps).get(self.node_id, cfg.MeshResources()),
                           dict(self._faults))  # fmt: skip

    # -- two-phase ---------------------------------------------------------------------
    def prepare(self, plan: PlacementPlan, node_id: str) -> str | None:
        from dpu_agent import config as cfg
        from dpu_agent.convert import resources_from_proto, resources_to_proto

        if node_id != self.node_id:
            return f"mesh participant of node {self.node_id} asked to prepare node {node_id}"
        shares = tuple(m for m in plan.mesh if m.node_id == node_id)
        with self._lock:
            if plan.epoch <= self._epoch:
                return f"stale plan epoch {plan.epoch}: epoch {self._epoch} is in force"
            try:
                res = self._resources(shares, self.endpoints())
                # what the agent does with a push before it validates: the proto round trip
                res = resources_from_proto(resources_to_proto(res))
            except (ValueError, TypeError) as exc:
                return f"mesh: cannot translate the plan for {node_id}: {exc}"
            errors = cfg.validate(res)
            if errors:
                return "mesh: the agent would refuse it: " + "; ".join(errors)
            try:
                self.client.device()  # the agent must be there to take the commit
            except Exception as exc:
                return f"mesh agent {self.address} unreachable: {exc}"
            self._staged = (plan.epoch, res, shares)
        return None

    def commit(self, epoch: int) -> None:
        with self._lock:
            if self._staged is None or self._staged[0] != epoch:
                return
            _, res, shares = self._staged
            self._staged = None
            r = self.client.push(res, version=f"e{epoch}")
            self.last_commit = CommitOutcome(epoch, r.ack, r.version, r.reason)
            if r.ack:
                self._epoch = epoch
                self._shares = shares
                self._res_in_force = res
                for s in shares:
                    ups = [n for n, _ in s.weights] or sorted(self.endpoints().get(s.job, {}))
                    self._seen_jobs[s.job] = sorted(set(self._seen_jobs.get(s.job, [])) | set(ups))
            else:
                self.commit_nacks += 1
                log.warning("mesh agent of %s NACKed epoch %d (code %d): %s; version %s stays",
                            self.node_id, epoch, r.code, r.reason, r.version)  # fmt: skip

    def abort(self, epoch: int) -> None:
        with self._lock:
            if self._staged is not None and self._staged[0] == epoch:
                self._staged = None

    @property
    def version(self) -> str:
        return self.client.stats("^$").version

    # -- the fast path -------------------------------------------------------------------
    def set_rate_limit(self, job: str, rps: float) -> bool:
        """A LocalController's rate-limit action: the shares in force with ``job``'s admitted
        rate changed, validated and pushed as version ``e<epoch>.f<k>`` (no two-phase apply:
        one node, one knob, inside the round's plan). True when the agent ACKed."""
        from dpu_agent import config as cfg

        with self._lock:
            if not any(s.job == job for s in self._shares):
                return False
            shares = tuple(replace(s, rate_limit_rps=float(rps)) if s.job == job else s
                           for s in self._shares)  # fmt: skip
            res = self._resources(shares, self.endpoints())
            if cfg.validate(res):
                return False
            self._fast_pushes = getattr(self, "_fast_pushes", 0) + 1
            r = self.client.push(res, version=f"e{self._epoch}.f{self._fast_pushes}")
            if r.ack:
                self._shares = shares
                self._res_in_force = res
            return bool(r.ack)

    def set_fault(self, job: str, delay_ms: float, percent: float = 100.0) -> CommitOutcome:
        """An emulated network-latency surge: Envoy delays ``percent`` % of ``job``'s requests at
        this proxy by ``delay_ms`` before forwarding them, until ``clear_fault``. Pushed with the
        shares in force (version ``e<epoch>.n<k>``); on a refusal (ours or Envoy's) the fault
        is not kept and the last good version stays. Without a route of the job here yet it is
        kept and goes out with the job's shares."""
        return self._push_faults({**self._faults, job: (float(delay_ms), float(percent))})

    def clear_fault(self, job: str) -> CommitOutcome:
        """Remove ``job``'s delay (the surge ends); pushed at once like ``set_fault``."""
        return self._push_faults({j: f for j, f in self._faults.items() if j != job})

    def faults(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            return dict(self._faults)

    def _push_faults(self, faults: dict[str, tuple[float, float]]) -> CommitOutcome:
        from dpu_agent import config as cfg

        with self._lock:
            old, self._faults = self._faults, faults
            try:
                res = self._resources(self._shares, self.endpoints())
            except (ValueError, TypeError) as exc:
                self._faults = old
                return CommitOutcome(self._epoch, False, "", f"mesh: cannot translate: {exc}")
            errors = cfg.validate(res)
            if errors:
                self._faults = old
                return CommitOutcome(self._epoch, False, "", "; ".join(errors))
            if not self._shares or res == self._res_in_force:
                return CommitOutcome(self._epoch, True, "", "nothing to push on this node yet")
            self._fault_pushes += 1
            r = self.client.push(res, version=f"e{self._epoch}.n{self._fault_pushes}")
            if r.ack:
                self._res_in_force = res
            else:
                self._faults = old
            return CommitOutcome(self._epoch, bool(r.ack), r.version, r.reason)

    def refresh_endpoints(self) -> bool | None:
        """Re-push the shares in force when where their replicas listen has changed (EDS-like:
        routes, weights and limits stay). None: nothing to do; else whether the agent ACKed."""
        from dpu_agent import config as cfg

        with self._lock:
            shares = self._shares
        if not shares:
            return None
        try:
            eps = self.endpoints()  # outside the lock: it may ask other processes
            res = self._resources(shares, eps)
        except Exception as exc:  # no answer (agents restarting) or untranslatable: next poll
            log.debug("mesh endpoints of %s not refreshed: %s", self.node_id, exc)
            return None
        with self._lock:
            if shares is not self._shares or res == self._res_in_force or cfg.validate(res):
                return None
            self._eds += 1
            r = self.client.push(res, version=f"e{self._epoch}.d{self._eds}")
            self.endpoint_pushes += 1
            if r.ack:
                self._res_in_force = res
            else:
                self.endpoint_nacks += 1
                log.warning("mesh agent of %s NACKed new endpoints: %s", self.node_id, r.reason)
            return bool(r.ack)

    # -- telemetry ---------------------------------------------------------------------
    def telemetry(self, now: float) -> list[TelemetryWindow]:
        from dpu_agent.placement import cluster_name
        from dpu_agent.telemetry import job_window

        self.refresh_endpoints()
        from dpu_agent.envoy_process import FAULT_DELAYS

        stats = self.client.stats()
        with self._lock:
            prev, self._prev_stats = self._prev_stats, stats
            jobs = dict(self._seen_jobs)
            faults = dict(self._faults)
        if prev is None:
            return []  # the first call sets the baseline
        # Envoy counts injected delays over all routes of the proxy, not per route
        delays = max(0.0, stats.counter(FAULT_DELAYS) - prev.counter(FAULT_DELAYS))
        out = []
        for job, ups in sorted(jobs.items()):
            x = job_window(job, ups, prev, stats)
            for n in ups:
                c = cluster_name(job, n)
                x[f"mesh.to.{n}.upstream_rq_total"] = max(
                    0.0, stats.cluster(c, "upstream_rq_total") - prev.cluster(c, "upstream_rq_total")
                )
            x["mesh.commit_nacks"] = float(self.commit_nacks)
            x["mesh.epoch"] = float(self._epoch)
            x["mesh.endpoint_pushes"] = float(self.endpoint_pushes)
            x["mesh.fault_delay_ms"], x["mesh.fault_percent"] = faults.get(job, (0.0, 0.0))
            x["mesh.fault_delays_injected"] = delays
            rejected = int(x["mesh.rejected"])
            ok = int(x["mesh.upstream_rq_2xx"])
            seq = self._seq.get(job, 0)
            self._seq[job] = seq + 1
            if self.upstream_reports:  # the replicas count what was forwarded; we count refusals
                offered, ok, timed_out = rejected, 0, 0
            else:
                offered, timed_out = int(x["mesh.upstream_rq_total"]) + rejected, int(x["mesh.upstream_rq_timeout"])
            out.append(
                TelemetryWindow(
                    job=job, node_id=self.node_id, replica=f"mesh@{self.node_id}", seq=seq,
                    start=prev.wall_time, end=stats.wall_time, offered=offered, completed=ok,
                    rejected=rejected, timed_out=timed_out, within_slo=ok, extras=x,
                )
            )  # fmt: skip
        return out

    def close(self) -> None:
        if _MESH_OF_NODE.get(self.node_id) is self:
            del _MESH_OF_NODE[self.node_id]
        self._transport.close()
        if self._handle is not None:
            self._handle.stop()
            self._handle = None


class MeshFault:
    """A network-latency surge on one node as a plan participant: constructed = the delay is
    in force at the node's proxy (``MeshParticipant.set_fault``), ``close`` (unregistering it)
    removes it. It votes yes on every plan (a network condition is workload, not allocation:
    the mesh participant keeps it across plans) and reports no windows of its own (the mesh
    participant's windows carry ``mesh.fault_*``)."""

    def __init__(self, mesh: MeshParticipant, job: str, delay_ms: float, percent: float = 100.0) -> None:
        from dpu_agent.placement import safe_name

        self.name = f"fault.{safe_name(job)}"
        self.mesh, self.job = mesh, job
        r = mesh.set_fault(job, delay_ms, percent)
        if not r.ok:
            raise ValueError(f"mesh agent of {mesh.node_id} refused the fault on {job}: {r.reason}")
        self.outcome = r

    def prepare(self, plan: PlacementPlan, node_id: str) -> str | None:
        return None

    def commit(self, epoch: int) -> None:
        return None

    def abort(self, epoch: int) -> None:
        return None

    def telemetry(self, now: float) -> list[TelemetryWindow]:
        return []

    def close(self) -> None:
        r = self.mesh.clear_fault(self.job)
        if not r.ok:  # the delay stays in force: say so (the surge did not end)
            log.warning("mesh agent of %s refused to clear the fault on %s: %s",
                        self.mesh.node_id, self.job, r.reason)  # fmt: skip


def mesh_fault(job: str, delay_ms: float, percent: float = 100.0, node_id: str | None = None) -> MeshFault:
    """Factory for ``NodeAgent.register_participant``: a fixed delay on ``job``'s route at this
    node's proxy (the mesh participant the agent built in this process), until unregistered."""
    node = node_id or _this_node()
    mesh = _MESH_OF_NODE.get(node)
    if mesh is None:
        raise ValueError(f"node {node}: no mesh participant in this process (devices: envoy = true)")
    return MeshFault(mesh, job, delay_ms, percent)


# --------------------------------------------------------------------------- PIM


@dataclass
class PimApp:
    """An app (a job) on the node's PIM device: its profile, offered load and big cores."""

    profile: Any  # pim_agent.presets.AppProfile
    load_rps: float = 0.0
    big_cores: int = 0


def pim_app(job: str, spec: Mapping[str, Any]) -> PimApp:
    """``{"profile": "imgdnn" | {AppProfile fields}, "load_rps": x, "big_cores": n}`` -> PimApp
    (a named TailBench profile, or ``stream`` for best effort, renamed to the job)."""
    from pim_agent.presets import AppProfile
    from pim_agent.workloads import STREAM, TAILBENCH

    known = {**TAILBENCH, STREAM.name: STREAM}
    p = spec.get("profile", job)
    if isinstance(p, str):
        if p not in known:
            raise ValueError(f"pim app {job}: unknown profile {p!r} (known: {sorted(known)})")
        prof = replace(known[p], name=job)
    else:
        prof = AppProfile(**{**dict(p), "name": job})
    return PimApp(prof, float(spec.get("load_rps", 0.0)), int(spec.get("big_cores", 0)))


def merge_windows(ws: Sequence[Any], end: float) -> Any:
    """Device windows (pim_agent.device.NodeWindow, one per control interval) -> one window
    of their total duration ending at ``end`` (wall time): counts and histograms summed, rates
    averaged over the duration, states (cores, pages, locality, progress) as of the last one."""
    from pim_agent.device import AppWindow, NodeWindow

    span = max(sum(w.interval_s for w in ws), 1e-9)
    dts = [w.interval_s for w in ws]
    last = ws[-1]
    apps = []
    for a_last in last.apps:
        per = [w.app(a_last.name) for w in ws if any(a.name == a_last.name for a in w.apps)]
        done = sum(a.completed for a in per)
        hist = tuple(sum(h) for h in zip(*(a.latency_hist for a in per), strict=True))
        mean = (sum(a.mean_ms * a.completed for a in per if a.completed) / done) if done else math.nan
        apps.append(
            AppWindow(
                name=a_last.name, kind=a_last.kind,
                offered_rps=sum(a.offered_rps * dt for a, dt in zip(per, dts, strict=False)) / span,
                throughput_rps=done / span, completed=done, p99_ms=math.nan, mean_ms=mean,
                latency_hist=hist, cpu_cores=a_last.cpu_cores, pim_cores=a_last.pim_cores,
                cpu_completions=sum(a.cpu_completions for a in per),
                cpu_busy_s=sum(a.cpu_busy_s for a in per),
                pim_completions=tuple(sum(x) for x in zip(*(a.pim_completions for a in per), strict=True)),
                pim_busy_s=tuple(sum(x) for x in zip(*(a.pim_busy_s for a in per), strict=True)),
                locality=a_last.locality, page_fractions=a_last.page_fractions,
                pages_pending=a_last.pages_pending, migration_progress=a_last.migration_progress,
                backlog=a_last.backlog,
            )
        )  # fmt: skip
    n = len(ws)
    return NodeWindow(
        time=end, interval_s=span, version=last.version, apps=tuple(apps),
        channel_bw_gbs=tuple(sum(x) / n for x in zip(*(w.channel_bw_gbs for w in ws), strict=True)),
        pim_utilization=tuple(sum(x) / n for x in zip(*(w.pim_utilization for w in ws), strict=True)),
        cpu_utilization=sum(w.cpu_utilization for w in ws) / n,
        migration_engine_busy=sum(w.migration_engine_busy for w in ws) / n,
    )  # fmt: skip


MAX_HELD_WINDOWS = 600  # device windows kept between telemetry calls (60 s at 100 ms)


@dataclass
class _Collected:
    windows: list[Any] = field(default_factory=list)
    dropped: int = 0


class PimParticipant:
    """The node's emulated HBM-PIM agent (pim_agent gRPC service over a PimDevice).

    An agent this participant starts is stepped by it: a ticker thread calls the
    agent's Step RPC once per control interval on the wall clock and keeps every
    window the agent returns, so no window is lost between telemetry calls. An agent
    at a configured address steps itself (``autostep``); then the ticker reads its
    counters once per interval and keeps each new window."""

    name = "pim"

    def __init__(
        self,
        node_id: str,
        *,
        preset: str = "pimcloud",
        address: str | None = None,
        token: str | None = None,
        apps: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        timeout_s: float = 10.0,
    ) -> None:
        from pim_agent.client import GrpcTransport, PimClient

        self.node_id = node_id
        self._handle: Any = None
        self._drive = address is None
        if address:
            if not token:
                raise ValueError(f"PIM agent at {address}: a token is required to connect")
            self.token, self.address = token, address
        else:
            from pim_agent.device import PimDevice
            from pim_agent.presets import PRESETS
            from pim_agent.server import start_agent

            if preset not in PRESETS:
                raise ValueError(f"unknown PIM preset {preset!r} (known: {sorted(PRESETS)})")
            self.token = token or new_token()
            self._handle = start_agent(PimDevice(PRESETS[preset], seed=seed), "127.0.0.1:0", self.token)
            self.address = self._handle.address
        self._transport = GrpcTransport(self.address, self.token, timeout_s)
        self.client = PimClient(self._transport)
        self._lock = threading.Lock()
        self._apps: dict[str, PimApp] = {}
        self._committed: dict[str, Any] = {}  # app -> Assignment in force (as last committed)
        self._staged: tuple[int, dict[str, Any]] | None = None
        self.last_commit: CommitOutcome | None = None
        self.commit_rejects = 0
        self._seq = 0
        self._collected = _Collected()
        self._last_device_time = -1.0
        self._stop = threading.Event()
        try:
            self.preset, self._agent_version, _ = self.client.info()
            for job, spec in sorted((apps or {}).items()):
                self.add_app(job, spec)
        except Exception:
            self.close()
            raise
        self._ticker = threading.Thread(target=self._tick, name=f"pim-{node_id}", daemon=True)
        self._ticker.start()

    # -- apps ----------------------------------------------------------------------------
    def add_app(self, job: str, spec: Mapping[str, Any]) -> None:
        app = pim_app(job, spec)
        self.client.register(app.profile, app.load_rps)
        with self._lock:
            self._apps[job] = app

    def set_load(self, job: str, load_rps: float) -> None:
        self.client.set_load(job, load_rps)
        with self._lock:
            self._apps[job].load_rps = float(load_rps)

    # -- the ticker ------------------------------------------------------------------------
    def _tick(self) -> None:
        interval = self.preset.interval_s
        deadline = time.time()
        while not self._stop.is_set():
            deadline += interval
            if self._stop.wait(max(0.0, deadline - time.time())):
                return
            try:
                w = self.client.step() if self._drive else self.client.counters()
            except Exception:  # agent gone (closing) or busy: next interval
                continue
            if w is None or w.time <= self._last_device_time:
                continue
            self._last_device_time = w.time
            with self._lock:
                held = self._collected
                held.windows.append(w)
                if len(held.windows) > MAX_HELD_WINDOWS:  # nobody is reading: keep the newest
                    held.windows.pop(0)
                    held.dropped += 1

    # -- two-phase -------------------------------------------------------------------------
    def _mirror(self) -> Any:
        """A device like the agent's (preset, apps, assignments in force) to validate on."""
        from pim_agent.device import PimDevice

        d = PimDevice(self.preset)
        for app in self._apps.values():
            d.register(app.profile, app.load_rps)
        if self._committed:
            d.apply(self._committed, 1)
        return d

    def prepare(self, plan: PlacementPlan, node_id: str) -> str | None:
        from pim_agent.device import Assignment, PlanError
        from pim_agent.placement import PlacementError, plan_for_node

        if node_id != self.node_id:
            return f"PIM participant of node {self.node_id} asked to prepare node {node_id}"
        with self._lock:
            try:
                big = {j: a.big_cores for j, a in self._apps.items()}
                changes = plan_for_node(Allocation({}), plan, node_id, self.preset, big)
            except PlacementError as exc:
                return f"pim: {exc}"
            n = self.preset.n_stacks
            for job, a in self._committed.items():  # left the plan: its PIM cores go back
                if job not in changes:
                    changes[job] = Assignment(a.cpu, (0,) * n, a.pages, ())
            if not changes:
                self._staged = (plan.epoch, {})
                return None
            try:
                _, version, registered = self.client.info()
            except Exception as exc:
                return f"PIM agent {self.address} unreachable: {exc}"
            if plan.epoch <= version:
                return f"pim: stale plan epoch {plan.epoch}: version {version} is in force"
            missing = sorted(set(changes) - set(registered))
            if missing:
                return f"pim: app(s) {missing} are not registered with the agent of {node_id}"
            try:
                self._mirror().validate(changes)
            except PlanError as exc:
                return f"pim: the agent would refuse it: {exc}"
            self._staged = (plan.epoch, changes)
        return None

    def commit(self, epoch: int) -> None:
        with self._lock:
            if self._staged is None or self._staged[0] != epoch:
                return
            _, changes = self._staged
            self._staged = None
            if not changes:
                self.last_commit = CommitOutcome(epoch, True, str(self._agent_version))
                return
            r = self.client.apply(changes, epoch)
            self.last_commit = CommitOutcome(epoch, r.accepted, str(r.version), r.reason)
            self._agent_version = r.version
            if r.accepted:
                self._committed.update(changes)
            else:
                self.commit_rejects += 1
                log.warning("PIM agent of %s refused epoch %d: %s; version %d stays",
                            self.node_id, epoch, r.reason, r.version)  # fmt: skip

    def abort(self, epoch: int) -> None:
        with self._lock:
            if self._staged is not None and self._staged[0] == epoch:
                self._staged = None

    def assignments(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._committed)

    # -- telemetry -------------------------------------------------------------------------
    def telemetry(self, now: float) -> list[TelemetryWindow]:
        from pim_agent.placement import telemetry_windows

        end = time.time()
        with self._lock:
            held, self._collected = self._collected, _Collected()
            ws = held.windows
            slo = {j: a.profile.slo_p99_ms for j, a in self._apps.items()}
            seq = self._seq
            self._seq += 1 if ws else 0
        if not ws:
            return []
        out = telemetry_windows(merge_windows(ws, end), self.node_id, seq, slo)
        for w in out:
            w.extras["pim.device_windows"] = float(len(ws))  # type: ignore[index]
            w.extras["pim.device_windows_dropped"] = float(held.dropped)  # type: ignore[index]
            w.extras["pim.commit_rejects"] = float(self.commit_rejects)  # type: ignore[index]
        return out

    def close(self) -> None:
        self._stop.set()
        t = getattr(self, "_ticker", None)
        if t is not None:
            t.join(5.0)
        self._transport.close()
        if self._handle is not None:
            self._handle.stop()
            self._handle = None


# --------------------------------------------------------------------------- construction


def _node_options(devices: Mapping[str, Mapping[str, Any]] | None, node_id: str,
                  overrides: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    d = dict(devices or {})
    return {**dict(d.get(node_id) or d.get("default") or {}), **overrides}


def _this_node() -> str:
    import ray  # only when called inside a Ray worker without an explicit node id

    return str(ray.get_runtime_context().get_node_id())


class ReplicaEndpoints:
    """``job -> node -> [(host, port)]`` of the meshed replicas (``mesh_port`` in their info)
    that the namespace's NodeAgents report; the mesh participant's endpoint source in the Ray
    backend. An agent that does not answer keeps the endpoints it last reported. Replicas
    listen on 127.0.0.1: every Ray node of the cluster must share the loopback (one machine)."""

    def __init__(self, namespace: str | None = None, timeout_s: float = 5.0) -> None:
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._last: dict[str, dict[str, Any]] = {}  # agent name -> its last report

    def __call__(self) -> dict[str, dict[str, list[tuple[str, int]]]]:
        import ray

        from actors.names import PREFIX

        ns = self.namespace or ray.get_runtime_context().namespace
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a.get("namespace") == ns and a["name"].startswith(f"{PREFIX}:agent:"))  # fmt: skip
        refs = {}
        for n in names:
            try:
                refs[n] = ray.get_actor(n, namespace=ns).report.remote()
            except ValueError:  # gone since the listing
                continue
        # one deadline for all: an agent that is restarting (its node died) does not hold up the rest
        ready = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.timeout_s)[0] if refs else []
        done = set(ready)
        for n, ref in refs.items():
            if ref not in done:
                continue  # restarting or busy: its last report stands
            try:
                self._last[n] = ray.get(ref)
            except Exception:  # it died answering: its last report stands
                continue
        self._last = {n: r for n, r in self._last.items() if n in refs}
        out: dict[str, dict[str, list[tuple[str, int]]]] = {}
        for rep in self._last.values():
            for info in rep.get("replicas", {}).values():
                port = info.get("mesh_port")
                if port:
                    out.setdefault(info["job"], {}).setdefault(rep["node_id"], []).append(("127.0.0.1", int(port)))
        for per_node in out.values():
            for eps in per_node.values():
                eps.sort()
        return out


def mesh_participant(devices: Mapping[str, Mapping[str, Any]] | None = None,
                     node_id: str | None = None, replica_endpoints: bool = False,
                     namespace: str | None = None,
                     **overrides: Any) -> MeshParticipant | None:  # fmt: skip
    """Factory for the NodeAgent's ``participants`` option: the node's mesh participant, or
    None when the node's options (its entry in ``devices``, else ``"default"``, plus
    ``overrides``) turn the mesh off. ``node_id`` defaults to the Ray node this runs on.
    ``replica_endpoints``: the endpoints are the meshed replicas the NodeAgents report
    (``ReplicaEndpoints``) and the replicas count the requests they serve (``upstream_reports``).
    ``namespace``: the manager's Ray namespace, where its NodeAgents are named (an actor's
    runtime namespace is its job's, which need not be the manager's)."""
    node = node_id or _this_node()
    o = _node_options(devices, node, overrides)
    if not (o.get("envoy") or o.get("mesh_address")):
        return None
    eps = o.get("endpoints") or (ReplicaEndpoints(namespace) if replica_endpoints else None)
    return MeshParticipant(node, preset=o.get("dpu_preset") or "bluefield2",
                           address=o.get("mesh_address"), token=o.get("mesh_token"),
                           endpoints=eps, upstream_reports=replica_endpoints)  # fmt: skip


def pim_participant(devices: Mapping[str, Mapping[str, Any]] | None = None,
                    node_id: str | None = None, **overrides: Any) -> PimParticipant | None:  # fmt: skip
    """Factory for the NodeAgent's ``participants`` option: the node's PIM participant, or None."""
    node = node_id or _this_node()
    o = _node_options(devices, node, overrides)
    if not (o.get("pim_preset") or o.get("pim_address")):
        return None
    return PimParticipant(node, preset=o.get("pim_preset") or "pimcloud",
                          address=o.get("pim_address"), token=o.get("pim_token"),
                          apps=o.get("pim_apps"), seed=int(o.get("seed", 0)))  # fmt: skip


def device_participant_specs(devices: Mapping[str, Any],
                             namespace: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """``ManagerConfig.devices`` -> specs for the NodeAgent's ``participants`` option (the same
    list for every node; each node's factory picks its own entry). Empty when all is off.
    ``namespace``: where the manager's NodeAgents are named (the mesh's endpoint source)."""
    plain = {k: (v.as_options() if hasattr(v, "as_options") else dict(v)) for k, v in devices.items()}
    specs = []
    if any(o.get("envoy") or o.get("mesh_address") for o in plain.values()):
        specs.append({"factory": "actors.devices:mesh_participant",
                      "options": {"devices": plain, "replica_endpoints": True,
                                  "namespace": namespace}})  # fmt: skip
    if any(o.get("pim_preset") or o.get("pim_address") for o in plain.values()):
        specs.append({"factory": "actors.devices:pim_participant", "options": {"devices": plain}})
    return specs


def participants_for_node(node_id: str, options: Mapping[str, Any] | None) -> list[Any]:
    """Every device participant one node's options ask for (``DeviceOptions.as_options()``)."""
    out: list[Any] = []
    try:
        for make in (mesh_participant, pim_participant):
            p = make({node_id: dict(options or {})}, node_id)
            if p is not None:
                out.append(p)
    except BaseException:
        for p in out:
            p.close()
        raise
    return out
