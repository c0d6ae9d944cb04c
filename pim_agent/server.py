"""gRPC management service of the emulated HBM-PIM device, and how to start it.

``start_agent`` binds 127.0.0.1 by default (port 0 picks a free port), checks a
shared token on every call (UNAUTHENTICATED otherwise) and serialises calls on
one lock so a plan is validated and applied as one step. Emulated time moves
either by the Step RPC (tests, the simulation) or, with ``autostep``, by a
ticker thread that steps the device once per control interval on an injectable
clock (the Ray backend).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, replace
from typing import Any

import grpc

from cluster_mgr.clock import Clock, SystemClock
from cluster_mgr.protos import load
from pim_agent import convert
from pim_agent.device import PimDevice, PlanError

PROTO = "pim_agent/pim.proto"
TOKEN_METADATA = "x-pim-token"


def _messages() -> Any:
    return load(PROTO)[0]


class PimServicer:
    """The RPC handlers; every handler holds the device lock for its whole body."""

    def __init__(self, device: PimDevice, lock: threading.Lock | None = None):
        self.device = device
        self.lock = lock or threading.Lock()
        self.pb = _messages()

    def GetInfo(self, request: Any, context: Any) -> Any:
        with self.lock:
            d = self.device
            return convert.info_to_pb(self.pb, d.preset, d.version, d.apps)

    def RegisterApp(self, request: Any, context: Any) -> Any:
        with self.lock:
            try:
                self.device.register(convert.profile_from_pb(request.profile), request.load_rps)
            except (PlanError, ValueError) as exc:
                return self.pb.Ack(ok=False, reason=str(exc))
            return self.pb.Ack(ok=True)

    def RemoveApp(self, request: Any, context: Any) -> Any:
        with self.lock:
            try:
                self.device.remove(request.app)
            except PlanError as exc:
                return self.pb.Ack(ok=False, reason=str(exc))
            return self.pb.Ack(ok=True)

    def SetLoad(self, request: Any, context: Any) -> Any:
        with self.lock:
            try:
                self.device.set_load(request.app, request.load_rps)
            except PlanError as exc:
                return self.pb.Ack(ok=False, reason=str(exc))
            return self.pb.Ack(ok=True)

    def _apply(self, version: int, changes: Callable[[], dict]) -> Any:
        try:
            self.device.apply(changes(), int(version))
        except (PlanError, ValueError, KeyError) as exc:
            reason = str(exc) if not isinstance(exc, KeyError) else f"unknown app {exc}"
            return self.pb.PlanResult(accepted=False, version=self.device.version, reason=reason)
        return self.pb.PlanResult(accepted=True, version=self.device.version)

    def ApplyPlan(self, request: Any, context: Any) -> Any:
        def changes() -> dict:
            names = [a.app for a in request.apps]
            if len(set(names)) != len(names):
                raise PlanError(f"an app appears twice in the plan: {names}")
            return {a.app: convert.assignment_from_pb(a) for a in request.apps}

        with self.lock:
            return self._apply(request.version, changes)

    def MigratePages(self, request: Any, context: Any) -> Any:
        def changes() -> dict:
            cur = self.device.assignment(request.app)
            return {request.app: replace(cur, pages=tuple(request.page_fractions))}

        with self.lock:
            return self._apply(request.version, changes)

    def ReplicatePages(self, request: Any, context: Any) -> Any:
        def changes() -> dict:
            cur = self.device.assignment(request.app)
            return {request.app: replace(cur, replicas=tuple(int(s) for s in request.stacks))}

        with self.lock:
            return self._apply(request.version, changes)

    def ReadCounters(self, request: Any, context: Any) -> Any:
        with self.lock:
            return convert.counters_to_pb(self.pb, self.device.last_window())

    def Step(self, request: Any, context: Any) -> Any:
        with self.lock:
            dt = request.dt_s or None
            if dt is not None and dt <= 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"dt_s must be > 0, got {dt}")
            return convert.counters_to_pb(self.pb, self.device.step(dt))


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call whose ``x-pim-token`` metadata is not the shared token."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("the PIM agent needs a non-empty shared token")
        self._token = token.encode()

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-pim-token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        meta = dict(details.invocation_metadata or ())
        given = meta.get(TOKEN_METADATA, "")
        given = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given, self._token):
            return continuation(details)
        return self._deny


class _Ticker(threading.Thread):
    """Steps the device once per control interval on ``clock`` until stopped."""

    def __init__(self, device: PimDevice, lock: threading.Lock, clock: Clock):
        super().__init__(name="pim-agent-ticker", daemon=True)
        self.device, self.lock, self.clock = device, lock, clock
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = self.device.preset.interval_s
        deadline = self.clock.now()
        while not self.stopping.is_set():
            deadline += interval
            self.clock.sleep_until(deadline)
            if self.stopping.is_set():
                return
            with self.lock:
                self.device.step(interval)


@dataclass
class AgentHandle:
    """A running agent: where it listens, and how to stop it (server and ticker)."""

    port: int
    address: str
    server: grpc.Server
    servicer: PimServicer
    ticker: _Ticker | None = None

    def stop(self, grace: float | None = None) -> None:
        if self.ticker is not None:
            self.ticker.stopping.set()
            self.ticker.join(timeout=5.0)
        self.server.stop(grace).wait()


def start_agent(
    device: PimDevice,
    bind: str = "127.0.0.1:0",
    token: str = "",
    *,
    autostep: bool = False,
    clock: Clock | None = None,
    max_workers: int = 4,
) -> AgentHandle:
    """Serve ``device`` over gRPC on ``bind`` with shared-token auth; returns a handle."""
    _, services = load(PROTO)
    servicer = PimServicer(device)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=[TokenAuth(token)]
    )
    services.add_PimAgentServicer_to_server(servicer, server)
    port = server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"could not bind the PIM agent to {bind}")
    server.start()
    host = bind.rsplit(":", 1)[0]
    handle = AgentHandle(port=port, address=f"{host}:{port}", server=server, servicer=servicer)
    if autostep:
        handle.ticker = _Ticker(device, servicer.lock, clock or SystemClock())
        handle.ticker.start()
    return handle
