"""NodeAgent: one Ray actor per alive node; collects its replicas' telemetry and enforces plans.

Telemetry: every ``push_period_s`` the agent takes the closed windows of every
telemetry source on its node (its replicas, plus any registered source) that
come after the last entry it pushed, pushes them to the controller as one
Arrow table (push id k), and acks them at the sources only once a controller
reply says push k is durable (in a log part renamed into place; the
controller writes one part per flush interval, so that is usually the next
push's reply). A failed push, or a reply from a new controller incarnation,
rewinds to the last ack and re-sends; the controller drops duplicates. A restarted agent
(Ray restarts it: ``max_restarts=-1``) finds its replicas by name, takes
everything they still hold, and the controller drops what it had already:
zero windows lost to an agent restart.

Enforcement: ``apply(epoch, desired, phase)`` brings the node to its part of a
PlacementPlan. Each replica has its own single-bundle placement group pinned
to this node (label ``ray.io/node-id``) holding exactly the replica's CPUs, so
the node's reservations add up to the plan. ``phase="make"`` starts missing
replicas (a placement group that cannot be reserved in time, because the
node is still full, is deferred); ``phase="break"`` stops surplus replicas
after handing over their last windows. The controller runs make, break, make
over all agents: moves are make-before-break whenever there is room. Plans
with an older epoch than one already applied are refused.

Two-phase apply (actors/participants.py): before any of that, the controller
sends ``prepare(epoch, desired, plan)`` to every agent; the agent asks its
participants, the node's replicas (built in: sizes within the node's CPUs,
valid workload models) and every registered PlanParticipant (device agents,
constructed inside this process from ``participants`` options or registered
with ``register_participant``), each within ``prepare_timeout_s``, and returns
their votes. Only if every vote on every node is yes does the controller send
``commit(epoch)`` and then the make/break/make phases; otherwise ``abort(epoch)``
goes everywhere and the last good plan stays in force. An epoch older than one
the agent has seen is refused in every phase (a controller thought dead cannot
apply an old plan), and an aborted epoch can never be applied.

Replicas and their placement groups are detached named actors, so they
outlive an agent restart; the controller removes them on shutdown. The data
plane does not depend on the agent: while it is down (or restarting) the
replicas keep serving under the last plan; only telemetry waits (unacked
windows stay at the replicas) and plan changes wait.
"""

from __future__ import annotations

import importlib
import threading
import time
import uuid
from collections import Counter, deque
from contextlib import suppress
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.inference.serving import check_knob
from actors.names import CONTROLLER, new_replica_name, pg_name, replica_prefix
from actors.participants import PlanParticipant
from actors.replica import Replica, draw_service_s
from actors.window_buffer import WindowBuffer
from cluster_mgr.feedback import TelemetryLedger, aggregate
from cluster_mgr.model import FAST_WINDOW_S, TELEMETRY_WINDOW_S, PlacementPlan
from cluster_mgr.store import RunLog
from cluster_mgr.telemetry import windows_to_batch

SIZE_TOL = 1e-6
OUTBOX_MAX = 600  # partial sums waiting for a controller (5 min of pushes); their rows are logged


def _concat(tables: list[pa.Table]) -> pa.Table:
    # chunked, not combined: combining copied every push (~7 MB at 14,000 windows) for nothing,
    # Ray serialises a chunked table as it is
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def make_participant(spec: dict[str, Any]) -> PlanParticipant:
    """A participant from options: ``{"factory": "module:Callable", "options": {...}}``; the
    callable is called with the options as keyword arguments."""
    module, _, attr = str(spec["factory"]).partition(":")
    if not module or not attr:
        raise ValueError(f"participant factory must be 'module:Callable', got {spec['factory']!r}")
    factory = getattr(importlib.import_module(module), attr)
    return factory(**dict(spec.get("options") or {}))


