"""The policy interface: a pure decision over a plain snapshot (Ray autoscaler v2 style).

A policy is a class with one decision method, ``decide(snapshot, state) ->
(allocation, state)``. ``state`` is plain JSON-able data (dicts, lists,
numbers, strings) that the controller logs with each decision and hands back
on the next round, also after a restart: a policy keeps nothing else between
rounds that it cannot rebuild from the snapshot.

Runtime signals (``Snapshot.signals``): job -> {key: value}, the latest
measured values for policies that act on measurements rather than on models
(Parties, Caladan, HPA, Ray Serve, PID, MIAD, the observed-welfare searches).
Keys, all optional (a policy skips a job whose key it needs is missing):

- ``p99_ms``: measured P99 latency of the last fast window (ms).
- ``reward``: measured reward of the last telemetry window, in [0, 1].
- ``queue_len``: requests queued or in flight, summed over the job's replicas.
- ``queue_delay_ms``: mean queueing delay of the last window (ms).
- ``utilization``: CPU used / CPU allocated over the last window, in [0, 1+].
- ``cpu_throttled_frac``: fraction of the window the CPU quota throttled.
- ``load``: offered load of the last window (requests/s).

A policy's own cadence (Parties 100 ms, HPA 15 s, Cilantro 120 s) is kept in
its state from ``Snapshot.time``, since ``decide`` runs once per controller step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from typing import Any, ClassVar

from cluster_mgr.model import (
    RESOURCE_KINDS,
    ZERO,
    Allocation,
    JobSpec,
    NodeInfo,
    PerformanceModel,
    ResourceVector,
)

PolicyState = dict[str, Any]


class PolicyError(ValueError):
    """A policy cannot decide on this snapshot (for example minimums above capacity)."""


class InfeasibleError(PolicyError):
    """The jobs' minimums (or pins) cannot all be met with the capacity there is."""


@dataclass(frozen=True)
class Snapshot:
    """Everything a policy may look at, as plain data.

    ``models`` maps job name to its learned performance model (reward as a
    function of (cpu, load) unless a policy documents otherwise); ``loads`` the
    load (requests/s) forecast for the coming round; ``last`` the allocation in
    force. ``capacity`` defaults to the sum over schedulable nodes.
    """

    time: float
    round: int
    nodes: tuple[NodeInfo, ...]
    jobs: tuple[JobSpec, ...]
    models: Mapping[str, PerformanceModel] = field(default_factory=dict)
    loads: Mapping[str, float] = field(default_factory=dict)
    last: Allocation | None = None
    seed: int = 0
    epoch: int = 0
    signals: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @cached_property
    def capacity(self) -> ResourceVector:
        # Cached: the snapshot is frozen, and summing 1,000 nodes' vectors is not free.
        return sum_vectors(n.capacity for n in self.nodes if n.schedulable)

    @cached_property
    def _job_names(self) -> tuple[str, ...]:
        # Cached: every policy's allocation is keyed by them, 1,000 jobs per round.
        return tuple(j.name for j in self.jobs)

    def job(self, name: str) -> JobSpec:
        for j in self.jobs:
            if j.name == name:
                return j
        raise KeyError(name)

    def allocation(self, amounts: Mapping[str, ResourceVector], policy: str) -> Allocation:
        """Wrap amounts for every job of the snapshot (absent jobs get zero)."""
        get = amounts.get
        full = {n: get(n, ZERO) for n in self._job_names}
        return Allocation(
            amounts=full, round=self.round, epoch=self.epoch, time=self.time, policy=policy
        )


class Policy(ABC):
    """Base class of every allocation policy (ours, baselines, oracles, plug-ins)."""

    name: ClassVar[str] = "policy"
    #: "ours", "baseline", "oracle" or "plug-in" (what ``cluster-mgr policies`` shows).
    kind: ClassVar[str] = "plug-in"
    #: One line for ``cluster-mgr policies``.
    description: ClassVar[str] = ""
    #: Where the policy comes from (paper, system), for the listing and the docs.
    source: ClassVar[str] = ""
    #: Resource kinds this policy divides; other kinds stay at each job's minimum.
    resources: ClassVar[tuple[str, ...]] = ("cpu",)
    #: Capacity fraction the policy deliberately leaves idle (work-conservation checks allow it).
    reserve: ClassVar[float] = 0.0

    def initial_state(self) -> PolicyState:
        return {}

    @abstractmethod
    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        """Return the allocation for this round and the state to keep for the next."""


def sum_vectors(vectors: Iterable[ResourceVector]) -> ResourceVector:
    """Sum of resource vectors, one pass per kind (ResourceVector.total builds one vector per
    step; a per-vector loop over the kinds cost a millisecond per 1,000 jobs)."""
    vs = vectors if isinstance(vectors, (list, tuple)) else list(vectors)
    acc: dict[str, float] = {}
    for k in RESOURCE_KINDS:
        total = sum(map(attrgetter(k), vs))
        if total != 0.0:
            acc[k] = total
    for v in vs:
        for k, x in v.custom:
            acc[k] = acc.get(k, 0.0) + x
    acc = {k: x for k, x in acc.items() if x != 0.0}
    return ResourceVector.from_dict(acc) if acc else ZERO


def check_feasible(snapshot: Snapshot, kinds: tuple[str, ...] | None = None) -> None:
    """Raise InfeasibleError when the sum of minimums exceeds capacity on some kind."""
    need = sum_vectors(j.minimum for j in snapshot.jobs)
    over = need.over(snapshot.capacity)
    if kinds is not None:
        over = {k: v for k, v in over.items() if k in kinds}
    if over:
        detail = ", ".join(f"{k} short by {v:.3g}" for k, v in sorted(over.items()))
        raise InfeasibleError(
            f"job minimums exceed capacity ({detail}); remove a job or lower a minimum"
        )
