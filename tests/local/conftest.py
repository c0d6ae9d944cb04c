"""Shared fixtures for the local-controller tests: one small graph, its profile, a plan."""

from __future__ import annotations

import numpy as np
import pytest

from cluster_mgr.local.planner import RoundPlan, RoundPlanner
from cluster_mgr.local.profile import ServiceProfile
from cluster_mgr.sim.fastwin import hotel_search_graph
from cluster_mgr.sim.profiling import profile_graph
from cluster_mgr.workloads import GraphParams

BASE_RPS = 6000.0


@pytest.fixture(scope="session")
def graph() -> GraphParams:
    return hotel_search_graph()


@pytest.fixture(scope="session")
def profile(graph: GraphParams) -> ServiceProfile:
    return profile_graph(graph, BASE_RPS, windows=5)


@pytest.fixture(scope="session")
def plan(graph: GraphParams, profile: ServiceProfile) -> RoundPlan:
    return RoundPlanner(profile, np.full(1, 64.0)).plan(0, graph.service_rates(BASE_RPS)[None])
