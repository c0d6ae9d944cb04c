"""Device presets for scenario nodes (figures from DESIGN.md, "Real PIM and DPU hardware").

A scenario names a preset and may override any parameter; a table without a
preset must give every parameter (the project is also measured on devices it
does not ship a preset for).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PimDevice:
    """An HBM-PIM memory system: stacks with small in-memory cores in their logic layer."""

    preset: str
    stacks: int
    cores_per_stack: int
    stack_gb: float
    cpu_access_ns: float  # memory access latency from a host CPU core
    pim_access_ns: float  # from a PIM core in the stack
    page_move_us: float  # per 4 KB page

    @property
    def cores(self) -> int:
        return self.stacks * self.cores_per_stack


@dataclass(frozen=True)
class DpuDevice:
    """A data processing unit on the NIC that runs the node's service-mesh proxy."""

    preset: str
    arm_cores: int
    gbps: float
    memory_gb: float
    rps_per_core: float  # requests/s one Arm core proxies (sets the node's mesh capacity)

    @property
    def mesh_rps(self) -> float:
        return self.arm_cores * self.rps_per_core


PIM_PRESETS: dict[str, dict[str, Any]] = {
    # PIMCloud (HPCA '22): two stacks, each 8 GB with 8 small cores; 65 ns vs 21 ns; ~1 us/page.
    "pimcloud": dict(stacks=2, cores_per_stack=8, stack_gb=8.0, cpu_access_ns=65.0,
                     pim_access_ns=21.0, page_move_us=1.0),
    # Samsung Aquabolt-XL HBM-PIM: 128 units per stack; exposed here as 16 schedulable core groups.
    "hbm-pim": dict(stacks=1, cores_per_stack=16, stack_gb=6.0, cpu_access_ns=65.0,
                    pim_access_ns=21.0, page_move_us=1.0),
    # UPMEM: 128 in-memory cores per DIMM, 64 MB each.
    "upmem": dict(stacks=1, cores_per_stack=128, stack_gb=8.0, cpu_access_ns=65.0,
                  pim_access_ns=30.0, page_move_us=6.0),
}  # fmt: skip

def _dpu_presets() -> dict[str, dict[str, Any]]:
    """The DPU presets of the device emulator (dpu_agent.device), so a scenario's BlueField is
    the same device the Ray backend's mesh agent emulates; named as in a manager config
    (``bluefield2``) or hyphenated (``bluefield-2``)."""
    from dpu_agent.device import PRESETS

    out: dict[str, dict[str, Any]] = {}
    for name, spec in PRESETS.items():
        params = dict(arm_cores=spec.cores, gbps=spec.line_rate_gbps, memory_gb=spec.memory_gib,
                      rps_per_core=spec.rps_per_core)  # fmt: skip
        out[name] = out[name.replace("bluefield", "bluefield-")] = params
    return out


DPU_PRESETS: dict[str, dict[str, Any]] = _dpu_presets()

PIM_FIELDS = tuple(f.name for f in fields(PimDevice) if f.name != "preset")
DPU_FIELDS = tuple(f.name for f in fields(DpuDevice) if f.name != "preset")
