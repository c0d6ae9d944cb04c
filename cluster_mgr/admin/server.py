"""The admin gRPC server: serves a ControlPlane on ``bind`` behind a bearer token.

The controller calls ``serve(control_plane, bind, token)``; the returned
AdminServer has the bound ``port`` (bind to port 0 for any free one) and
``stop()``. Every call must carry ``authorization: Bearer <token>`` in its
metadata; an interceptor refuses anything else with UNAUTHENTICATED before any
handler runs. The channel is plaintext, which is why the default bind is
loopback: expose it beyond the host only through a tunnel (docs/cli.md).
This module does not import Ray.
"""

from __future__ import annotations

import hmac
import logging
from concurrent import futures
from typing import Any

import grpc

from cluster_mgr import protos
from cluster_mgr.admin import convert
from cluster_mgr.admin.dispatch import METHODS, Dispatcher
from cluster_mgr.admin.errors import AdminError
from cluster_mgr.control.api import ControlPlane

log = logging.getLogger(__name__)

AUTH_HEADER = "authorization"


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls whose metadata lacks ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_HEADER:
                got = value if isinstance(value, str) else value.decode()
                break
        # Constant-time comparison, so response timing does not leak the token.
        if got and hmac.compare_digest(got.encode(), self._expected):
            return continuation(handler_call_details)
        reason = (
            "missing 'authorization: Bearer <token>' metadata" if not got else "invalid admin token"
        )
        return grpc.unary_unary_rpc_method_handler(_refuser(reason))


def _refuser(reason: str) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    return refuse


def _servicer(dispatcher: Dispatcher, base: type) -> Any:
    """An instance of the generated AdminServicer whose every method goes to ``dispatcher``."""

    def method(name: str) -> Any:
        def handle(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return dispatcher.call(name, request)
            except AdminError as exc:
                context.abort(grpc.StatusCode[exc.code], exc.details)

        handle.__name__ = name
        return handle

    cls = type("AdminServicer", (base,), {name: method(name) for name in METHODS})
    return cls()


class AdminServer:
    """A running admin server; ``port`` is the bound port."""

    def __init__(self, server: grpc.Server, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting calls; in-flight calls get ``grace`` seconds. Idempotent."""
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)


def serve(
    control_plane: ControlPlane, bind: str = "127.0.0.1:0", token: str = "", workers: int = 4
) -> AdminServer:
    """Serve ``control_plane`` on ``bind`` ('host:port'; port 0 picks a free port)."""
    if not token:
        # An admin API that anyone on the host can drive is worse than none.
        raise ValueError("admin server: an empty token is not allowed; set manager.admin_token")
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"admin server: bind must be 'host:port', got {bind!r}")
    _, services = protos.load(convert.ADMIN_PROTO)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="admin"),
        interceptors=[TokenInterceptor(token)],
        # One manager per port: never share a port with a stale server (SO_REUSEPORT).
        options=[("grpc.so_reuseport", 0)],
    )
    services.add_AdminServicer_to_server(
        _servicer(Dispatcher(control_plane), services.AdminServicer), server
    )
    try:
        port = server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise OSError(f"admin server: cannot bind {bind}: {exc}") from None
    if port == 0:
        raise OSError(f"admin server: cannot bind {bind}")
    server.start()
    log.info("admin API on %s:%d", host, port)
    return AdminServer(server, host, port)
