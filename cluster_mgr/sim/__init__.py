"""The in-process sim backend: the real controllers, learners, policies and placement on a virtual clock."""

from cluster_mgr.sim.engine import SimOptions, Simulation, run_scenario
from cluster_mgr.sim.result import RunResult

__all__ = ["RunResult", "SimOptions", "Simulation", "run_scenario"]
