"""The DPU mesh agent: a gRPC service (mesh.proto) in front of the node's Envoy.

A push is validated (config.validate), translated to Envoy's v3 resources,
handed to Envoy through its watched files and confirmed from Envoy's own
counters (envoy_process.EnvoyProcess.apply). Any failure is a NACK carrying
the reason, and the last good version stays in force. Every call must carry
the shared token (metadata ``x-mesh-token``); a call without it is refused
with UNAUTHENTICATED before it reaches the servicer.

``start_agent`` is what a NodeAgent calls: it starts the node's Envoy (or
takes one already running) and the gRPC server, bound to 127.0.0.1 by default.
"""

from __future__ import annotations

import hmac
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from cluster_mgr.protos import load
from dpu_agent import config as cfg
from dpu_agent.convert import PROTO, resources_from_proto
from dpu_agent.device import DeviceSample, DpuSpec, charge, preset
from dpu_agent.envoy_process import DEVICE_STAT_PREFIX, HCM_STAT_PREFIX, EnvoyProcess

TOKEN_HEADER = "x-mesh-token"
CODE_OK, CODE_INVALID, CODE_REJECTED = 0, 3, 9  # google.rpc.Code values


class MeshAgent:
    """The agent's logic, independent of gRPC (the servicer below only adapts it)."""

    def __init__(self, envoy: EnvoyProcess, device: DpuSpec) -> None:
        self.envoy = envoy
        self.device = device
        self._lock = threading.Lock()  # one push at a time: versions apply in order
        self._cpu0 = envoy.cpu_seconds()
        self._prev = self._sample()

    @property
    def version(self) -> str:
        return self.envoy.version

    def push(self, req: Any) -> Any:
        m = load(PROTO)[0]
        with self._lock:
            def nack(code: int, message: str) -> Any:
                return m.PushResponse(
                    ack=False, version_info=self.envoy.version, response_nonce=req.nonce,
                    error_detail=m.Status(code=code, message=message),
                )

            if not req.version_info:
                return nack(CODE_INVALID, "version_info must be set")
            try:
                res = resources_from_proto(req.resources)
            except (ValueError, TypeError) as exc:
                return nack(CODE_INVALID, f"malformed resources: {exc}")
            errors = cfg.validate(res)
            if errors:
                return nack(CODE_INVALID, "; ".join(errors))
            result = self.envoy.apply(res, req.version_info)
            if not result.ok:
                return nack(CODE_REJECTED, result.reason)
            return m.PushResponse(ack=True, version_info=result.version, response_nonce=req.nonce)

    def _sample(self) -> DeviceSample:
        v, _ = self.envoy.stats(f"^(http\\.{HCM_STAT_PREFIX}\\.|{DEVICE_STAT_PREFIX}\\.)")
        p = f"http.{HCM_STAT_PREFIX}."
        return DeviceSample(
            wall_s=time.time(),
            host_cpu_s=self.envoy.cpu_seconds(),
            bytes_total=v.get(p + "downstream_cx_rx_bytes_total", 0.0)
            + v.get(p + "downstream_cx_tx_bytes_total", 0.0),
            requests_total=v.get(p + "downstream_rq_total", 0.0),
            shed_total=v.get(f"{DEVICE_STAT_PREFIX}.http_local_rate_limit.rate_limited", 0.0),
        )

    def device_counters(self) -> dict[str, float]:
        """Utilisation since the previous call (one telemetry window when polled per window)."""
        now = self._sample()
        out = {
            "dpu.cores": float(self.device.cores),
            "dpu.admission_rps": self.device.admission_rps,
            "dpu.cpu_s_total": (now.host_cpu_s - self._cpu0) * self.device.arm_slowdown,
            "dpu.shed_total": now.shed_total,
        }
        if now.wall_s - self._prev.wall_s > 1e-3:
            out.update(charge(self.device, self._prev, now).as_counters())
            self._prev = now
        return out

    def stats(self, req: Any) -> Any:
        m = load(PROTO)[0]
        counters, hists = self.envoy.stats_detailed(req.filter)
        resp = m.StatsResponse(version_info=self.envoy.version, wall_time=time.time())
        resp.counters.update(counters)
        for name, hs in sorted(hists.items()):
            h = resp.histograms.add(name=name)
            h.cumulative.update(hs.cumulative)
            h.interval.update(hs.interval)
            for lb, width, count in hs.totals:
                h.totals.add(lower_bound=lb, width=width, count=count)
        resp.device.update(self.device_counters())
        return resp

    def device_info(self) -> Any:
        m = load(PROTO)[0]
        d = self.device
        return m.DeviceInfo(
            name=d.name, cores=d.cores, memory_gib=d.memory_gib, line_rate_gbps=d.line_rate_gbps,
            admission_rps=d.admission_rps, envoy_admin=self.envoy.admin,
            envoy_listener=self.envoy.listener,
        )


def _servicer_class() -> type:
    services = load(PROTO)[1]

    class MeshAgentServicer(services.MeshAgentServicer):  # type: ignore[name-defined,misc]
        def __init__(self, agent: MeshAgent) -> None:
            self.agent = agent

        def Push(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
            return self.agent.push(request)

        def GetStats(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
            return self.agent.stats(request)

        def GetDevice(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
            return self.agent.device_info()

    return MeshAgentServicer


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call whose ``x-mesh-token`` metadata is missing or wrong."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {TOKEN_HEADER}")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        got = dict(details.invocation_metadata or ()).get(TOKEN_HEADER, "")
        got_b = got.encode() if isinstance(got, str) else bytes(got)
        if hmac.compare_digest(got_b, self._token):
            return continuation(details)
        return self._deny


@dataclass
class AgentHandle:
    """A running agent: ``address`` for clients, ``stop()`` ends server and (own) Envoy."""

    server: grpc.Server
    port: int
    host: str
    agent: MeshAgent
    owns_envoy: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def envoy(self) -> EnvoyProcess:
        return self.agent.envoy

    def stop(self, grace_s: float = 1.0) -> None:
        self.server.stop(grace_s).wait(10)
        if self.owns_envoy:
            self.agent.envoy.stop()

    def __enter__(self) -> AgentHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_agent(
    device: str | DpuSpec = "bluefield2",
    bind: str = "127.0.0.1:0",
    *,
    token: str,
    envoy: EnvoyProcess | None = None,
    node_id: str = "node",
    max_workers: int = 4,
) -> AgentHandle:
    """Start the agent for one node. Without ``envoy`` it starts the node's Envoy
    (DPU mode: the device limits sit in front of every route) and stops it on
    ``stop()``; with one it drives that Envoy and leaves it running."""
    if not token:
        raise ValueError("the agent requires a non-empty shared token")
    spec = preset(device) if isinstance(device, str) else device
    owns = envoy is None
    if envoy is None:
        envoy = EnvoyProcess.start(node_id, device=spec, host=bind.rsplit(":", 1)[0])
    try:
        agent = MeshAgent(envoy, spec)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mesh-agent"),
            interceptors=(TokenAuth(token),),
        )
        load(PROTO)[1].add_MeshAgentServicer_to_server(_servicer_class()(agent), server)
        port = server.add_insecure_port(bind)
        if port == 0:
            raise OSError(f"could not bind the mesh agent to {bind}")
        server.start()
    except BaseException:
        if owns:
            envoy.stop()
        raise
    return AgentHandle(server, port, bind.rsplit(":", 1)[0], agent, owns)
