"""The admin client: typed calls over one narrow seam, a transport.

A transport has one method, ``call(method, request) -> reply``, on admin.proto
messages. ``GrpcTransport`` is the real one (a gRPC channel that sends the
bearer token); ``InMemoryTransport`` is the shipped test double, which hands
the request (serialised and parsed again, as on the wire) straight to a
ControlPlane through the same Dispatcher the server uses, httpx MockTransport
style. Failures are AdminError either way.

Importing this module does not import Ray: ``cluster-mgr status`` must answer
without starting a Ray driver.
"""

from __future__ import annotations

from typing import Any, Protocol

from cluster_mgr.admin import convert
from cluster_mgr.admin.errors import DEADLINE_EXCEEDED, UNAVAILABLE, AdminError
from cluster_mgr.admin.state import ManagerState, read_state
from cluster_mgr.control.api import ControlPlane, Explanation, PolicyInfo, Status
from cluster_mgr.model import JobSpec

DEFAULT_TIMEOUT_S = 5.0


class Transport(Protocol):
    def call(self, method: str, request: Any) -> Any: ...

    def close(self) -> None: ...


class GrpcTransport:
    """Calls the admin service over a gRPC channel with ``authorization: Bearer <token>``."""

    def __init__(self, target: str, token: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        import grpc

        from cluster_mgr import protos

        self._grpc = grpc
        self.target = target
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self._channel = grpc.insecure_channel(target)
        _, services = protos.load(convert.ADMIN_PROTO)
        self._stub = services.AdminStub(self._channel)

    def call(self, method: str, request: Any) -> Any:
        rpc = getattr(self._stub, method)
        try:
            return rpc(request, metadata=self._metadata, timeout=self._timeout)
        except self._grpc.RpcError as exc:
            code = exc.code().name if exc.code() else UNAVAILABLE
            details = exc.details() or ""
            if code == UNAVAILABLE:
                details = f"cannot reach the manager at {self.target} ({details})"
            elif code == DEADLINE_EXCEEDED:
                details = f"the manager at {self.target} did not answer in {self._timeout:g} s"
            raise AdminError(code, details) from None

    def close(self) -> None:
        self._channel.close()


class InMemoryTransport:
    """The test double: a ControlPlane behind the server's own dispatch, no network."""

    def __init__(self, control_plane: ControlPlane) -> None:
        from cluster_mgr.admin.dispatch import Dispatcher

        self._dispatcher = Dispatcher(control_plane)
        self.calls: list[str] = []  # method names, in order, for tests to inspect

    def call(self, method: str, request: Any) -> Any:
        self.calls.append(method)
        # Round-trip through bytes so what works here also works on the wire.
        request = type(request).FromString(request.SerializeToString())
        reply = self._dispatcher.call(method, request)
        return type(reply).FromString(reply.SerializeToString())

    def close(self) -> None:
        pass


class AdminClient:
    """Typed admin calls; each returns the control-plane dataclass (or raises AdminError)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._pb = convert.messages()

    @classmethod
    def connect(cls, target: str, token: str, timeout: float = DEFAULT_TIMEOUT_S) -> AdminClient:
        return cls(GrpcTransport(target, token, timeout))

    @classmethod
    def from_state(
        cls, state: ManagerState | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> AdminClient:
        """Dial the manager that ``cluster-mgr up`` recorded (raises NoManagerError if none)."""
        state = state or read_state()
        try:
            token = state.token()
        except OSError as exc:
            raise AdminError(
                "UNAUTHENTICATED", f"cannot read the token file {state.token_path}: {exc.strerror}"
            ) from None
        return cls.connect(state.address, token, timeout)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- calls

    def status(self) -> Status:
        return convert.status_from_msg(self.transport.call("Status", self._pb.StatusRequest()))

    def submit(self, spec: JobSpec | str) -> str:
        """Submit a JobSpec, or a job file's TOML text (parsed and checked by the server)."""
        if isinstance(spec, str):
            request = self._pb.SubmitRequest(toml=spec)
        else:
            request = self._pb.SubmitRequest(job=convert.job_to_msg(self._pb, spec))
        return self.transport.call("Submit", request).name

    def remove(self, name: str) -> None:
        self.transport.call("Remove", self._pb.RemoveRequest(name=name))

    def drain(self, node_id: str) -> None:
        self.transport.call("Drain", self._pb.DrainRequest(node_id=node_id))

    def explain(self, job: str) -> Explanation:
        reply = self.transport.call("Explain", self._pb.ExplainRequest(job=job))
        return convert.explanation_from_msg(reply)

    def policies(self) -> tuple[PolicyInfo, ...]:
        return convert.policies_from_msg(
            self.transport.call("Policies", self._pb.PoliciesRequest())
        )
