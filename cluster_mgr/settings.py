"""The manager's configuration, as one frozen dataclass (loaded from TOML by cluster_mgr.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster_mgr.model import DEFAULT_ROUND_S, FAST_WINDOW_S, TELEMETRY_WINDOW_S, JobSpec

DPU_PRESETS = ("bluefield2", "bluefield3")
#: Per-node fast controllers a NodeAgent can host (docs/local_control.md); "none": no fast layer.
LOCAL_CONTROLLERS = ("none", "ours", "surgeguard", "parties", "caladan", "autothrottle")
PIM_PRESETS = ("pimcloud", "hbm3")


@dataclass(frozen=True)
class DeviceOptions:
    """A node's emulated devices (docs/devices.md). All off by default.

    ``envoy``: run the DPU mesh agent with a real Envoy as the node proxy, on the
    ``dpu_preset`` device (or connect to ``mesh_address`` with ``mesh_token``).
    ``pim_preset``: run the PIM agent on that device preset (or connect to
    ``pim_address`` with ``pim_token``); ``pim_apps``: job -> {profile, load_rps,
    big_cores} registered with it.
    """

    envoy: bool = False
    dpu_preset: str = "bluefield2"
    mesh_address: str | None = None
    mesh_token: str | None = None
    pim_preset: str | None = None
    pim_address: str | None = None
    pim_token: str | None = None
    pim_apps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.envoy or self.mesh_address or self.pim_preset or self.pim_address)

    def as_options(self) -> dict[str, Any]:
        """Plain options for ``actors.devices.participants_for_node``."""
        return {
            "envoy": self.envoy, "dpu_preset": self.dpu_preset, "mesh_address": self.mesh_address,
            "mesh_token": self.mesh_token, "pim_preset": self.pim_preset,
            "pim_address": self.pim_address, "pim_token": self.pim_token,
            "pim_apps": {k: dict(v) for k, v in self.pim_apps.items()},
        }  # fmt: skip


def devices_for_node(devices: dict[str, DeviceOptions], node_id: str) -> DeviceOptions:
    """The node's own entry, else ``"default"``, else everything off."""
    return devices.get(node_id) or devices.get("default") or DeviceOptions()


@dataclass(frozen=True)
class ManagerConfig:
    """Everything ``cluster-mgr up`` needs.

    ``address``: "local" starts a private local Ray instance (the embedded
    default); anything else is passed to ``ray.init(address=...)`` to join a
    cluster, where the manager runs as detached named actors in ``namespace``.
    ``shadow``: decide and log, enforce nothing.
    """

    address: str = "local"
    namespace: str = "cluster-mgr"
    policy: str = "fair_share"
    policy_options: dict[str, Any] = field(default_factory=dict)
    learner: str = "interval"
    learner_options: dict[str, Any] = field(default_factory=dict)
    round_s: float = DEFAULT_ROUND_S
    telemetry_window_s: float = TELEMETRY_WINDOW_S
    fast_window_s: float = FAST_WINDOW_S
    shadow: bool = False
    log_uri: str = "runs/cluster-mgr"
    admin_bind: str = "127.0.0.1:50151"
    admin_token: str = ""
    metrics_bind: str | None = "127.0.0.1:9464"
    seed: int = 0
    object_store_mb: int = 100
    num_cpus: int | None = None  # local mode only: logical CPUs of the local Ray instance
    jobs: tuple[JobSpec, ...] = ()
    # node id (or "default") -> its emulated devices; empty: no device agents anywhere
    devices: dict[str, DeviceOptions] = field(default_factory=dict)
    # the per-node fast controller each NodeAgent hosts (one of LOCAL_CONTROLLERS; "none" by
    # default: the global allocator alone) and its options (docs/local_control.md)
    local_controller: str = "none"
    local_options: dict[str, Any] = field(default_factory=dict)
