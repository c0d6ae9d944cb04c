"""Names of the manager's Ray objects, in one place (agents, replicas and the controller find
each other by name, also after a restart)."""

from __future__ import annotations

import uuid

PREFIX = "cluster-mgr"
CONTROLLER = f"{PREFIX}:controller"


def agent_name(node_id: str) -> str:
    return f"{PREFIX}:agent:{node_id}"


def replica_prefix(node_id: str) -> str:
    return f"{PREFIX}:replica:{node_id}:"


def new_replica_name(node_id: str, job: str) -> str:
    # a fresh suffix per start: a restarted agent cannot reuse a counter it has forgotten
    return f"{replica_prefix(node_id)}{job}:{uuid.uuid4().hex[:8]}"


def pg_name(replica: str) -> str:
    return f"{replica}:pg"


def parse_replica(name: str) -> tuple[str, str]:
    """(node_id, job) of a replica name."""
    rest = name[len(f"{PREFIX}:replica:") :]
    node_id, job, _ = rest.split(":")
    return node_id, job
