"""Declarative scenarios: what cluster, which jobs, what load, what ground truth (docs/scenarios.md)."""

from cluster_mgr.scenario.loader import ScenarioError, load_scenario, parse_scenario
from cluster_mgr.scenario.loads import LoadSpec, read_trace
from cluster_mgr.scenario.schema import (
    GraphEntry,
    JobEntry,
    LatencySurge,
    NodeEvent,
    NodeSpec,
    Scenario,
)

__all__ = [
    "GraphEntry",
    "JobEntry",
    "LatencySurge",
    "LoadSpec",
    "NodeEvent",
    "NodeSpec",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_scenario",
    "read_trace",
]
