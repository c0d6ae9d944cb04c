"""Client of the DPU mesh agent, over a one-method transport seam.

``MeshClient`` speaks in plain data (config.MeshResources in, PushResult /
MeshStats out). Everything below it goes through ``Transport.call(method,
request)``: ``GrpcTransport`` is the real one (the shared token in every
call's metadata); ``FakeAgentTransport`` is an in-memory test double that
keeps the agent's contract (validation, ACK/NACK, last good version in
force, nonce echoed) without Envoy, for tests of callers such as the
NodeAgent and placement.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dpu_agent import config as cfg
from dpu_agent.convert import PROTO, pb, resources_from_proto, resources_to_proto

METHODS = ("Push", "GetStats", "GetDevice")


class Transport(Protocol):
    def call(self, method: str, request: Any) -> Any:
        """Send one unary request (a mesh.proto message) and return the reply."""
        ...


class GrpcTransport:
    """The real transport: a gRPC channel to the agent, token in every call."""

    def __init__(self, address: str, token: str, timeout_s: float = 30.0) -> None:
        import grpc

        from cluster_mgr.protos import load
        from dpu_agent.server import TOKEN_HEADER

        self._channel = grpc.insecure_channel(address)
        self._stub = load(PROTO)[1].MeshAgentStub(self._channel)
        self._metadata = ((TOKEN_HEADER, token),)
        self._timeout = timeout_s

    def call(self, method: str, request: Any) -> Any:
        if method not in METHODS:
            raise ValueError(f"unknown mesh agent method {method!r}")
        return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)

    def close(self) -> None:
        self._channel.close()


@dataclass(frozen=True, slots=True)
class PushResult:
    ack: bool
    version: str  # in force after the push
    nonce: str
    code: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MeshStats:
    version: str
    counters: Mapping[str, float]
    histograms: Mapping[str, Mapping[str, float]]  # name -> quantile label -> ms (since start)
    device: Mapping[str, float]
    wall_time: float
    interval: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # last flush only
    buckets: Mapping[str, tuple[tuple[float, float, int], ...]] = field(default_factory=dict)

    def counter(self, name: str) -> float:
        return self.counters.get(name, 0.0)

    def cluster(self, cluster: str, stat: str) -> float:
        """An Envoy cluster stat, e.g. ``cluster("web--n2", "upstream_rq_total")``."""
        return self.counters.get(f"cluster.{cluster}.{stat}", 0.0)

    def latency_ms(self, cluster: str, quantile: str = "P99", *, interval: bool = False) -> float:
        """Envoy's ``cluster.<cluster>.upstream_rq_time`` quantile (``P50``, ``P99``, ...) in ms,
        since Envoy started or (``interval``) over its last stats flush; NaN when absent."""
        src = self.interval if interval else self.histograms
        return src.get(f"cluster.{cluster}.upstream_rq_time", {}).get(quantile, math.nan)

    def rate_limited(self, rate_limit: str) -> float:
        return self.counters.get(
            f"{cfg.rate_limit_stat_prefix(rate_limit)}.http_local_rate_limit.rate_limited", 0.0
        )


class MeshClient:
    """The only way callers talk to a node's mesh agent."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._versions = itertools.count(1)

    def push(self, resources: cfg.MeshResources, version: str | None = None) -> PushResult:
        m = pb()
        nonce = uuid.uuid4().hex
        version = version or f"v{next(self._versions)}"
        reply = self.transport.call(
            "Push",
            m.PushRequest(version_info=version, nonce=nonce, resources=resources_to_proto(resources)),
        )
        if reply.response_nonce != nonce:
            raise RuntimeError(f"agent answered nonce {reply.response_nonce!r}, expected {nonce!r}")
        return PushResult(
            ack=reply.ack, version=reply.version_info, nonce=nonce,
            code=reply.error_detail.code, reason=reply.error_detail.message,
        )

    def stats(self, filter_re: str = "") -> MeshStats:
        r = self.transport.call("GetStats", pb().StatsRequest(filter=filter_re))
        return MeshStats(
            version=r.version_info,
            counters=dict(r.counters),
            histograms={h.name: dict(h.cumulative) for h in r.histograms},
            device=dict(r.device),
            wall_time=r.wall_time,
            interval={h.name: dict(h.interval) for h in r.histograms},
            buckets={h.name: tuple((b.lower_bound, b.width, int(b.count)) for b in h.totals)
                     for h in r.histograms},  # fmt: skip
        )

    def device(self) -> dict[str, Any]:
        d = self.transport.call("GetDevice", pb().DeviceRequest())
        return {
            "name": d.name, "cores": d.cores, "memory_gib": d.memory_gib,
            "line_rate_gbps": d.line_rate_gbps, "admission_rps": d.admission_rps,
            "envoy_admin": d.envoy_admin, "envoy_listener": d.envoy_listener,
        }


@dataclass
class FakeAgentTransport:
    """In-memory test double with the agent's contract but no Envoy: validates,
    ACKs or NACKs, keeps the last good version, echoes the nonce. ``reject_next``
    makes the next valid push fail as if Envoy had rejected it. ``counters`` are
    returned by GetStats as they are (tests set them)."""

    version: str = "0"
    resources: cfg.MeshResources = field(default_factory=cfg.MeshResources)
    counters: dict[str, float] = field(default_factory=dict)
    device: dict[str, float] = field(default_factory=dict)
    reject_next: str = ""
    pushes: list[Any] = field(default_factory=list)

    def call(self, method: str, request: Any) -> Any:
        m = pb()
        if method == "Push":
            self.pushes.append(request)
            res = resources_from_proto(request.resources)
            errors = cfg.validate(res) or ([] if request.version_info else ["version_info must be set"])
            code = 3 if errors else 0
            if not errors and self.reject_next:
                errors, code, self.reject_next = [self.reject_next], 9, ""
            if errors:
                return m.PushResponse(
                    ack=False, version_info=self.version, response_nonce=request.nonce,
                    error_detail=m.Status(code=code, message="; ".join(errors)),
                )
            self.version, self.resources = request.version_info, res
            return m.PushResponse(ack=True, version_info=self.version, response_nonce=request.nonce)
        if method == "GetStats":
            r = m.StatsResponse(version_info=self.version)
            r.counters.update(self.counters)
            r.device.update(self.device)
            return r
        if method == "GetDevice":
            return m.DeviceInfo(name="fake", cores=1)
        raise ValueError(f"unknown mesh agent method {method!r}")
