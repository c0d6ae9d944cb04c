"""Offline profiling of a graph, as an operator would run it once (SurgeGuard's profiles).

Runs the fast-window emulation (``sim.fastwin``) at nominal load with a
comfortable allocation (utilisation ``PROFILE_UTIL`` per service, nominal
frequency, no surge, no noise) and records each service's P99 execution time
and mean time-from-start. Controllers size with the resulting
``ServiceProfile``, never with the emulation's ground truth.
"""

from __future__ import annotations

import numpy as np

from cluster_mgr.local.knobs import Knobs, quantize_up
from cluster_mgr.local.profile import ServiceProfile, graph_structure
from cluster_mgr.sim.fastwin import GraphEmulator, SurgeScenario
from cluster_mgr.workloads import GraphParams

PROFILE_UTIL = 0.6


def profile_cores(graph: GraphParams, load_rps: float) -> np.ndarray:
    work = graph.service_rates(load_rps) * graph.service_ms / 1000.0  # busy cores
    return quantize_up(work / PROFILE_UTIL)


def profile_graph(graph: GraphParams, load_rps: float, windows: int = 20) -> ServiceProfile:
    """Average noiseless measurements over ``windows`` fast windows at ``load_rps``."""
    sc = SurgeScenario(base_rps=np.array([load_rps]), duration_s=windows * 0.1, seed=12345,
                       noise=0.0)  # fmt: skip
    emu = GraphEmulator(graph, sc, slo_ms=np.array([np.inf]))
    knobs = Knobs.initial(profile_cores(graph, load_rps)[None, :])
    ex, up = [], []
    for _ in range(windows):
        s = emu.step(knobs)
        ex.append(s.exec_p99_ms[0])
        up.append(s.upstream_ms[0])
    anc, path = graph_structure(graph)
    return ServiceProfile(
        services=graph.services,
        service_ms=graph.service_ms.copy(),
        cv=graph.cv.copy(),
        freq_exponent=graph.freq_exponent.copy(),
        ancestors=anc,
        path_len=path,
        exec_p99_ms=np.mean(ex, axis=0),
        upstream_ms=np.mean(up, axis=0),
    )
