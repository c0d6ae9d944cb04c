"""Plan participants: what a NodeAgent applies a plan to, besides its replicas.

A plan reaches a node in two phases (DESIGN.md; issue 8): every participant on
every node first *prepares* the node's part of the plan (validates it and
stages it, changing nothing in force) within a timeout; only when all said yes
does the controller send *commit*; otherwise every participant that prepared
is sent *abort* and the last good plan stays in force. Device agents (the DPU
mesh agent, the PIM agent) are participants; so are the node's replicas.
"""

from __future__ import annotations

from typing import Protocol

from cluster_mgr.model import PlacementPlan, TelemetryWindow


class PlanParticipant(Protocol):
    #: Unique on its node, e.g. "replicas", "mesh", "pim".
    name: str

    def prepare(self, plan: PlacementPlan, node_id: str) -> str | None:
        """Validate and stage this node's part of ``plan``. Return None to vote yes, or
        the reason for a no. Must not change what is in force."""
        ...

    def commit(self, epoch: int) -> None:
        """Put the staged part of plan ``epoch`` in force (no-op if nothing is staged for it)."""
        ...

    def abort(self, epoch: int) -> None:
        """Drop what was staged for ``epoch``; the last committed plan stays in force."""
        ...

    def telemetry(self, now: float) -> list[TelemetryWindow]:
        """Counters since the last call, as telemetry windows (device counters in ``extras``)."""
        ...

    def close(self) -> None:
        """Stop whatever the participant started (agents, proxies)."""
        ...
