"""The manager's configuration, as one frozen dataclass (loaded from TOML by cluster_mgr.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster_mgr.model import DEFAULT_ROUND_S, FAST_WINDOW_S, TELEMETRY_WINDOW_S, JobSpec


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
