"""Small emulated services and a keep-alive HTTP client for mesh traffic.

``EchoService`` is an asyncio HTTP/1.1 server on loopback (in its own thread,
or a process via ``python -m dpu_agent.service``) that answers every request
with its own name, after an optional emulated service time; ``/status/<code>``
answers with that status (to drive outlier detection), and ``fail_status``
makes every answer fail. ``MeshHttpClient`` sends requests to a proxy (the
node's Envoy or a sidecar) with the target service in the Host header, over
one persistent connection, and times them.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import threading
import time
from dataclasses import dataclass

_REASONS = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}


class EchoService:
    """An HTTP/1.1 keep-alive server answering with its name. Thread-safe start/stop."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0,
                 service_ms: float = 0.0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.service_ms = service_ms
        self.fail_status = 0  # when non-zero every request gets this status
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
                length = 0
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                if self.service_ms > 0:
                    await asyncio.sleep(self.service_ms / 1000.0)  # emulated service time
                status = self.fail_status or 200
                if path.startswith("/status/"):
                    status = int(path.rsplit("/", 1)[1])
                body = self.name.encode()
                writer.write(
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\ncontent-length: {len(body)}\r\n"
                    f"content-type: text/plain\r\nx-replica: {self.name}\r\n\r\n".encode() + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError,
                asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        """Close the listener, end open connections, then stop the loop, so no
        handler outlives its event loop."""
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        asyncio.get_running_loop().stop()

    def start(self, timeout_s: float = 10.0) -> EchoService:
        self._thread = threading.Thread(target=self._run, name=f"echo-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"echo service {self.name} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> EchoService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: str
    latency_ms: float


class MeshHttpClient:
    """One persistent HTTP/1.1 connection to ``proxy`` (host:port); ``get(service)``
    sets Host to the service so the proxy's route for that domain applies."""

    def __init__(self, proxy: str, timeout_s: float = 10.0) -> None:
        host, port = proxy.rsplit(":", 1)
        self._host, self._port, self._timeout = host, int(port), timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def get(self, service: str, path: str = "/") -> Reply:
        t0 = time.perf_counter()
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request("GET", path, headers={"Host": service})
                r = self._conn.getresponse()
                body = r.read().decode(errors="replace")
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return Reply(r.status, body, (time.perf_counter() - t0) * 1000.0)
            except (http.client.HTTPException, ConnectionError, OSError):
                # The proxy may close an idle keep-alive connection; retry once on a new one.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def main() -> None:
    ap = argparse.ArgumentParser(description="an emulated echo service on loopback")
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--service-ms", type=float, default=0.0)
    a = ap.parse_args()
    svc = EchoService(a.name, port=a.port, service_ms=a.service_ms).start()
    print(svc.port, flush=True)  # the parent reads the bound port from the first line
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        svc.stop()


if __name__ == "__main__":
    main()
