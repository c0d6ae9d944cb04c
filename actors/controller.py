"""The Controller: a Ray actor hosting the GlobalAllocator's control loop under the wall clock.

Threaded actor: NodeAgents push telemetry (``ingest``) and admins call the
ControlPlane methods while the loop thread runs rounds. One lock guards the
allocator. Each loop tick it

1. reconciles NodeAgents with the nodes Ray reports alive (one named agent
   per node, pinned to it; a node Ray reports dead asks for a round at once
   and its replicas' windows that never arrived are recorded as lost),
2. when a round is due, computes capacity per node (Ray's total minus what
   work outside the manager holds: total - available - our own
   reservations), runs ``GlobalAllocator.step`` and enforces the plan
   through the agents: two-phase (prepare at every agent, which asks its
   participants; commit only if all voted yes, else abort everywhere and the
   last good plan stays in force), then make, break, make phases
   (make-before-break); in shadow mode it only logs it.

Faults: the actor restarts itself (``max_restarts=-1``: its node died, or it
was killed) and a restarted or new controller resumes from the run log at
``config.log_uri``: jobs submitted and removed (events), the last plan that
was not aborted, policy state, and the learners rebuilt by replaying the
logged telemetry; its first plan has epoch last + 1, and agents refuse any
older epoch, so a controller that was thought dead cannot apply an old plan.
An agent that died for good (not restarted by Ray) is re-created on its node.

Telemetry: ``ingest`` only de-duplicates (under its own lock, so a running
round never blocks it), records lag and buffers the rows; a flush thread
writes one telemetry part per ``flush_s`` (renamed into place), marks the
pushes in it durable, then merges them into the learners. The reply to each
push names the agent's last durable push, and the agent acks windows at the
replicas only up to it: a window is freed at its source only once it is in
the log. The actor is threaded (``max_concurrency``), so the four agents'
pushes run side by side instead of queueing behind one another or a round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import uuid
import warnings
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.devices import device_participant_specs
from actors.inference.control import attach_knob_models
from actors.names import agent_name, pg_name
from actors.node_agent import NodeAgent
from cluster_mgr.clock import SystemClock
from cluster_mgr.control.api import Explanation, JobStatus, NodeStatus, PolicyInfo, Status
from cluster_mgr.control.global_allocator import Decision, GlobalAllocator
from cluster_mgr.model import JobSpec, NodeInfo, ResourceVector, utility_from_reward
from cluster_mgr.place import DPU_LABEL, PIM_LABEL, replica_sizes
from cluster_mgr.settings import ManagerConfig, devices_for_node
from cluster_mgr.store import EVENT_SCHEMA, PartBuffer, RunLog

log = logging.getLogger("cluster_mgr.controller")

LAG_SAMPLES = 200_000


def make_policy(name: str, options: dict[str, Any]) -> Any:
    """The policy by name: the allocators registry when present, else the built-in fair share."""
    try:
        from allocators.registry import get_policy  # type: ignore[import-not-found]
    except ImportError:
        get_policy = None
    if get_policy is not None:
        return get_policy(name, **options)  # an instance built with the policy's options
    if name != "fair_share":
        raise ValueError(f"policy {name!r}: no allocators.registry yet; only 'fair_share' exists")
    from allocators.policies.fair_share import ProportionalFairShare

    return ProportionalFairShare(**options)


def make_learner_factory(name: str, options: dict[str, Any]) -> Any:
    """``learners.make_learner`` when present; None (no learning) until the learners land."""
    try:
        from learners import make_learner  # type: ignore[attr-defined]
    except ImportError:
        log.info("learners.make_learner not available: running without learners")
        return None
    return lambda spec: make_learner(name, **options)


def list_policies() -> tuple[PolicyInfo, ...]:
    try:
        from allocators import registry  # type: ignore[attr-defined]

        infos = registry.list_policies()
        return tuple(
            i if isinstance(i, PolicyInfo) else PolicyInfo(**i) for i in infos
        )  # fmt: skip
    except (ImportError, AttributeError, TypeError):
        from allocators.policies.fair_share import ProportionalFairShare as P

        return (PolicyInfo(P.name, getattr(P, "kind", "baseline"),
                           "proportional fair share by weight", "built-in"),)  # fmt: skip


def agents_can_share_log(log_uri: str) -> bool:
    """Whether every NodeAgent can write parts the controller will read back: a shared store
    (a URI with a scheme), or a local folder when every Ray node runs on this one machine."""
    if "://" in log_uri:
        return True
    hosts = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    return len(hosts) <= 1


class ControllerCore:
    """Everything the Controller actor does, without the actor wrapper."""

    def __init__(self, config: ManagerConfig, *, tick_s: float = 0.2, agent_options: dict[str, Any] | None = None,
                 enforce_timeout_s: float = 120.0, flush_s: float = 0.5, flush_rows: int = 200_000,
                 prepare_timeout_s: float = 20.0, agent_timeout_s: float = 5.0,
                 agent_log: bool | None = None) -> None:  # fmt: skip
        self.config = config
        self.clock = SystemClock()
        # unique per incarnation: parts of two controllers never collide, and agents see a new
        # incarnation (and re-send what is unacked) after a restart
        self.log = RunLog(config.log_uri, writer=f"ctl-{int(time.time())}-{uuid.uuid4().hex[:6]}")
        policy = make_policy(config.policy, dict(config.policy_options))
        # inference jobs: knob_profile models from measured profiles (actors/inference/control.py)
        factory, self.knob_models = attach_knob_models(
            policy, make_learner_factory(config.learner, dict(config.learner_options)),
            lambda: {j.name: j for j in self.ga.jobs})  # fmt: skip
        self.ga = GlobalAllocator(
            config.jobs,
            policy,
            factory,
            self.clock,
            self.log,
            round_s=config.round_s,
            seed=config.seed,
            shadow=config.shadow,
            window_s=config.telemetry_window_s,
        )
        self.lock = threading.RLock()
        self.ledger_lock = threading.Lock()
        self.lag_lock = threading.Lock()
        # Telemetry: one log part per flush interval (or per flush_rows), written by its own
        # thread; agents ack at their sources only what a flush made durable.
        self.telemetry = PartBuffer(self.log, "telemetry")
        self.flush_s = float(flush_s)
        self.flush_rows = int(flush_rows)
        self.durable: dict[str, tuple[str, int]] = {}  # node -> (agent token, last durable push)
        self.incarnation = self.log.writer  # a new controller: agents re-send what is unacked
        self._flush_thread: threading.Thread | None = None
        self.tick_s = tick_s
        self.enforce_timeout_s = enforce_timeout_s
        self.prepare_timeout_s = prepare_timeout_s  # an agent silent this long votes no
        self.agent_timeout_s = agent_timeout_s  # an agent silent this long is pinged
        self.restored = 0
        self._started = False
        self._start_lock = threading.Lock()
        self.agent_options = {"window_s": config.telemetry_window_s,
                              "fast_window_s": config.fast_window_s, **(agent_options or {})}  # fmt: skip
        # device agents (docs/devices.md) as plan participants of every NodeAgent, rebuilt with it
        specs = (device_participant_specs(config.devices, config.namespace)
                 if config.devices else [])  # fmt: skip
        if specs:
            self.agent_options["participants"] = [*self.agent_options.get("participants", ()), *specs]
        # the per-node fast layer (docs/local_control.md)
        if config.local_controller != "none" and "local_control" not in self.agent_options:
            self.agent_options["local_control"] = {"controller": config.local_controller,
                                                   "seed": config.seed, **config.local_options}  # fmt: skip
        self.nack_replans = 0  # consecutive rounds whose commit was NACKed somewhere
        if agent_log is None:
            agent_log = agents_can_share_log(config.log_uri)
        self.agent_log = bool(agent_log)
        if self.agent_log:  # agents log their node's telemetry and send partial sums
            self.agent_options.update(log_uri=config.log_uri, aggregate=True)
        self.learned_parts: set[str] = set()  # telemetry parts whose windows the learners have
        self.replica_marks: dict[str, int] = {}  # reported by agents that keep the ledger
        self.agents: dict[str, Any] = {}
        self.agent_seen: dict[str, float] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.dead_nodes: set[str] = set()
        self.alive: dict[str, dict[str, Any]] = {}
        self.lag_s: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.ingested_rows = 0
        self.rounds_done = 0
        self.enforced_epoch = -1
        self.last_error = ""
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.admin: Any = None
        self.admin_address = ""

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Resume from the log when it holds decisions, attach to (or start) the agents, start
        the loops. Idempotent: a second call returns the same summary."""
        with self._start_lock:
            if not self._started:
                self._start()
                self._started = True
        return {"restored_windows": self.restored, "agents": sorted(self.agents),
                "admin_address": self.admin_address, "epoch": self.ga.epoch}  # fmt: skip

    def _start(self) -> None:
        if self.log.read("decisions").num_rows:
            parts = self.log.parts("telemetry")  # exactly these are replayed
            with self.lock:
                self.restored = self.ga.restore(self.log, parts)
            with self.ledger_lock:
                self.learned_parts.update(p.rsplit("/", 1)[-1] for p in parts)
            self._event("controller_restored", self.log.writer,
                        {"windows": self.restored, "epoch": self.ga.epoch, "round": self.ga.round,
                         "jobs": [j.name for j in self.ga.jobs]})  # fmt: skip
        self.reconcile()
        self._start_admin()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="control-loop", daemon=True)
            self._thread.start()
        if self._flush_thread is None:
            self._flush_thread = threading.Thread(target=self._flush_loop, name="telemetry-flush",
                                                  daemon=True)  # fmt: skip
            self._flush_thread.start()

    def _start_admin(self) -> None:
        if not self.config.admin_bind or self.admin is not None:
            return
        try:
            from cluster_mgr.admin.server import serve
        except ImportError:
            log.info("cluster_mgr.admin.server not available: no admin API from the controller")
            return
        try:
            self.admin = serve(self, self.config.admin_bind, self.config.admin_token)
            self.admin_address = self.admin.address
        except (OSError, ValueError) as exc:
            log.warning("admin API not served: %s", exc)

    def _loop(self) -> None:
        next_reconcile = 0.0
        while not self._stop.is_set():
            started = time.time()
            try:
                if started >= next_reconcile:
                    self.reconcile()
                    next_reconcile = started + 1.0
                with self.lock:
                    self.ga.settle()
                    due = self.ga.due()
                if due:
                    self.run_round()
            except Exception as exc:  # a failed round is logged; the loop carries on
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("control loop")
            self._stop.wait(max(0.0, self.tick_s - (time.time() - started)))

    def shutdown(self) -> int:
        """Stop the loop, stop every replica (through the agents), kill the agents."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._flush_thread is not None:
            self._flush_thread.join(timeout=30)
        stopped = 0
        refs = [a.shutdown.remote() for a in self.agents.values()]
        for r in refs:
            with contextlib.suppress(Exception):  # an agent on a dead node has nothing to stop
                stopped += ray.get(r, timeout=60)
        with contextlib.suppress(Exception):  # what the agents handed over on the way out
            self.flush_telemetry()
        for a in self.agents.values():
            ray.kill(a, no_restart=True)
        self.agents.clear()
        if self.admin is not None:
            self.admin.stop()
        return stopped

    # -- nodes and agents --------------------------------------------------------------
    def reconcile(self) -> None:
        nodes = ray.nodes()
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        gone = [nid for nid in self.agents if nid not in alive]
        for nid in gone:  # Ray reports the node dead: re-place its replicas at once
            self.agents.pop(nid, None)
            self.dead_nodes.add(nid)
            rep = self.reports.pop(nid, {})
            lost = self._record_node_loss(nid, rep)
            self._event("node_dead", nid, {"replicas": sorted(rep.get("replicas", {})),
                                           "windows_lost_estimate": lost})  # fmt: skip
            with self.lock:
                self.ga.request_round(f"node {nid} dead")
        self._check_agents(alive)
        new = []
        for nid in alive:
            if nid in self.agents:
                continue
            new.append(nid)
            self.agents[nid] = NodeAgent.options(
                name=agent_name(nid),
                namespace=self.config.namespace,
                get_if_exists=True,
                lifetime="detached" if self.config.address != "local" else None,
                scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
            ).remote(nid, self.config.namespace, self.agent_options)
            self.agent_seen.setdefault(nid, time.time())
            if self.alive:  # a node that joined after start: room for a round
                with self.lock:
                    self.ga.request_round(f"node {nid} joined")
        # what each (maybe pre-existing) agent runs, before any round counts its replicas'
        # reservations as work outside the manager
        refs = {nid: self.agents[nid].report.remote() for nid in new}
        for nid, ref in refs.items():
            try:
                self.reports[nid] = ray.get(ref, timeout=60)
                self.agent_seen[nid] = time.time()
            except Exception as exc:  # the next push brings the report
                log.warning("agent %s: no report yet: %s", nid, exc)
        self.alive = alive

    def _check_agents(self, alive: dict[str, Any]) -> None:
        """Agents silent for ``agent_timeout_s`` are pinged; one that died for good (Ray will
        not restart it) is forgotten here and re-created on its node by ``reconcile``. Its
        replicas keep serving meanwhile; the new agent adopts them by name."""
        now = time.time()
        stale = {nid: a for nid, a in self.agents.items()
                 if nid in alive and now - self.agent_seen.get(nid, now) > self.agent_timeout_s}  # fmt: skip
        if not stale:
            return
        refs = {nid: a.ping.remote() for nid, a in stale.items()}
        for nid, ref in refs.items():
            try:
                ray.get(ref, timeout=2.0)
            except ray.exceptions.ActorDiedError as exc:
                self.agents.pop(nid, None)
                self._event("agent_dead", nid, {"error": str(exc)[:300]})
            except Exception:  # restarting or busy: Ray brings it back
                continue
    def _record_node_loss(self, node_id: str, report: dict[str, Any]) -> int:
        """Windows the dead node's replicas closed after the last one we received: lost, and
        said so (the ledger counts them; status shows them)."""
        now = time.time()
        total = 0
        for name, info in report.get("replicas", {}).items():
            have = max(self.ga.ledger.mark(name), self.replica_marks.get(name, -1))
            produced = int(info.get("seq", 0)) - 1  # last closed seq at the report
            since = max(0.0, now - float(report.get("time", now)))
            n = max(0, produced - have) + int(since // self.config.telemetry_window_s)
            with self.ledger_lock:
                self.ga.ledger.record_lost(name, n)
            total += n
            # its placement group would otherwise wait forever for the dead node
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(ray.util.get_placement_group(pg_name(name)))
        return total

    def capacity(self) -> list[NodeInfo]:
        """Per alive node: Ray's total minus what work outside the manager holds."""
        avail = ray._private.state.available_resources_per_node()  # no public per-node API
        ours: dict[str, float] = {}
        for nid, rep in self.reports.items():
            ours[nid] = sum(float(i["size"]) for i in rep.get("replicas", {}).values())
        out = []
        for nid, n in self.alive.items():
            total = float(n["Resources"].get("CPU", 0.0))
            free = float(avail.get(nid, {}).get("CPU", total))
            outside = max(0.0, total - free - ours.get(nid, 0.0))
            cpu = math.floor((total - outside) / 0.1 + 1e-6) * 0.1
            pim_cores, mesh = self.device_capacity(nid)
            out.append(NodeInfo(nid, ResourceVector(cpu=max(cpu, 0.0), pim_cores=pim_cores,
                                                    mesh=mesh),
                                alive=True, address=n.get("NodeManagerAddress", ""),
                                labels=self.device_labels(nid)))  # fmt: skip
        return sorted(out, key=lambda x: x.node_id)

    def device_capacity(self, node_id: str) -> tuple[float, float]:
        """(PIM cores, mesh req/s) the node's emulated devices offer the policy: the PIM
        preset's cores, and the DPU's admission rate (its Arm cores at saturation), so any
        policy (not only a scripted one) can allocate them and a job's minimums can ask."""
        if not self.config.devices:
            return 0.0, 0.0
        o = devices_for_node(self.config.devices, node_id)
        pim = mesh = 0.0
        if o.envoy or o.mesh_address:
            from dpu_agent.device import preset

            mesh = float(preset(o.dpu_preset or "bluefield2").admission_rps)
        if o.pim_preset or o.pim_address:
            from pim_agent.presets import PRESETS

            pim = float(PRESETS[o.pim_preset or "pimcloud"].total_pim_cores)
        return pim, mesh

    def device_labels(self, node_id: str) -> tuple[tuple[str, str], ...]:
        """The node's devices as NodeInfo labels: ``make_plan`` places mesh shares on DPU nodes
        and PIM cores and pages on PIM nodes from them (cluster_mgr.place.device_nodes)."""
        if not self.config.devices:
            return ()
        o = devices_for_node(self.config.devices, node_id)
        out = []
        if o.envoy or o.mesh_address:
            out.append((DPU_LABEL, o.dpu_preset or "bluefield2"))
        if o.pim_preset or o.pim_address:
            from pim_agent.presets import PRESETS

            p = PRESETS[o.pim_preset or "pimcloud"]
            out.append((PIM_LABEL, f"{p.n_stacks}x{p.pim_cores_per_stack}"))
        return tuple(out)

    # -- rounds ------------------------------------------------------------------------
    def run_round(self) -> Decision | None:
        nodes = self.capacity()
        with self.lock:
            try:
                decision = self.ga.step(nodes)
            except ValueError as exc:
                self.last_error = str(exc)
                return None
        if not self.config.shadow:
            self.enforce(decision)
        self.rounds_done += 1
        return decision

    def desired_for(self, decision: Decision) -> dict[str, dict[str, dict[str, Any]]]:
        specs = {j.name: j for j in self.ga.jobs}
        knobs = decision.policy_state.get("knobs") or {}
        out: dict[str, dict[str, dict[str, Any]]] = {nid: {} for nid in self.agents}
        for s in decision.plan.shares:
            spec = specs.get(s.job)
            if spec is None:
                continue
            slo = spec.slo.target if spec.slo is not None and spec.slo.metric == "latency" else None
            out.setdefault(s.node_id, {})[s.job] = {
                "sizes": list(replica_sizes(s, spec.replica_cpus)),
                "workload": dict(spec.workload),
                "slo_ms": slo,
            }
            if s.job in knobs:  # an inference job's knob is part of what the plan enforces
                out[s.node_id][s.job]["knob"] = str(knobs[s.job])
        return out

    def prepare(self, epoch: int, desired: dict[str, dict[str, dict[str, Any]]],
                plan: Any) -> dict[str, str]:  # fmt: skip
        """Phase one at every agent; returns the no votes as {"node/participant": reason}."""
        noes: dict[str, str] = {}
        agents = dict(self.agents)
        for nid in desired:
            if nid not in agents:
                noes[f"{nid}/agent"] = "no agent on the node"
        refs = {nid: a.prepare.remote(epoch, desired.get(nid, {}), plan) for nid, a in agents.items()}
        deadline = time.time() + self.prepare_timeout_s
        for nid, ref in refs.items():
            try:
                res = ray.get(ref, timeout=max(0.1, deadline - time.time()))
            except ray.exceptions.GetTimeoutError:
                noes[f"{nid}/agent"] = f"no answer within {self.prepare_timeout_s:g} s"
                continue
            except Exception as exc:  # agent dead or restarting: the plan cannot be applied there
                noes[f"{nid}/agent"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            for who, reason in res.get("votes", {}).items():
                if reason is not None:
                    noes[f"{nid}/{who}"] = str(reason)
        return noes

    def enforce(self, decision: Decision) -> dict[str, Any]:
        epoch = decision.plan.epoch
        desired = self.desired_for(decision)
        summary: dict[str, Any] = {"epoch": epoch, "started": 0, "stopped": 0, "deferred": 0,
                                   "refused": 0, "missing_agent": []}  # fmt: skip
        for nid in desired:
            if nid not in self.agents:
                summary["missing_agent"].append(nid)
        noes = self.prepare(epoch, desired, decision.plan)
        if noes:  # abort everywhere; the last good plan stays in force
            refs = [a.abort.remote(epoch) for a in self.agents.values()]
            for ref in refs:
                with contextlib.suppress(Exception):  # an unreachable agent never committed it
                    ray.get(ref, timeout=self.enforce_timeout_s)
            with self.lock:
                self.ga.abort_plan(epoch, noes)
            self.events.append({"time": time.time(), "kind": "plan_aborted",
                                "subject": f"epoch {epoch}", "epoch": epoch, "votes": noes})  # fmt: skip
            return {**summary, "aborted": True, "votes": noes}
        refs = {nid: a.commit.remote(epoch) for nid, a in self.agents.items()}
        nacks: dict[str, Any] = {}
        for nid, ref in refs.items():
            try:
                res = ray.get(ref, timeout=self.enforce_timeout_s)
            except Exception as exc:  # the make/break phases below retry the replicas' part
                self._event("commit_failed", nid, {"epoch": epoch, "error": str(exc)[:300]})
                continue
            if res.get("errors"):
                self._event("commit_errors", nid, {"epoch": epoch, "errors": res["errors"]})
            for who, why in (res.get("nacks") or {}).items():
                nacks[f"{nid}/{who}"] = why
        if nacks:
            self._commit_nacked(epoch, nacks)
        else:
            self.nack_replans = 0
        for phase in ("make", "break", "make"):
            calls = {nid: a.apply.remote(epoch, desired.get(nid, {}), phase)
                     for nid, a in self.agents.items()}  # fmt: skip
            for nid, ref in calls.items():
                try:
                    res = ray.get(ref, timeout=self.enforce_timeout_s)
                except Exception as exc:  # agent restarting or node dying: next round retries
                    self._event("enforce_failed", nid, {"epoch": epoch, "phase": phase,
                                                        "error": str(exc)[:300]})  # fmt: skip
                    continue
                if res.get("refused"):
                    summary["refused"] += 1
                    continue
                summary["started"] += len(res.get("started", ()))
                summary["stopped"] += len(res.get("stopped", ()))
                if phase == "make":
                    summary["deferred"] += len(res.get("deferred", ()))
                self.reports[nid] = res["report"]
        self.enforced_epoch = epoch
        self._event("enforced", f"epoch {epoch}", summary)
        return summary

    def _commit_nacked(self, epoch: int, nacks: dict[str, Any]) -> None:
        """A device agent refused at commit what prepare let through: that node keeps its last
        good version while the others moved to ``epoch``. Ask for a re-plan at once (the next
        plan is pushed everywhere with a new epoch), once per run of NACKed rounds; if the
        re-plan NACKs again, the regular round retries (no storm of rounds)."""
        replan = self.nack_replans == 0
        self.nack_replans += 1
        self._event("commit_nack", f"epoch {epoch}", {"epoch": epoch, "nacks": nacks,
                                                      "replan": "now" if replan else "next round",
                                                      "consecutive": self.nack_replans})  # fmt: skip
        if replan:
            with self.lock:
                self.ga.request_round(f"commit NACK at epoch {epoch}: {sorted(nacks)}")

    def local_events(self, node_id: str, events: list[dict[str, Any]]) -> None:
        """The NodeAgents' fast layers report what they did (one entry per job per telemetry
        window in which they acted): logged as ``local_actions`` events."""
        now = time.time()
        self.agent_seen[node_id] = now
        rows = []
        for e in events:
            self.events.append({"time": now, "kind": "local_actions", "subject": node_id, **e})
            rows.append({"time": now, "kind": "local_actions", "subject": node_id,
                         "detail": json.dumps(dict(e), sort_keys=True, default=str)})  # fmt: skip
        if rows:  # one log part per report, not one per event
            try:
                self.log.append("events", pa.RecordBatch.from_pylist(rows, schema=EVENT_SCHEMA))
            except OSError:
                log.exception("local events not logged")

    # -- telemetry ---------------------------------------------------------------------
    def ingest(self, node_id: str, table: pa.Table | None, meta: dict[str, Any],
               push: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Admit an agent's windows and buffer them for the next log part; never waits for a round.

        ``push`` = {"agent": token, "id": k, "sync": bool}: the reply's ``durable`` is the
        last push id of that agent whose rows are in a renamed-into-place part, and the agent
        acks windows at their sources only up to it. Without ``push`` (or with ``sync``) the
        rows are written before returning (the agent's stop path and older callers)."""
        now = time.time()
        self.agent_seen[node_id] = now
        if meta:
            self.reports[node_id] = meta
        rows = 0
        fresh = None
        if table is not None and table.num_rows:
            with self.ledger_lock:  # not the allocator's lock: a running round does not block ingest
                fresh = self.ga.ledger.admit(table)
            rows = fresh.num_rows
            if rows:
                lag = now - fresh.column("end").to_numpy()
                with self.lag_lock:
                    self.lag_s.extend(lag.tolist())
        tag = (node_id, str(push["agent"]), int(push["id"])) if push else None
        buffered = self.telemetry.add(fresh, tag)
        if push is None or push.get("sync") or buffered >= self.flush_rows:
            self.flush_telemetry()
        return {"ok": True, "rows": rows, "incarnation": self.incarnation,
                "durable": self.durable_push(node_id, push)}  # fmt: skip

    def ingest_partials(self, node_id: str, items: list[tuple[str, Any, dict[str, int]]],
                        meta: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Agent-log mode: an agent's partial per-(job, window) sums of windows it de-duplicated
        and logged itself, one entry per log part (name, JobWindows or None, ledger counts).
        Parts already learned (re-sent, or replayed from the log at start) are dropped."""
        now = time.time()
        self.agent_seen[node_id] = now
        if meta:
            self.reports[node_id] = meta
        new = []
        with self.ledger_lock:
            for part, jw, stats in items:
                if part in self.learned_parts:
                    continue
                self.learned_parts.add(part)
                led = self.ga.ledger
                led.received += int(stats.get("received", 0))
                led.duplicates += int(stats.get("duplicates", 0))
                led.lost += int(stats.get("lost", 0))
                if jw is not None and len(jw):
                    new.append((part, jw))
            for name, mark in (meta or {}).get("marks", {}).items():
                self.replica_marks[name] = max(int(mark), self.replica_marks.get(name, -1))
        windows = 0
        if new:
            lag = np.concatenate([np.repeat(now - jw.end, jw.replicas) for _, jw in new])
            with self.lag_lock:
                self.lag_s.extend(lag.tolist())
            with self.lock:
                for _, jw in new:
                    windows += self.ga.ingest_partials(jw, settle=False)
                self.ga.settle()
                self.ingested_rows += windows
            self._learn_knobs(new)
        return {"ok": True, "windows": windows, "incarnation": self.incarnation}

    def _learn_knobs(self, parts: list[tuple[str, Any]]) -> int:
        """Agent-log mode: the knob models learn the inference rows of the agents' new parts
        (partial sums carry no knob, execution times or accuracy; the logged rows do). Without
        knob models (no inference job) nothing runs; a part holding no inference job is not
        read; files are read outside the allocator's lock, the models learn under it (a round
        reads them). Returns rows learned."""
        km = self.knob_models
        names = [p for p, jw in parts if km.learns_any(jw.job.tolist())] if km else []
        if not names:
            return 0
        tables = km.read_logged(self.log, names)
        with self.lock:
            return sum(km.learn(t) for t in tables)

    def durable_push(self, node_id: str, push: dict[str, Any] | None) -> int:
        if not push:
            return -1
        agent, k = self.durable.get(node_id, ("", -1))
        return k if agent == str(push["agent"]) else -1

    def flush_telemetry(self) -> int:
        """Write the buffered windows as one part, mark their pushes durable, then learn them."""
        table, tags = self.telemetry.flush()
        for nid, agent, k in tags:  # pushes from one agent arrive in order (it waits per push)
            prev_agent, prev = self.durable.get(nid, ("", -1))
            self.durable[nid] = (agent, max(k, prev) if prev_agent == agent else k)
        if table is None:
            return 0
        with self.lock:
            self.ga.ingest_batch(table, admitted=True)
            self.knob_models.learn(table)  # inference jobs: knob in force, memory, accuracy
            self.ingested_rows += table.num_rows
        return table.num_rows

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush_telemetry()
            except Exception as exc:  # rows stay buffered and unacked; the next flush retries
                self.last_error = f"telemetry flush: {type(exc).__name__}: {exc}"
                log.exception("telemetry flush")

    def lag_stats(self, reset: bool = False) -> dict[str, float]:
        with self.lag_lock:
            lag = np.asarray(self.lag_s)
            if reset:
                self.lag_s.clear()
        if not len(lag):
            return {"n": 0, "p50_ms": math.nan, "p99_ms": math.nan}
        return {"n": len(lag), "p50_ms": float(np.percentile(lag, 50) * 1e3),
                "p99_ms": float(np.percentile(lag, 99) * 1e3)}  # fmt: skip

    # -- ControlPlane ------------------------------------------------------------------
    def status(self) -> Any:
        with self.lock:
            ga = self.ga
            plan = ga.plan
            jobs = []
            for spec in ga.jobs:
                fb = ga.feedback_of(spec.name)
                shares = plan.for_job(spec.name) if plan else ()
                amount = ga.last.get(spec.name).as_dict(nonzero=True) if ga.last else {}
                util = (float(utility_from_reward(fb.reward, spec.reward_threshold,
                                                  spec.utility.scaling))
                        if not math.isnan(fb.reward) else math.nan)  # fmt: skip
                met = None
                if spec.slo is not None and not math.isnan(fb.reward):
                    met = bool(fb.reward >= spec.reward_threshold - 1e-9)
                jobs.append(JobStatus(
                    name=spec.name, kind=str(spec.kind), weight=spec.weight, priority=spec.priority,
                    allocation=amount, replicas=sum(s.replicas for s in shares),
                    nodes=tuple(sorted({s.node_id for s in shares})), load_rps=fb.load,
                    p99_ms=fb.p99_ms, reward=fb.reward, utility=util,
                    slo_target=spec.slo.target if spec.slo else None, slo_met=met,
                ))  # fmt: skip
            usage = plan.node_usage() if plan else {}
            nodes = []
            caps = {n.node_id: n for n in ga.nodes}
            for nid in sorted(set(self.alive) | self.dead_nodes):
                cap = caps.get(nid)
                nodes.append(NodeStatus(
                    node_id=nid, alive=nid in self.alive, draining=nid in ga.draining,
                    capacity=cap.capacity.as_dict(nonzero=True) if cap else {},
                    used=usage[nid].as_dict(nonzero=True) if nid in usage else {},
                    agent_ok=nid in self.agents and time.time() - self.agent_seen.get(nid, 0) < 10,
                ))  # fmt: skip
            c = ga.counters
            return Status(
                policy=ga.policy.name, shadow=ga.shadow, round=ga.round, epoch=ga.epoch,
                time=time.time(), next_round_in_s=max(0.0, ga.next_round_at - time.time()),
                jobs=tuple(jobs), nodes=tuple(nodes), telemetry_windows=c["windows"],
                lost_windows=c["lost"], log_uri=self.config.log_uri,
            )  # fmt: skip

    def submit(self, spec: JobSpec) -> None:
        with self.lock:
            self.ga.submit(spec)

    def remove(self, name: str) -> None:
        with self.lock:
            self.ga.remove(name)

    def drain(self, node_id: str) -> None:
        if node_id not in self.alive:
            raise KeyError(node_id)
        with self.lock:
            self.ga.drain(node_id)

    def explain(self, job: str) -> Explanation:
        with self.lock:
            return self.ga.explain(job)

    def policies(self) -> tuple[PolicyInfo, ...]:
        return list_policies()

    # -- helpers -----------------------------------------------------------------------
    def endpoints(self, job: str) -> list[str]:
        """Replica names of ``job`` that the agents report running (for load generators)."""
        out = []
        for nid, rep in list(self.reports.items()):
            if nid not in self.alive:
                continue
            out.extend(n for n, i in rep.get("replicas", {}).items() if i.get("job") == job)
        return sorted(out)

    def _event(self, kind: str, subject: str, detail: dict[str, Any]) -> None:
        self.events.append({"time": time.time(), "kind": kind, "subject": subject, **detail})
        try:
            self.log.append_event(time.time(), kind, subject, detail)
        except OSError:
            log.exception("event not logged")


@ray.remote(num_cpus=0, max_concurrency=32, max_restarts=-1)
class Controller:
    """The Ray actor: a thin wrapper; every method runs on the actor's thread pool. Restarted by
    Ray when it dies (its node died, or it was killed), it resumes from the log at once."""

    def __init__(self, config: ManagerConfig, options: dict[str, Any] | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self.core = ControllerCore(config, **(options or {}))
        with warnings.catch_warnings():  # Ray's property reads a deprecated field internally
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:  # Ray restarted us: resume from the log without waiting to be told
            self.core.start()

    def start(self) -> dict[str, Any]:
        return self.core.start()

    def shutdown(self) -> int:
        return self.core.shutdown()

    def ingest(self, node_id: str, table: pa.Table | None, meta: dict[str, Any],
               push: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        return self.core.ingest(node_id, table, meta, push)

    def status(self) -> Status:
        return self.core.status()

    def submit(self, spec: JobSpec) -> None:
        self.core.submit(spec)

    def remove(self, name: str) -> None:
        self.core.remove(name)

    def drain(self, node_id: str) -> None:
        self.core.drain(node_id)

    def explain(self, job: str) -> Explanation:
        return self.core.explain(job)

    def policies(self) -> tuple[PolicyInfo, ...]:
        return self.core.policies()

    def endpoints(self, job: str) -> list[str]:
        return self.core.endpoints(job)

    def plan(self) -> dict[str, Any] | None:
        with self.core.lock:
            return self.core.ga.plan.to_dict() if self.core.ga.plan else None

    def info(self) -> dict[str, Any]:
        c = self.core
        with c.lock:
            counters = c.ga.counters
            return {
                "round": c.ga.round, "epoch": c.ga.epoch, "rounds_done": c.rounds_done,
                "enforced_epoch": c.enforced_epoch, "agents": sorted(c.agents),
                "alive": sorted(c.alive), "dead": sorted(c.dead_nodes),
                "counters": counters, "ingested_rows": c.ingested_rows,
                "last_error": c.last_error, "reports": c.reports,
                "events": list(c.events)[-50:], "restored_windows": c.restored,
                "incarnation": c.incarnation, "cpu_s": time.process_time(),
                "agent_log": c.agent_log,
                "node_id": ray.get_runtime_context().get_node_id(),
                "last_decision_ms": c.ga.last_decision.decision_ms if c.ga.last_decision else None,
            }  # fmt: skip

    def lag_stats(self, reset: bool = False) -> dict[str, float]:
        return self.core.lag_stats(reset)

    def ingest_partials(self, node_id: str, items: list[tuple[str, Any, dict[str, int]]],
                        meta: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        return self.core.ingest_partials(node_id, items, meta)

    def marks(self, replicas: list[str]) -> dict[str, int]:
        """The last window ``seq`` received from each replica (-1: none yet)."""
        c = self.core
        with c.ledger_lock:
            return {r: max(c.ga.ledger.mark(r), c.replica_marks.get(r, -1)) for r in replicas}

    def local_events(self, node_id: str, events: list[dict[str, Any]]) -> None:
        self.core.local_events(node_id, events)

    def request_round(self) -> None:
        with self.core.lock:
            self.core.ga.request_round("requested")

    def admin_address(self) -> str:
        return self.core.admin_address
