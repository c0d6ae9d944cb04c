"""The emulated DPU: Arm cores, memory and line rate, and the accounting that
charges the node proxy's measured work to them.

Pure: no processes, no clock. The agent feeds in measured samples (CPU
seconds of the Envoy process, bytes through it, wall seconds) and reads back
utilisation; the same numbers also size the device-level admission the proxy
enforces (see ``admission_rps``), so a saturated DPU sheds or queues requests
and the stats show it.

Presets follow DESIGN.md (BlueField-2: 8 A72 cores, 200 Gb/s, 16-32 GB;
BlueField-3: 16 A78 cores, 400 Gb/s, 32 GB). ``arm_slowdown`` and
``rps_per_core`` are not vendor figures: they are this emulator's assumptions
(an A72 core does about half the proxy work per second of a host x86 core; an
A78 about 0.8), stated here so they are easy to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


class DeviceError(ValueError):
    """A device parameter or sample is malformed."""


@dataclass(frozen=True, slots=True)
class DpuSpec:
    """One emulated DPU. ``cores`` Arm cores, ``memory_gib`` on-card memory,
    ``line_rate_gbps`` the port's line rate. ``arm_slowdown``: host-CPU seconds
    are multiplied by this to get Arm-core seconds. ``rps_per_core``: the
    proxied requests one Arm core carries per second at saturation."""

    name: str
    cores: int
    memory_gib: float
    line_rate_gbps: float
    arm_slowdown: float = 1.0
    rps_per_core: float = 10_000.0

    def __post_init__(self) -> None:
        if not isinstance(self.cores, int) or self.cores < 1:
            raise DeviceError(f"{self.name}: cores must be a positive integer, got {self.cores!r}")
        for field_name in ("memory_gib", "line_rate_gbps", "arm_slowdown", "rps_per_core"):
            v = getattr(self, field_name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise DeviceError(f"{self.name}: {field_name} must be finite and > 0, got {v!r}")

    def with_(self, **changes: float | int | str) -> DpuSpec:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def line_rate_bytes_s(self) -> float:
        return self.line_rate_gbps * 1e9 / 8.0

    @property
    def admission_rps(self) -> float:
        """Requests/s the DPU may carry: its cores at saturation. Above this the
        device-level token bucket in front of every route sheds (429)."""
        return self.cores * self.rps_per_core


PRESETS: dict[str, DpuSpec] = {
    "bluefield2": DpuSpec(
        "bluefield2", cores=8, memory_gib=16.0, line_rate_gbps=200.0, arm_slowdown=2.0,
        rps_per_core=5_000.0,
    ),
    "bluefield3": DpuSpec(
        "bluefield3", cores=16, memory_gib=32.0, line_rate_gbps=400.0, arm_slowdown=1.25,
        rps_per_core=8_000.0,
    ),
}


def preset(name: str | DpuSpec, **overrides: float | int) -> DpuSpec:
    """A preset by name (``bluefield2`` / ``bluefield3``), optionally changed
    per node (e.g. ``cores=2`` to make saturation easy to reach in a test)."""
    if isinstance(name, DpuSpec):
        spec = name
    else:
        key = name.lower().replace("-", "").replace("_", "")
        if key not in PRESETS:
            raise DeviceError(f"unknown DPU preset {name!r}; expected one of {sorted(PRESETS)}")
        spec = PRESETS[key]
    return replace(spec, **overrides) if overrides else spec


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """Cumulative measurements of the proxy at one instant."""

    wall_s: float
    host_cpu_s: float  # user + system CPU seconds of the proxy process(es)
    bytes_total: float  # bytes received + sent by the proxy's listeners
    requests_total: float  # requests the proxy handled
    shed_total: float = 0.0  # requests the device-level bucket rejected


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """Utilisation over the interval between two samples (device counters)."""

    interval_s: float
    dpu_cpu_s: float  # Arm-core seconds charged
    core_utilisation: float  # dpu_cpu_s / (cores * interval), may exceed 1 (then work queues)
    line_rate_utilisation: float
    rps: float
    shed: float

    def as_counters(self, prefix: str = "dpu.") -> dict[str, float]:
        return {
            f"{prefix}cpu_s": self.dpu_cpu_s,
            f"{prefix}core_utilisation": self.core_utilisation,
            f"{prefix}line_rate_utilisation": self.line_rate_utilisation,
            f"{prefix}rps": self.rps,
            f"{prefix}shed": self.shed,
        }


def charge(spec: DpuSpec, before: DeviceSample, after: DeviceSample) -> DeviceUsage:
    """Charge the proxy work between two samples to the DPU's cores and port."""
    dt = after.wall_s - before.wall_s
    if not dt > 0:
        raise DeviceError(f"samples must move forward in time (interval {dt})")
    cpu = after.host_cpu_s - before.host_cpu_s
    nbytes = after.bytes_total - before.bytes_total
    if cpu < 0 or nbytes < 0 or after.requests_total < before.requests_total:
        raise DeviceError("cumulative counters went backwards (proxy restarted?)")
    dpu_cpu = cpu * spec.arm_slowdown
    return DeviceUsage(
        interval_s=dt,
        dpu_cpu_s=dpu_cpu,
        core_utilisation=dpu_cpu / (spec.cores * dt),
        line_rate_utilisation=nbytes / (spec.line_rate_bytes_s * dt),
        rps=(after.requests_total - before.requests_total) / dt,
        shed=max(0.0, after.shed_total - before.shed_total),
    )
