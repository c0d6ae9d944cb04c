"""Real HTTP on the mesh's data path, for async code (Ray's async actors).

``start_ingress`` serves HTTP/1.1 keep-alive on loopback inside the *running*
event loop (a meshed Replica's own loop), so a request that arrives through
the node's Envoy is handed straight to the replica's ``handle`` coroutine:
no thread, no copy of the service model. ``ProxyPool`` is the caller's side:
keep-alive connections to the node's Envoy listener, one request per
connection at a time (HTTP/1.1 without pipelining), opened as concurrency
needs them, so an open-loop load generator with many requests in flight does
not serialise them on one socket.

Stdlib only (asyncio); the parsing is the small subset the mesh uses:
request line, headers, Content-Length bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

SENT_AT = "x-sent-at"  # the caller's send time (Unix s): the replica's upstream-time signal
REPLICA = "x-replica"  # which replica answered (tests count the weighted split with it)
_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip

Handler = Callable[[str, Mapping[str, str]], Awaitable[int]]  # (path, headers) -> HTTP status


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """First line and lower-cased headers of one HTTP/1.1 message."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


class Ingress:
    """A running ingress: ``port`` to register as the replica's mesh endpoint."""

    def __init__(self, handler: Handler, name: str) -> None:
        self._handler = handler
        self._body = name.encode()
        self._name = name
        self.server: asyncio.Server | None = None
        self.port = 0
        self.requests = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line, headers = await _read_head(reader)
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                parts = line.split(" ")
                self.requests += 1
                status = await self._handler(parts[1] if len(parts) > 1 else "/", headers)
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n"
                    f"content-length: {len(self._body)}\r\ncontent-type: text/plain\r\n"
                    f"{REPLICA}: {self._name}\r\n\r\n".encode() + self._body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # the peer closed (Envoy recycles idle upstream connections) or sent garbage
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


async def start_ingress(handler: Handler, name: str, host: str = "127.0.0.1", port: int = 0) -> Ingress:
    """Serve ``handler`` over HTTP on ``host:port`` (a free port by default) in the running loop."""
    ing = Ingress(handler, name)
    ing.server = await asyncio.start_server(ing._serve, host, port)
    ing.port = int(ing.server.sockets[0].getsockname()[1])
    return ing


@dataclass(frozen=True, slots=True)
class ProxyReply:
    status: int  # 0: the proxy could not be reached or the connection broke
    replica: str  # the x-replica header of the answer ("" when the proxy answered itself)
    latency_ms: float


class ProxyPool:
    """Keep-alive HTTP/1.1 connections to one proxy listener (``host:port``)."""

    def __init__(self, proxy: str, timeout_s: float = 30.0) -> None:
        host, port = proxy.rsplit(":", 1)
        self.proxy = proxy
        self._host, self._port, self._timeout = host, int(port), float(timeout_s)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
                        ) -> tuple[int, str, bool]:  # fmt: skip
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        line, headers = await _read_head(reader)
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)
        keep = headers.get("connection", "").lower() != "close"
        return int(line.split(" ")[1]), headers.get(REPLICA, ""), keep

    async def get(self, service: str, path: str = "/", sent_at: float | None = None) -> ProxyReply:
        """GET ``path`` with ``Host: service`` (the proxy routes on it). Latency is wall time
        from ``sent_at`` (default: now) to the last byte of the answer."""
        t0 = time.time() if sent_at is None else sent_at
        request = (f"GET {path} HTTP/1.1\r\nhost: {service}\r\n{SENT_AT}: {t0:.6f}\r\n"
                   "content-length: 0\r\n\r\n").encode()  # fmt: skip
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = None
            try:
                conn = self._idle.pop() if reused else await asyncio.wait_for(
                    asyncio.open_connection(self._host, self._port), self._timeout)  # fmt: skip
                status, replica, keep = await asyncio.wait_for(self._exchange(conn, request), self._timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    IndexError, TimeoutError):  # fmt: skip
                if conn is not None:
                    conn[1].close()
                if reused and attempt == 0:
                    continue  # the proxy closed an idle keep-alive connection: once more, fresh
                return ProxyReply(0, "", (time.time() - t0) * 1e3)
            if keep:
                self._idle.append(conn)
            else:
                conn[1].close()
            return ProxyReply(status, replica, (time.time() - t0) * 1e3)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()
