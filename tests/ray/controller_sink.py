"""A stand-in for the Controller's telemetry side, for tests that drive NodeAgents directly.

Registered under the controller's name, it keeps every window the agents push, acks every
push, serves a job's replicas to load generators and takes the fast layers' events.
"""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0, max_concurrency=8)
class ControllerSink:
    def __init__(self) -> None:
        self.windows: list[Any] = []
        self.replicas: dict[str, dict[str, Any]] = {}
        self.local: list[dict[str, Any]] = []

    def ingest(self, node_id: str, table: Any, meta: dict[str, Any], push: dict[str, Any] | None = None
               ) -> dict[str, Any]:  # fmt: skip
        from cluster_mgr.telemetry import batch_to_windows

        self.replicas[node_id] = meta.get("replicas", {})
        rows = batch_to_windows(table) if table is not None else []
        self.windows.extend(rows)
        return {"incarnation": "sink", "durable": int((push or {}).get("id", -1)), "rows": len(rows)}

    def endpoints(self, job: str) -> list[str]:
        return sorted(n for reps in self.replicas.values() for n, i in reps.items() if i.get("job") == job)

    def local_events(self, node_id: str, events: list[dict[str, Any]]) -> None:
        self.local.extend(events)

    def since(self, job: str, t: float) -> list[Any]:
        """The job's windows that started at or after ``t``."""
        return [w for w in self.windows if w.job == job and w.start >= t - 1e-6]

    def mesh_windows(self, job: str) -> list[Any]:
        """The job's windows from the mesh participants."""
        return [w for w in self.windows if w.job == job and ":participant.mesh:" in w.replica]
