"""PimClient: the NodeAgent's one client of the PIM agent.

The client talks through one narrow seam, ``Transport.call(method, request)``:
``GrpcTransport`` is the real one (a channel to the agent, the shared token in
metadata); ``InMemoryTransport`` is the test double, which hands the request to
the same servicer the server uses, over a device in this process, so tests and
benchmarks exercise the same validation and conversion without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from cluster_mgr.protos import load
from pim_agent import convert
from pim_agent.device import Assignment, NodeWindow, PimDevice
from pim_agent.presets import AppProfile, DevicePreset
from pim_agent.server import PROTO, TOKEN_METADATA, PimServicer


class Transport(Protocol):
    def call(self, method: str, request: Any) -> Any:
        """Send ``request`` to RPC ``method`` of the PimAgent service; return the reply."""
        ...


class AgentError(RuntimeError):
    """The agent refused a call that is not a plan (registration, load)."""


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    accepted: bool
    version: int
    reason: str = ""


class GrpcTransport:
    def __init__(self, address: str, token: str, timeout_s: float = 5.0):
        _, services = load(PROTO)
        self._channel = grpc.insecure_channel(address)
        self._stub = services.PimAgentStub(self._channel)
        self._metadata = ((TOKEN_METADATA, token),)
        self._timeout = timeout_s

    def call(self, method: str, request: Any) -> Any:
        return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)

    def close(self) -> None:
        self._channel.close()


class _AbortContext:
    """Enough of grpc.ServicerContext for the servicer's aborts to surface as errors."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AgentError(f"{code.name}: {details}")


class InMemoryTransport:
    """Test double: the real servicer over an in-process device, no network, no auth."""

    def __init__(self, device: PimDevice):
        self.servicer = PimServicer(device)

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.servicer, method)(request, _AbortContext())

    def close(self) -> None:
        pass


class PimClient:
    def __init__(self, transport: Transport):
        self.transport = transport
        self.pb = load(PROTO)[0]

    def info(self) -> tuple[DevicePreset, int, tuple[str, ...]]:
        m = self.transport.call("GetInfo", self.pb.InfoRequest())
        return convert.info_from_pb(m), int(m.version), tuple(m.apps)

    def _ack(self, reply: Any) -> None:
        if not reply.ok:
            raise AgentError(reply.reason)

    def register(self, profile: AppProfile, load_rps: float = 0.0) -> None:
        req = self.pb.RegisterAppRequest(
            profile=convert.profile_to_pb(self.pb, profile), load_rps=load_rps
        )
        self._ack(self.transport.call("RegisterApp", req))

    def remove(self, app: str) -> None:
        self._ack(self.transport.call("RemoveApp", self.pb.RemoveAppRequest(app=app)))

    def set_load(self, app: str, load_rps: float) -> None:
        req = self.pb.SetLoadRequest(app=app, load_rps=load_rps)
        self._ack(self.transport.call("SetLoad", req))

    @staticmethod
    def _outcome(m: Any) -> PlanOutcome:
        return PlanOutcome(bool(m.accepted), int(m.version), m.reason)

    def apply(self, changes: dict[str, Assignment], version: int) -> PlanOutcome:
        plan = self.pb.Plan(
            version=version,
            apps=[convert.assignment_to_pb(self.pb, n, a) for n, a in sorted(changes.items())],
        )
        return self._outcome(self.transport.call("ApplyPlan", plan))

    def migrate(self, app: str, page_fractions: tuple[float, ...], version: int) -> PlanOutcome:
        req = self.pb.MigrateRequest(version=version, app=app, page_fractions=list(page_fractions))
        return self._outcome(self.transport.call("MigratePages", req))

    def replicate(self, app: str, stacks: tuple[int, ...], version: int) -> PlanOutcome:
        req = self.pb.ReplicateRequest(version=version, app=app, stacks=list(stacks))
        return self._outcome(self.transport.call("ReplicatePages", req))

    def counters(self) -> NodeWindow | None:
        return convert.counters_from_pb(
            self.transport.call("ReadCounters", self.pb.CountersRequest())
        )

    def step(self, dt_s: float = 0.0) -> NodeWindow | None:
        return convert.counters_from_pb(self.transport.call("Step", self.pb.StepRequest(dt_s=dt_s)))
