"""Device presets and application profiles for the emulated HBM-PIM node.

Every number here is fixed before any policy was tuned; the source of each is
given beside it (DESIGN.md "Facts from the systems this project learns from",
or an explicitly labelled assumption). The project is also measured on presets
it does not ship, so nothing in a policy may depend on these exact values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PAGE_BYTES = 4096
GIB = 1024**3
CACHE_LINE_BYTES = 64  # one memory access moves one cache line


@dataclass(frozen=True, slots=True)
class DevicePreset:
    """One node's memory system: HBM-PIM stacks beside big CPU cores."""

    name: str
    n_stacks: int
    stack_capacity_gib: float
    channels_per_stack: int
    stack_bandwidth_gbs: float
    pim_cores_per_stack: int
    cpu_cores: int
    cpu_mem_ns: float  # a big core's memory access, any stack (goes through the host controller)
    pim_local_ns: float  # a PIM core's access to its own stack
    pim_remote_ns: float  # a PIM core's access to another stack (crosses the host link)
    page_migrate_us: float = 1.0  # PIMCloud: about 1 us per 4 KB page, one engine per node
    cpu_settle_intervals: int = 2  # PIMCloud: core changes settle in 2-3 intervals
    pim_settle_intervals: int = 3
    interval_s: float = 0.1  # PIMCloud's 100 ms control interval

    def __post_init__(self) -> None:
        for f in ("n_stacks", "channels_per_stack", "pim_cores_per_stack", "cpu_cores"):
            if getattr(self, f) < 0:
                raise ValueError(f"preset {self.name}: {f} must be >= 0")
        if self.n_stacks < 1:
            raise ValueError(f"preset {self.name}: needs at least one stack")

    @property
    def stack_capacity_pages(self) -> int:
        return int(self.stack_capacity_gib * GIB // PAGE_BYTES)

    @property
    def total_pim_cores(self) -> int:
        return self.n_stacks * self.pim_cores_per_stack


# PIMCloud (HPCA '22): 2 stacks x 8 GB x 8 PIM cores beside 4 big cores; 65 ns from
# the CPU, 21 ns from a PIM core. HBM2 stack: 8 channels, 256-307 GB/s (low end taken).
# Assumption: a PIM core reaching another stack pays the host path plus its own
# logic-layer hop, 65 + 21 = 86 ns (the papers give no figure).
PIMCLOUD = DevicePreset(
    name="pimcloud",
    n_stacks=2,
    stack_capacity_gib=8.0,
    channels_per_stack=8,
    stack_bandwidth_gbs=256.0,
    pim_cores_per_stack=8,
    cpu_cores=4,
    cpu_mem_ns=65.0,
    pim_local_ns=21.0,
    pim_remote_ns=86.0,
)

# HBM3-class: 16 channels per stack, about 819 GB/s (DESIGN.md, HBM3). Assumptions,
# labelled as such: 4 stacks of 16 GB, one PIM core per channel (16 per stack),
# 8 big cores; latencies as PIMCloud's (no HBM3-PIM latency figure is published).
HBM3 = DevicePreset(
    name="hbm3",
    n_stacks=4,
    stack_capacity_gib=16.0,
    channels_per_stack=16,
    stack_bandwidth_gbs=819.0,
    pim_cores_per_stack=16,
    cpu_cores=8,
    cpu_mem_ns=65.0,
    pim_local_ns=21.0,
    pim_remote_ns=86.0,
)

PRESETS: dict[str, DevicePreset] = {p.name: p for p in (PIMCLOUD, HBM3)}

AppKind = Literal["lc", "be"]


@dataclass(frozen=True, slots=True)
class AppProfile:
    """Ground truth of one application, known to the emulator only.

    ``cpu_service_ms``: mean service time of one request on a big core with its
    pages anywhere (big cores see uniform latency). ``mem_intensity``: fraction of
    that time stalled on memory. ``r_pim``: R_i, PIM cores worth one big core when
    the pages are local (PIMCloud's definition). Together they fix the small
    core's compute slowdown and how much a remote access hurts. ``shared_fraction``:
    share of hot accesses that go to shared read-only pages (can be replicated).
    """

    name: str
    kind: AppKind = "lc"
    slo_p99_ms: float | None = None
    cpu_service_ms: float = 1.0
    mem_intensity: float = 0.5
    r_pim: float = 2.0
    hot_gib: float = 2.0
    cold_gib: float = 1.0
    shared_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mem_intensity < 1.0:
            raise ValueError(f"app {self.name}: mem_intensity must be in [0, 1)")
        if self.cpu_service_ms <= 0:
            raise ValueError(f"app {self.name}: cpu_service_ms must be > 0")
        if self.kind == "lc" and self.slo_p99_ms is None:
            raise ValueError(f"app {self.name}: a latency-critical app needs slo_p99_ms")
        if not 0.0 <= self.shared_fraction <= 1.0:
            raise ValueError(f"app {self.name}: shared_fraction must be in [0, 1]")

    @property
    def hot_pages(self) -> int:
        return int(self.hot_gib * GIB // PAGE_BYTES)

    @property
    def cold_pages(self) -> int:
        return int(self.cold_gib * GIB // PAGE_BYTES)

    def accesses_per_request(self, cpu_mem_ns: float) -> float:
        """Memory accesses one request makes (from the stall time on a big core)."""
        return self.mem_intensity * self.cpu_service_ms * 1e6 / cpu_mem_ns

    def pim_compute_ms(self, preset: DevicePreset) -> float:
        """Compute part of a request on a PIM core: R_i * s_cpu minus the local stall time."""
        stall = self.accesses_per_request(preset.cpu_mem_ns) * preset.pim_local_ns * 1e-6
        compute = self.r_pim * self.cpu_service_ms - stall
        # A small in-memory core is never faster than a big core at compute.
        return max(compute, (1.0 - self.mem_intensity) * self.cpu_service_ms)