class LocalSource:
    """Telemetry of a participant living in this process, kept like a replica's: windows are
    numbered here (one identity per participant per agent incarnation, ``seq`` from 0), so the
    controller's dedupe and loss counting stay exact whatever the participant reports."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.buffer = WindowBuffer(max_rows=10_000)
        self.seq = 0

    def put(self, windows: list[Any]) -> None:
        rows = []
        for w in windows:
            rows.append(replace(w, replica=self.replica, seq=self.seq))
            self.seq += 1
        if rows:
            self.buffer.put(windows_to_batch(rows))

    def take(self, after: int = -1) -> tuple[pa.Table | None, int]:
        batches, last = self.buffer.take(after)
        return (pa.Table.from_batches(batches) if batches else None), last

    def ack(self, upto: int) -> int:
        return self.buffer.ack(upto)


class NodeAgentCore:
    """The agent's logic (a threaded Ray actor wraps it; all Ray calls are blocking)."""

    def __init__(
        self,
        node_id: str,
        namespace: str,
        *,
        window_s: float = TELEMETRY_WINDOW_S,
        fast_window_s: float = FAST_WINDOW_S,
        push_period_s: float = 0.5,
        start_timeout_s: float = 60.0,
        reserve_timeout_s: float = 10.0,
        prepare_timeout_s: float = 10.0,
        participants: list[dict[str, Any]] | None = None,
        log_uri: str = "",
        aggregate: bool = False,
        local_control: dict[str, Any] | None = None,
    ) -> None:
        self.node_id = node_id
        self.namespace = namespace
        self.window_s, self.fast_window_s = window_s, fast_window_s
        self.push_period_s = push_period_s
        self.start_timeout_s = start_timeout_s
        self.reserve_timeout_s = reserve_timeout_s
        self.prepare_timeout_s = prepare_timeout_s
        self.epoch = -1  # the newest epoch seen (prepare or apply): older ones are refused
        self.committed = -1  # the last epoch put in force
        self.staged: dict[int, dict[str, dict[str, Any]]] = {}  # epoch -> this node's desired
        self.aborted: set[int] = set()
        self.participants: dict[str, PlanParticipant] = {}
        self.local: dict[str, LocalSource] = {}  # "participant:<name>" -> its telemetry
        self.started_at = time.time()
        self.node_cpu = next((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes()
                              if n["NodeID"] == node_id), 0.0)  # fmt: skip
        self.lock = threading.RLock()
        self.push_lock = threading.Lock()  # one push at a time: cursors advance in order
        self.replicas: dict[str, Any] = {}  # name -> actor handle
        self.infos: dict[str, dict[str, Any]] = {}  # name -> Replica.info()
        self.sources: dict[str, Any] = {}  # extra telemetry sources (benchmarks)
        self.cursor: dict[str, int] = {}  # source name -> last entry acked (durable at the controller)
        self.taken: dict[str, int] = {}  # source name -> last entry pushed (maybe not durable yet)
        # pushes whose windows are not yet in a log part: (push id, source -> last entry)
        self._unacked: deque[tuple[int, dict[str, int]]] = deque()
        self._push_id = 0
        self.token = uuid.uuid4().hex[:12]  # this incarnation of the agent (push ids restart)
        self._incarnation: str | None = None  # the controller's, from its replies
        self.pushed_rows = 0
        self.pushes = 0
        self.push_failures = 0
        self.restarted = False
        self._controller: Any = None
        self._stop = threading.Event()
        # agent-log mode (``aggregate`` with a ``log_uri``): this agent de-duplicates and logs
        # its node's replica windows itself and sends the controller partial sums
        self.run_log: RunLog | None = None
        self.ledger: TelemetryLedger | None = None
        self._outbox: deque[tuple[str, Any, dict[str, int]]] = deque()
        self.outbox_dropped = 0
        if aggregate and log_uri:
            self.run_log = RunLog(log_uri, writer=f"agent-{node_id[:8]}-{self.token}")
            self.ledger = TelemetryLedger()
            self.ledger.seed(self.run_log.replica_marks(node_id))  # what is logged already
        self._discover()
        for spec in participants or ():
            made = make_participant(spec)
            if made is not None:  # a factory may find no such device on this node (devices.py)
                self.register_participant(made)
        # the node's fast layer (actors/local_host.py): a LocalController on the fast window
        self.local_host: Any = None
        lc = dict(local_control or {})
        if lc and lc.get("controller", "ours") != "none":
            from actors.local_host import LocalHost

            self.local_host = LocalHost(self, lc)
            self.local["local-control"] = LocalSource(f"{replica_prefix(node_id)}local:{self.token}")

    # -- discovery ---------------------------------------------------------------------
    def _discover(self) -> None:
        """Find replicas started on this node before a restart (they are detached and named)."""
        prefix = replica_prefix(self.node_id)
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == self.namespace and a["name"].startswith(prefix)
        ]
        for name in names:
            try:
                h = ray.get_actor(name, namespace=self.namespace)
                info = ray.get(h.info.remote(), timeout=30)
            except Exception:  # a replica that died meanwhile: nothing to adopt
                continue
            self.replicas[name] = h
            self.infos[name] = info
        self.restarted = bool(self.replicas)

    def controller(self) -> Any:
        if self._controller is None:
            self._controller = ray.get_actor(CONTROLLER, namespace=self.namespace)
        return self._controller

    # -- telemetry ---------------------------------------------------------------------
    def register_source(self, name: str) -> None:
        with self.lock:
            self.sources[name] = ray.get_actor(name, namespace=self.namespace)

    def _all_sources(self) -> dict[str, Any]:
        with self.lock:
            return {**self.replicas, **self.sources, **self.local}

    # -- participants ------------------------------------------------------------------
    def register_participant(self, participant: PlanParticipant) -> str:
        """Add a plan participant (a local object, e.g. a device agent's client). It votes on
        every plan from the next prepare on; its telemetry goes out with the node's."""
        name = str(participant.name)
        if name in ("replicas", "agent"):
            raise ValueError(f"participant name {name!r} is the agent's own")
        with self.lock:
            if name in self.participants:
                raise ValueError(f"participant {name!r} already registered on {self.node_id}")
            self.participants[name] = participant
            self.local[f"participant:{name}"] = LocalSource(
                f"{replica_prefix(self.node_id)}participant.{name}:{self.token}")
        return name

    def unregister_participant(self, name: str) -> bool:
        with self.lock:
            p = self.participants.pop(name, None)
        if p is None:
            return False
        with suppress(Exception):  # a participant that fails to close is gone anyway
            p.close()
        return True

    def _poll_participants(self) -> None:
        now = time.time()
        with self.lock:
            items = list(self.participants.items())
        for name, p in items:
            try:
                windows = p.telemetry(now)
            except Exception:  # a failing device does not stop the node's telemetry
                self.push_failures += 1
                continue
            src = self.local.get(f"participant:{name}")
            if src is not None:
                src.put(list(windows or ()))
        if self.local_host is not None:  # the fast layer's local.* windows
            self.local["local-control"].put(self.local_host.take_telemetry())

    def _prepare_replicas(self, desired: dict[str, dict[str, Any]]) -> str | None:
        """The replicas' vote: every size positive, the node's total within its CPUs, every
        workload model valid (a replica would refuse to start otherwise)."""
        total = 0.0
        for job, spec in desired.items():
            sizes = [float(x) for x in spec.get("sizes", ())]
            if any(x <= 0 for x in sizes):
                return f"job {job}: replica sizes must be > 0, got {sizes}"
            total += sum(sizes)
            try:
                draw_service_s(dict(spec.get("workload", {})), np.random.default_rng(0))
            except (ValueError, TypeError) as exc:
                return f"job {job}: workload: {exc}"
            bad_knob = check_knob(dict(spec.get("workload", {})), spec.get("knob"))
            if bad_knob is not None:
                return f"job {job}: knob: {bad_knob}"
        if self.node_cpu and total > self.node_cpu + SIZE_TOL:
            return f"replicas need {total:.1f} CPU, the node has {self.node_cpu:.1f}"
        return None

    def prepare(self, epoch: int, desired: dict[str, dict[str, Any]],
                plan: PlacementPlan | None = None) -> dict[str, Any]:  # fmt: skip
        """Phase one: every participant validates and stages its part; nothing changes in force.

        Returns ``{"votes": {participant: None (yes) | reason}, ...}``. A participant that does
        not answer within ``prepare_timeout_s`` votes no (its thread is left to finish)."""
        with self.lock:
            if epoch < self.epoch or epoch in self.aborted:
                why = "aborted" if epoch in self.aborted else f"older than epoch {self.epoch}"
                return {"node_id": self.node_id, "epoch": epoch, "refused": True,
                        "votes": {"agent": f"epoch {epoch} is {why}"}}  # fmt: skip
            self.epoch = epoch
            items = list(self.participants.items())
        votes: dict[str, str | None] = {"replicas": self._prepare_replicas(desired)}
        results: dict[str, str | None] = {}

        def ask(name: str, p: PlanParticipant) -> None:
            try:
                r = p.prepare(plan, self.node_id) if plan is not None else None
                results[name] = None if r is None else str(r)
            except Exception as exc:  # a participant that fails to prepare says no
                results[name] = f"{type(exc).__name__}: {exc}"

        threads = {name: threading.Thread(target=ask, args=(name, p), daemon=True,
                                          name=f"prepare-{name}") for name, p in items}  # fmt: skip
        for t in threads.values():
            t.start()
        deadline = time.time() + self.prepare_timeout_s
        for name, t in threads.items():
            t.join(max(0.0, deadline - time.time()))
            votes[name] = results.get(name, f"no answer within {self.prepare_timeout_s:g} s")
        with self.lock:
            self.staged[epoch] = desired
            for old in [e for e in self.staged if e < epoch]:
                self.staged.pop(old)
        return {"node_id": self.node_id, "epoch": epoch, "refused": False, "votes": votes}

    def commit(self, epoch: int) -> dict[str, Any]:
        """Phase two: put the staged plan in force at every participant (the replicas follow in
        the controller's make/break/make phases, which need every node's make before any break)."""
        with self.lock:
            if epoch < self.epoch or epoch in self.aborted or epoch not in self.staged:
                return {"node_id": self.node_id, "epoch": epoch, "refused": True}
            self.committed = epoch
            items = list(self.participants.items())
            desired = self.staged[epoch]
        errors = {}
        nacks = {}
        for name, p in items:
            try:
                p.commit(epoch)
            except Exception as exc:  # reported; the controller records it
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            last = getattr(p, "last_commit", None)  # a device agent that refused the push
            if last is not None and last.epoch == epoch and not last.ok:
                nacks[name] = {"reason": str(last.reason)[:300], "version": str(last.version)}
        if self.local_host is not None:  # the fast layer's budget for this round
            self.local_host.set_budget(epoch, desired)
        return {"node_id": self.node_id, "epoch": epoch, "refused": False, "errors": errors,
                "nacks": nacks}  # fmt: skip

    def abort(self, epoch: int) -> dict[str, Any]:
        """Drop what was staged for ``epoch`` everywhere; the last committed plan stays."""
        with self.lock:
            self.aborted.add(epoch)
            self.staged.pop(epoch, None)
            items = list(self.participants.items())
        errors = {}
        for name, p in items:
            try:
                p.abort(epoch)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
        return {"node_id": self.node_id, "epoch": epoch, "errors": errors}

    def collect_once(self, only: tuple[str, ...] | None = None) -> int:
        """Take, push, ack what is durable; returns rows the controller admitted.

        Safe to call concurrently. ``only`` (the stop path) pushes just those sources and
        asks the controller to write them before replying, so their windows are acked
        before the replicas are killed."""
        with self.push_lock:
            sources = self._all_sources()
            if only is not None:
                sources = {k: v for k, v in sources.items() if k in only}
            if only is None:
                self._poll_participants()
            refs = {name: h.take(self.taken.get(name, self.cursor.get(name, -1)))
                    if isinstance(h, LocalSource) else
                    h.take.remote(self.taken.get(name, self.cursor.get(name, -1)))
                    for name, h in sources.items()}  # fmt: skip
            tables, lasts = [], {}
            for name, ref in refs.items():
                try:
                    table, last = ref if isinstance(ref, tuple) else ray.get(
                        ref, timeout=max(5.0, 4 * self.push_period_s))  # fmt: skip
                except ray.exceptions.RayActorError:
                    self._forget(name)  # died with its node or was stopped
                    continue
                except ray.exceptions.GetTimeoutError:
                    continue  # busy source: next cycle
                if table is not None and table.num_rows:
                    tables.append(table)
                lasts[name] = last
            if self.ledger is not None:
                return self._push_logged(tables, lasts)
            table = _concat(tables) if tables else None
            meta = self.report()
            self._push_id += 1
            push = {"agent": self.token, "id": self._push_id, "sync": only is not None}
            try:
                reply = ray.get(self.controller().ingest.remote(self.node_id, table, meta, push),
                                timeout=60)  # fmt: skip
            except Exception:
                self.push_failures += 1
                self._controller = None  # look the controller up again next time
                self._rewind()
                return 0
            if reply.get("incarnation") != self._incarnation:
                # a new controller: what the old one had not logged is gone with it, so
                # re-send from the last ack (it drops what its replayed log already has)
                first = self._incarnation is None
                self._incarnation = reply.get("incarnation")
                if not first:
                    self._rewind()
                    return int(reply.get("rows", 0))
            for name, last in lasts.items():
                self.taken[name] = max(last, self.taken.get(name, -1))
            self._unacked.append((self._push_id, lasts))
            self._ack_durable(int(reply.get("durable", -1)))
            rows = table.num_rows if table is not None else 0
            self.pushed_rows += rows
            self.pushes += 1
            return int(reply.get("rows", rows))

    def _push_logged(self, tables: list[pa.Table], lasts: dict[str, int]) -> int:
        """Agent-log mode (under ``push_lock``): drop windows seen before (marks seeded from the
        log at start, so also across a restart), write the new ones as one log part under this
        agent's writer id (renamed into place: durable), ack them at their sources at once, then
        send the controller their per-(job, window) partial sums keyed by the part's name, with
        the ledger's counts. Partials not confirmed are re-sent with the next push; the
        controller drops parts it has already learned (also those it replayed from the log)."""
        assert self.ledger is not None and self.run_log is not None
        ledger = self.ledger
        if tables:
            state = ledger.checkpoint()
            before = (ledger.received, ledger.duplicates, ledger.lost)
            fresh = ledger.admit(_concat(tables))
            try:
                path = self.run_log.append("telemetry", fresh) if fresh.num_rows else None
            except Exception:  # not durable: the sources keep the windows, the marks go back
                ledger.rollback(state)
                self.push_failures += 1
                return 0
            stats = {"received": ledger.received - before[0],
                     "duplicates": ledger.duplicates - before[1], "lost": ledger.lost - before[2]}  # fmt: skip
            if path is not None:
                self._outbox.append((path.rsplit("/", 1)[-1], aggregate(fresh, self.window_s), stats))
            elif stats["duplicates"] or stats["lost"]:
                self._outbox.append((f"{self.token}:nolog:{self._push_id}", None, stats))
        handles = self._all_sources()
        for name, last in lasts.items():
            self.taken[name] = max(last, self.taken.get(name, -1))
            if last > self.cursor.get(name, -1) and name in handles:
                self.cursor[name] = last
                h = handles[name]
                h.ack(last) if isinstance(h, LocalSource) else h.ack.remote(last)
        while len(self._outbox) > OUTBOX_MAX:  # no controller for minutes: learned on replay
            self._outbox.popleft()
            self.outbox_dropped += 1
        meta = self.report()
        with self.lock:
            meta["marks"] = {n: ledger.mark(n) for n in self.infos}
        self._push_id += 1
        items = list(self._outbox)
        try:
            reply = ray.get(self.controller().ingest_partials.remote(self.node_id, items, meta),
                            timeout=60)  # fmt: skip
        except Exception:
            self.push_failures += 1
            self._controller = None
            return 0
        for _ in items:
            self._outbox.popleft()
        self._incarnation = reply.get("incarnation")
        rows = sum(int(s["received"]) for _, _, s in items)
        self.pushed_rows += rows
        self.pushes += 1
        return rows

    def _rewind(self) -> None:
        """Forget what was taken but not acked: the next take starts at the last ack."""
        self.taken = dict(self.cursor)
        self._unacked.clear()

    def _ack_durable(self, durable: int) -> None:
        """Ack at the sources every entry of pushes the controller has in a log part."""
        upto: dict[str, int] = {}
        while self._unacked and self._unacked[0][0] <= durable:
            _, lasts = self._unacked.popleft()
            for name, last in lasts.items():
                upto[name] = max(last, upto.get(name, -1))
        handles = self._all_sources()
        for name, last in upto.items():
            if last > self.cursor.get(name, -1) and name in handles:
                self.cursor[name] = last
                h = handles[name]
                h.ack(last) if isinstance(h, LocalSource) else h.ack.remote(last)

    def _forget(self, name: str) -> None:
        with self.lock:
            self.replicas.pop(name, None)
            self.infos.pop(name, None)
            self.sources.pop(name, None)
            self.cursor.pop(name, None)
            self.taken.pop(name, None)

    def run(self) -> None:
        """The collection loop (its own thread): one take-push-ack cycle per push period."""
        while not self._stop.is_set():
            started = time.time()
            try:
                self.collect_once()
            except Exception:  # never let one bad cycle end telemetry for the node
                self.push_failures += 1
            self._stop.wait(max(0.0, self.push_period_s - (time.time() - started)))

    def stop(self) -> None:
        self._stop.set()

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {
                "node_id": self.node_id,
                "epoch": self.epoch,
                "committed": self.committed,
                "participants": sorted(self.participants),
                "started_at": self.started_at,
                "cpu_s": time.process_time(),  # this agent process's CPU time (benchmarks)
                "replicas": {n: dict(i) for n, i in self.infos.items()},
                "sources": sorted(self.sources),
                "pushed_rows": self.pushed_rows,
                "pushes": self.pushes,
                "push_failures": self.push_failures,
                "restarted": self.restarted,
                "time": time.time(),
            }

    # -- enforcement -------------------------------------------------------------------
    def _diff(self, desired: dict[str, dict[str, Any]]) -> tuple[list[tuple[str, float]], list[str]]:
        """(replicas to start as (job, size), replica names to stop): sizes matched as multisets,
        so every replica whose size the plan keeps stays untouched."""
        with self.lock:
            have: dict[str, list[tuple[str, float]]] = {}
            for name, info in self.infos.items():
                have.setdefault(info["job"], []).append((name, float(info["size"])))
        start: list[tuple[str, float]] = []
        stop: list[str] = []
        for job in sorted(have.keys() | desired.keys()):
            want = Counter(round(s, 6) for s in desired.get(job, {}).get("sizes", ()))
            for name, size in sorted(have.get(job, ())):
                key = round(size, 6)
                if want.get(key, 0) > 0:
                    want[key] -= 1
                else:
                    stop.append(name)
            for size, n in sorted(want.items()):
                start.extend([(job, size)] * n)
        return start, stop

    def apply(self, epoch: int, desired: dict[str, dict[str, Any]], phase: str) -> dict[str, Any]:
        with self.lock:
            if epoch < self.epoch or epoch in self.aborted:
                return {"refused": True, "epoch": self.epoch, "node_id": self.node_id}
            self.epoch = epoch
        start, stop = self._diff(desired)
        out: dict[str, Any] = {"node_id": self.node_id, "epoch": epoch, "refused": False}
        if phase == "make":
            started, deferred = self._start(start, desired)
            out.update(started=started, deferred=deferred, knobs=self._apply_knobs(desired))
        elif phase == "break":
            out.update(stopped=self._stop_replicas(stop))
        else:
            raise ValueError(f"phase must be 'make' or 'break', got {phase!r}")
        out["report"] = self.report()
        return out

    def _start(
        self, todo: list[tuple[str, float]], desired: dict[str, dict[str, Any]]
    ) -> tuple[list[str], list[tuple[str, float]]]:
        if not todo:
            return [], []
        pending = []
        for job, size in todo:
            name = new_replica_name(self.node_id, job)
            pg = placement_group(
                [{"CPU": size}],
                strategy="STRICT_PACK",
                name=pg_name(name),
                lifetime="detached",
                bundle_label_selector=[{"ray.io/node-id": self.node_id}],
            )
            pending.append((job, size, name, pg))
        refs = [p[3].ready() for p in pending]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.reserve_timeout_s)
        reserved = set(ready)
        started_refs, deferred = [], []
        for (job, size, name, pg), ref in zip(pending, refs, strict=True):
            if ref not in reserved:
                remove_placement_group(pg)  # no room yet (the node frees it in the break phase)
                deferred.append((job, size))
                continue
            spec = desired[job]
            h = Replica.options(
                name=name,
                namespace=self.namespace,
                lifetime="detached",
                num_cpus=size,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
            ).remote(job, name, _with_knob(spec), spec.get("slo_ms"), size,
                     self.window_s, self.fast_window_s, hash(name) & 0xFFFF)  # fmt: skip
            started_refs.append((name, h, h.ready.remote(), pg))
        started = []
        for name, h, ref, pg in started_refs:
            try:
                info = ray.get(ref, timeout=self.start_timeout_s)
            except Exception:
                ray.kill(h)
                remove_placement_group(pg)
                deferred.append((self._job_of(name), 0.0))
                continue
            with self.lock:
                self.replicas[name] = h
                self.infos[name] = info
            started.append(name)
        return started, deferred

    def _apply_knobs(self, desired: dict[str, dict[str, Any]]) -> list[str]:
        """The plan's knob on every running replica of an inference job that has another one
        (replicas started by this plan got it at start); returns the replicas switched."""
        with self.lock:
            todo = [(n, self.replicas[n], desired[i["job"]]["knob"]) for n, i in self.infos.items()
                    if desired.get(i["job"], {}).get("knob") not in (None, i.get("knob"))]  # fmt: skip
        refs = [h.set_inference_knob.remote(k) for _, h, k in todo]
        infos = ray.get(refs, timeout=self.start_timeout_s) if refs else []
        with self.lock:
            for (name, _, _), info in zip(todo, infos, strict=True):
                self.infos[name] = info
        return [n for n, _, _ in todo]

    @staticmethod
    def _job_of(name: str) -> str:
        return name.split(":")[3]

    def _stop_replicas(self, names: list[str]) -> list[str]:
        if not names:
            return []
        with self.lock:
            handles = {n: self.replicas[n] for n in names if n in self.replicas}
        # hand over the open window, then push what the replicas hold, then stop them
        ray.wait([h.flush.remote() for h in handles.values()], num_returns=len(handles), timeout=10)
        try:
            self.collect_once(only=tuple(handles))
        except Exception:  # the windows stay unacked; a seq gap will record them as lost
            self.push_failures += 1
        for name, h in handles.items():
            ray.kill(h, no_restart=True)
            with suppress(ValueError):  # already gone
                remove_placement_group(ray.util.get_placement_group(pg_name(name)))
            self._forget(name)
        return list(handles)

    def set_job_knobs(
        self,
        job: str,
        cpu: float | None = None,
        concurrency: int | None = None,
        frequency: float | None = None,
    ) -> list[dict[str, Any]]:
        """Fast path: the job's CPU on this node (split over its replicas, each capped by its
        bundle), per-replica concurrency and frequency; no process starts."""
        with self.lock:
            mine = [(n, self.replicas[n]) for n, i in self.infos.items() if i["job"] == job]
        if not mine:
            return []
        per = None if cpu is None else cpu / len(mine)
        infos = ray.get([h.set_knobs.remote(concurrency, per, frequency) for _, h in mine])
        with self.lock:
            for (name, _), info in zip(mine, infos, strict=True):
                self.infos[name] = info
        return infos

    def device_info(self) -> dict[str, Any]:
        """What the node's device participants have in force (tests, status)."""
        out: dict[str, Any] = {}
        with self.lock:
            items = list(self.participants.items())
        for name, p in items:
            d: dict[str, Any] = {}
            last = getattr(p, "last_commit", None)
            if last is not None:
                d["last_commit"] = {"epoch": last.epoch, "ok": last.ok, "version": last.version,
                                    "reason": last.reason}  # fmt: skip
            if hasattr(p, "listener"):
                d["listener"] = p.listener
            if hasattr(p, "assignments"):
                d["assignments"] = {j: {"cpu": a.cpu, "pim": list(a.pim), "pages": list(a.pages)}
                                    for j, a in p.assignments().items()}  # fmt: skip
            out[name] = d
        return out

    def shutdown_replicas(self) -> int:
        with self.lock:
            names = list(self.replicas)
        return len(self._stop_replicas(names))

    def close_participants(self) -> None:
        for name in list(self.participants):
            self.unregister_participant(name)


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=8)
class NodeAgent:
    """The Ray actor: threaded (the collection loop runs beside enforcement calls)."""

    def __init__(self, node_id: str, namespace: str, options: dict[str, Any] | None = None) -> None:
        self.core = NodeAgentCore(node_id, namespace, **(options or {}))
        self._thread = threading.Thread(target=self.core.run, name="collect", daemon=True)
        self._thread.start()
        if self.core.local_host is not None:
            self._local = threading.Thread(target=self.core.local_host.run, args=(self.core._stop,),
                                           name="local-control", daemon=True)  # fmt: skip
            self._local.start()

    def local_info(self) -> dict[str, Any] | None:
        h = self.core.local_host
        return None if h is None else h.info()

    def local_history(self, after: int = -1) -> list[dict[str, Any]]:
        """The fast layer's windows with index > ``after`` (signals, targets, actions, acks)."""
        h = self.core.local_host
        return [] if h is None else [e for e in list(h.history) if e["window"] > after]

    def device_info(self) -> dict[str, Any]:
        return self.core.device_info()

    def ping(self) -> dict[str, Any]:
        return {"node_id": self.core.node_id, "actual_node": ray.get_runtime_context().get_node_id(),
                "restarted": self.core.restarted, "epoch": self.core.epoch,
                "started_at": self.core.started_at}  # fmt: skip

    def prepare(self, epoch: int, desired: dict[str, dict[str, Any]],
                plan: PlacementPlan | None = None) -> dict[str, Any]:  # fmt: skip
        return self.core.prepare(epoch, desired, plan)

    def commit(self, epoch: int) -> dict[str, Any]:
        return self.core.commit(epoch)

    def abort(self, epoch: int) -> dict[str, Any]:
        return self.core.abort(epoch)

    def register_participant(self, spec: dict[str, Any]) -> str:
        """Construct a participant in this process from ``{"factory": "module:Callable",
        "options": {...}}`` and register it (gone with a restart: pass specs in the agent's
        ``participants`` option to have them rebuilt)."""
        return self.core.register_participant(make_participant(spec))

    def unregister_participant(self, name: str) -> bool:
        return self.core.unregister_participant(name)

    def apply(self, epoch: int, desired: dict[str, dict[str, Any]], phase: str) -> dict[str, Any]:
        return self.core.apply(epoch, desired, phase)

    def set_job_knobs(self, job: str, cpu: float | None = None, concurrency: int | None = None,
                      frequency: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
        return self.core.set_job_knobs(job, cpu, concurrency, frequency)

    def register_source(self, name: str) -> None:
        self.core.register_source(name)

    def collect_now(self) -> int:
        return self.core.collect_once()

    def report(self) -> dict[str, Any]:
        return self.core.report()

    def shutdown(self) -> int:
        self.core.stop()
        stopped = self.core.shutdown_replicas()
        self.core.close_participants()
        return stopped


def _with_knob(spec: dict[str, Any]) -> dict[str, Any]:
    """The workload a new replica starts with: the plan's knob travels inside it."""
    workload = dict(spec.get("workload", {}))
    if spec.get("knob") is not None:
        workload["knob"] = spec["knob"]
    return workload
