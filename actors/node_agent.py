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

Replicas and their placement groups are detached named actors, so they
outlive an agent restart; the controller removes them on shutdown.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from contextlib import suppress
from typing import Any

import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.names import CONTROLLER, new_replica_name, pg_name, replica_prefix
from actors.replica import Replica
from cluster_mgr.model import FAST_WINDOW_S, TELEMETRY_WINDOW_S

SIZE_TOL = 1e-6


def _concat(tables: list[pa.Table]) -> pa.Table:
    # chunked, not combined: combining copied every push (~7 MB at 14,000 windows) for nothing,
    # Ray serialises a chunked table as it is
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


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
    ) -> None:
        self.node_id = node_id
        self.namespace = namespace
        self.window_s, self.fast_window_s = window_s, fast_window_s
        self.push_period_s = push_period_s
        self.start_timeout_s = start_timeout_s
        self.reserve_timeout_s = reserve_timeout_s
        self.epoch = -1
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
        self._discover()

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
            return {**self.replicas, **self.sources}

    def collect_once(self, only: tuple[str, ...] | None = None) -> int:
        """Take, push, ack what is durable; returns rows the controller admitted.

        Safe to call concurrently. ``only`` (the stop path) pushes just those sources and
        asks the controller to write them before replying, so their windows are acked
        before the replicas are killed."""
        with self.push_lock:
            sources = self._all_sources()
            if only is not None:
                sources = {k: v for k, v in sources.items() if k in only}
            refs = {name: h.take.remote(self.taken.get(name, self.cursor.get(name, -1)))
                    for name, h in sources.items()}  # fmt: skip
            tables, lasts = [], {}
            for name, ref in refs.items():
                try:
                    table, last = ray.get(ref, timeout=max(5.0, 4 * self.push_period_s))
                except ray.exceptions.RayActorError:
                    self._forget(name)  # died with its node or was stopped
                    continue
                except ray.exceptions.GetTimeoutError:
                    continue  # busy source: next cycle
                if table is not None and table.num_rows:
                    tables.append(table)
                lasts[name] = last
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
                handles[name].ack.remote(last)

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
        if epoch < self.epoch:
            return {"refused": True, "epoch": self.epoch, "node_id": self.node_id}
        self.epoch = epoch
        start, stop = self._diff(desired)
        out: dict[str, Any] = {"node_id": self.node_id, "epoch": epoch, "refused": False}
        if phase == "make":
            started, deferred = self._start(start, desired)
            out.update(started=started, deferred=deferred)
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
            ).remote(job, name, spec.get("workload", {}), spec.get("slo_ms"), size,
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

    def shutdown_replicas(self) -> int:
        with self.lock:
            names = list(self.replicas)
        return len(self._stop_replicas(names))


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=8)
class NodeAgent:
    """The Ray actor: threaded (the collection loop runs beside enforcement calls)."""

    def __init__(self, node_id: str, namespace: str, options: dict[str, Any] | None = None) -> None:
        self.core = NodeAgentCore(node_id, namespace, **(options or {}))
        self._thread = threading.Thread(target=self.core.run, name="collect", daemon=True)
        self._thread.start()

    def ping(self) -> dict[str, Any]:
        return {"node_id": self.core.node_id, "actual_node": ray.get_runtime_context().get_node_id(),
                "restarted": self.core.restarted, "epoch": self.core.epoch}  # fmt: skip

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
        return self.core.shutdown_replicas()
