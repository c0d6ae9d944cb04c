"""The one set of plain data types that every layer shares.

Everything here is a frozen dataclass or a pure function over them. Importing
this module (or the ``cluster_mgr`` package) must not import Ray, gRPC or
pyarrow: learners/ and allocators/ depend on it and must stay pure.

Units (DESIGN.md): cpu in CPUs with a 0.1 quantum, memory in GiB, gpu and
custom Ray resources as generic counts, pim_cores integral, mesh in admitted
requests/s at the node proxy. Times are seconds unless a name says ``_ms``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Literal, Protocol

import numpy as np

RESOURCE_KINDS: tuple[str, ...] = ("cpu", "memory", "gpu", "pim_cores", "mesh")
CPU_QUANTUM = 0.1
FAST_WINDOW_S = 0.1
TELEMETRY_WINDOW_S = 1.0
DEFAULT_ROUND_S = 30.0

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class ModelError(ValueError):
    """A value of the data model is malformed; the message says which and why."""


def _check_finite(what: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{what}: expected a number, got {value!r}") from exc
    if not math.isfinite(value):
        raise ModelError(f"{what}: expected a finite number, got {value!r}")
    return value


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModelError(
            f"{what}: {name!r} is not a valid name (lowercase letters, digits, '.', '_', '-'; "
            "starting with a letter or digit; at most 63 characters)"
        )
    return name


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True)
class ResourceVector:
    """An amount of every resource kind; unknown Ray custom resources live in ``custom``."""

    cpu: float = 0.0
    memory: float = 0.0
    gpu: float = 0.0
    pim_cores: float = 0.0
    mesh: float = 0.0
    custom: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for kind in RESOURCE_KINDS:
            object.__setattr__(self, kind, _check_finite(kind, getattr(self, kind)))
        custom = tuple(sorted((str(k), _check_finite(k, v)) for k, v in dict(self.custom).items()))
        for k, _ in custom:
            if k in RESOURCE_KINDS:
                raise ModelError(f"custom resource {k!r} shadows a built-in kind")
        object.__setattr__(self, "custom", custom)

    @classmethod
    def from_dict(cls, amounts: Mapping[str, float] | None) -> ResourceVector:
        amounts = dict(amounts or {})
        builtin = {k: amounts.pop(k) for k in RESOURCE_KINDS if k in amounts}
        return cls(**builtin, custom=tuple(amounts.items()))

    def as_dict(self, *, nonzero: bool = False) -> dict[str, float]:
        out = {k: getattr(self, k) for k in RESOURCE_KINDS}
        out.update(self.custom)
        return {k: v for k, v in out.items() if v != 0.0} if nonzero else out

    def kinds(self) -> tuple[str, ...]:
        return RESOURCE_KINDS + tuple(k for k, _ in self.custom)

    def get(self, kind: str) -> float:
        if kind in RESOURCE_KINDS:
            return getattr(self, kind)
        return dict(self.custom).get(kind, 0.0)

    def with_amount(self, kind: str, amount: float) -> ResourceVector:
        d = self.as_dict()
        d[kind] = amount
        return ResourceVector.from_dict(d)

    def _combine(self, other: ResourceVector, op: Any) -> ResourceVector:
        a, b = self.as_dict(), other.as_dict()
        return ResourceVector.from_dict(
            {k: op(a.get(k, 0.0), b.get(k, 0.0)) for k in a.keys() | b.keys()}
        )

    def __add__(self, other: ResourceVector) -> ResourceVector:
        return self._combine(other, lambda x, y: x + y)

    def __sub__(self, other: ResourceVector) -> ResourceVector:
        return self._combine(other, lambda x, y: x - y)

    def scale(self, factor: float) -> ResourceVector:
        return ResourceVector.from_dict({k: v * factor for k, v in self.as_dict().items()})

    def minimum(self, other: ResourceVector) -> ResourceVector:
        return self._combine(other, min)

    def maximum(self, other: ResourceVector) -> ResourceVector:
        return self._combine(other, max)

    def fits_in(self, capacity: ResourceVector, tol: float = 1e-9) -> bool:
        cap = capacity.as_dict()
        return all(v <= cap.get(k, 0.0) + tol for k, v in self.as_dict().items() if v > 0)

    def over(self, capacity: ResourceVector, tol: float = 1e-9) -> dict[str, float]:
        """The kinds on which this vector exceeds ``capacity``, and by how much."""
        cap = capacity.as_dict()
        return {
            k: v - cap.get(k, 0.0) for k, v in self.as_dict().items() if v > cap.get(k, 0.0) + tol
        }

    def is_nonnegative(self) -> bool:
        return all(v >= 0.0 for v in self.as_dict().values())

    def check_nonnegative(self, what: str) -> ResourceVector:
        neg = {k: v for k, v in self.as_dict().items() if v < 0}
        if neg:
            raise ModelError(f"{what}: amounts must be non-negative, got {neg}")
        return self

    @staticmethod
    def total(vectors: Iterable[ResourceVector]) -> ResourceVector:
        out = ResourceVector()
        for v in vectors:
            out = out + v
        return out


ZERO = ResourceVector()

# Trusted construction for internal hot paths (packing, allocations of 1,000 jobs): the slot
# setters skip the frozen dataclass's checks and its per-field object.__setattr__ calls.
# RV_SETTERS: cpu, memory, gpu, pim_cores, mesh, custom (a loop may bind them locally).
RV_SETTERS = tuple(ResourceVector.__dict__[k].__set__ for k in (*RESOURCE_KINDS, "custom"))


def unchecked_vector(
    cpu: float,
    memory: float = 0.0,
    gpu: float = 0.0,
    pim_cores: float = 0.0,
    mesh: float = 0.0,
    custom: tuple[tuple[str, float], ...] = (),
) -> ResourceVector:
    """A ResourceVector built WITHOUT validation, for internal code whose inputs are already valid.

    The caller guarantees finite floats and a ``custom`` as ``ResourceVector`` keeps it (sorted,
    finite, no built-in kind). User input must go through ``ResourceVector(...)`` or
    ``from_dict``, which raise ModelError on bad values.
    """
    out = object.__new__(ResourceVector)
    s_cpu, s_memory, s_gpu, s_pim, s_mesh, s_custom = RV_SETTERS
    s_cpu(out, cpu)
    s_memory(out, memory)
    s_gpu(out, gpu)
    s_pim(out, pim_cores)
    s_mesh(out, mesh)
    s_custom(out, custom)
    return out


def quantize_cpu(cpus: float) -> float:
    """Round down to the 0.1-CPU quantum (never hands out more than was decided)."""
    return math.floor(cpus / CPU_QUANTUM + 1e-9) * CPU_QUANTUM


# --------------------------------------------------------------------------- jobs


class JobKind(StrEnum):
    LATENCY_CRITICAL = "latency_critical"
    THROUGHPUT = "throughput"
    BATCH = "batch"
    MICROSERVICE = "microservice"
    BEST_EFFORT = "best_effort"
    INFERENCE = "inference"


Scaling = Literal["linear", "sqrt", "quadratic"]
SCALINGS: tuple[str, ...] = ("linear", "sqrt", "quadratic")


@dataclass(frozen=True, slots=True)
class SLO:
    """What a job needs, in its own terms.

    ``metric="latency"``: the ``percentile`` of request latency must be at most
    ``target`` ms. Reward = fraction of requests within ``target`` (rejected and
    timed-out requests count as misses), and the SLO holds when the reward
    reaches ``threshold`` (default ``percentile / 100``).
    ``metric="throughput"``: goodput of at least ``target`` requests/s; reward =
    min(1, goodput / target).
    """

    metric: Literal["latency", "throughput"] = "latency"
    target: float = 100.0
    percentile: float = 99.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("latency", "throughput"):
            raise ModelError(f"slo.metric: expected 'latency' or 'throughput', got {self.metric!r}")
        if _check_finite("slo.target", self.target) <= 0:
            raise ModelError(f"slo.target: must be > 0, got {self.target}")
        if not 0 < _check_finite("slo.percentile", self.percentile) < 100:
            raise ModelError(f"slo.percentile: must be in (0, 100), got {self.percentile}")
        if (
            self.threshold is not None
            and not 0 < _check_finite("slo.threshold", self.threshold) <= 1
        ):
            raise ModelError(f"slo.threshold: must be in (0, 1], got {self.threshold}")

    @property
    def reward_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return self.percentile / 100.0 if self.metric == "latency" else 1.0


@dataclass(frozen=True, slots=True)
class UtilitySpec:
    """How reward turns into utility: Cilantro's min(1, reward / threshold), then scaled.

    ``objective`` names a plug-in objective (registered in allocators) that
    replaces the built-in scaling; None uses ``scaling``.
    """

    scaling: Scaling = "linear"
    objective: str | None = None

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ModelError(f"utility.scaling: expected one of {SCALINGS}, got {self.scaling!r}")


def utility_from_reward(
    reward: np.ndarray | float, threshold: float, scaling: str = "linear"
) -> np.ndarray:
    """Cilantro's utility: u = min(1, reward / threshold), then linear, sqrt or quadratic."""
    u = np.clip(np.asarray(reward, dtype=float) / threshold, 0.0, 1.0)
    if scaling == "linear":
        return u
    if scaling == "sqrt":
        return np.sqrt(u)
    if scaling == "quadratic":
        return u * u
    raise ModelError(f"unknown utility scaling {scaling!r}; expected one of {SCALINGS}")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as its owner states it.

    ``minimum`` and ``maximum`` bound the allocation per resource kind
    (``maximum=None``: unbounded). ``pins`` restricts placement to those node
    ids. ``replica_cpus`` is the CPU size of one replica, the unit in which the
    slow path (Ray actors) scales the job; the fast path divides the job's CPU
    inside its replicas with an emulated quota. ``workload`` is the ground-truth
    model used only by the emulation (sim backend, emulated replicas); the
    manager never reads it.
    """

    name: str
    kind: JobKind = JobKind.LATENCY_CRITICAL
    slo: SLO | None = None
    utility: UtilitySpec = field(default_factory=UtilitySpec)
    weight: float = 1.0
    priority: int = 0
    minimum: ResourceVector = ZERO
    maximum: ResourceVector | None = None
    pins: tuple[str, ...] = ()
    replica_cpus: float = 1.0
    workload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("job.name", self.name)
        try:
            object.__setattr__(self, "kind", JobKind(self.kind))
        except ValueError as exc:
            raise ModelError(
                f"job {self.name}: kind {self.kind!r} is not one of {[k.value for k in JobKind]}"
            ) from exc
        if _check_finite(f"job {self.name}: weight", self.weight) <= 0:
            raise ModelError(f"job {self.name}: weight must be > 0, got {self.weight}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ModelError(f"job {self.name}: priority must be an integer, got {self.priority!r}")
        self.minimum.check_nonnegative(f"job {self.name}: minimum")
        if self.maximum is not None:
            self.maximum.check_nonnegative(f"job {self.name}: maximum")
            over = self.minimum.over(self.maximum)
            if over:
                raise ModelError(f"job {self.name}: minimum exceeds maximum on {sorted(over)}")
        if _check_finite(f"job {self.name}: replica_cpus", self.replica_cpus) <= 0:
            raise ModelError(f"job {self.name}: replica_cpus must be > 0, got {self.replica_cpus}")
        object.__setattr__(self, "pins", tuple(self.pins))

    @property
    def reward_threshold(self) -> float:
        return self.slo.reward_threshold if self.slo is not None else 1.0

    def bound_max(self, kind: str) -> float:
        return math.inf if self.maximum is None else self.maximum.get(kind)

    def evolve(self, **changes: Any) -> JobSpec:
        return replace(self, **changes)


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the manager sees it: capacity already excludes work outside the manager."""

    node_id: str
    capacity: ResourceVector
    alive: bool = True
    draining: bool = False
    address: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def schedulable(self) -> bool:
        return self.alive and not self.draining


# --------------------------------------------------------------------------- feedback


@dataclass(frozen=True, slots=True)
class Observation:
    """One job's feedback for one telemetry window, as learners consume it.

    ``alloc`` is the allocation the learner models (a 1-tuple of CPUs for most
    jobs; one entry per service for a microservice graph); ``value`` is the
    performance learned (reward in [0, 1], or P99 ms for a latency model);
    ``sigma`` the standard deviation of its noise (> 0).
    """

    job: str
    time: float
    alloc: tuple[float, ...]
    load: float
    value: float
    sigma: float
    window_s: float = TELEMETRY_WINDOW_S

    def __post_init__(self) -> None:
        alloc = self.alloc
        if isinstance(alloc, int | float | np.floating | np.integer):
            alloc = (float(alloc),)
        alloc = tuple(_check_finite("observation.alloc", a) for a in alloc)
        if not alloc:
            raise ModelError("observation.alloc: must have at least one entry")
        if any(a < 0 for a in alloc):
            raise ModelError(f"observation.alloc: must be >= 0, got {alloc}")
        object.__setattr__(self, "alloc", alloc)
        if _check_finite("observation.load", self.load) < 0:
            raise ModelError(f"observation.load: must be >= 0, got {self.load}")
        _check_finite("observation.value", self.value)
        if _check_finite("observation.sigma", self.sigma) <= 0:
            raise ModelError(f"observation.sigma: must be > 0, got {self.sigma}")


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Allocation:
    """Amount per job per resource kind, as decided in one round."""

    amounts: Mapping[str, ResourceVector]
    round: int = 0
    epoch: int = 0
    time: float = 0.0
    policy: str = ""

    def get(self, job: str) -> ResourceVector:
        return self.amounts.get(job, ZERO)

    def total(self) -> ResourceVector:
        return ResourceVector.total(self.amounts.values())

    def jobs(self) -> tuple[str, ...]:
        return tuple(sorted(self.amounts))

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "epoch": self.epoch,
            "time": self.time,
            "policy": self.policy,
            "amounts": {j: v.as_dict(nonzero=True) for j, v in sorted(self.amounts.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Allocation:
        return cls(
            amounts={j: ResourceVector.from_dict(v) for j, v in d["amounts"].items()},
            round=int(d.get("round", 0)),
            epoch=int(d.get("epoch", 0)),
            time=float(d.get("time", 0.0)),
            policy=str(d.get("policy", "")),
        )


@dataclass(frozen=True, slots=True)
class NodeShare:
    """What one job gets on one node: replicas and the resources they hold together."""

    node_id: str
    job: str
    replicas: int
    resources: ResourceVector

    @property
    def cpu_per_replica(self) -> float:
        return self.resources.cpu / self.replicas if self.replicas else 0.0


# node_id, job, replicas, resources (a loop may bind them locally)
SHARE_SETTERS = tuple(
    NodeShare.__dict__[k].__set__ for k in ("node_id", "job", "replicas", "resources")
)


def unchecked_share(node_id: str, job: str, replicas: int, resources: ResourceVector) -> NodeShare:
    """``NodeShare(node_id, job, replicas, resources)`` by its slot setters (NodeShare has no checks
    to skip; its frozen ``__init__`` costs a packing of 1,000 jobs about a millisecond)."""
    out = object.__new__(NodeShare)
    s_node, s_job, s_replicas, s_resources = SHARE_SETTERS
    s_node(out, node_id)
    s_job(out, job)
    s_replicas(out, replicas)
    s_resources(out, resources)
    return out


@dataclass(frozen=True, slots=True)
class PagePlacement:
    """Fraction of a job's pages held by each PIM stack of a node (sums to 1)."""

    node_id: str
    job: str
    stack_fractions: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class MeshShare:
    """The node proxy's admission for a job: a token-bucket rate and routing weights."""

    node_id: str
    job: str
    rate_limit_rps: float
    weights: tuple[tuple[str, float], ...] = ()  # (upstream node id, weight)


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """An Allocation made concrete per node and per device. ``epoch`` fences stale plans."""

    epoch: int
    round: int
    shares: tuple[NodeShare, ...] = ()
    pages: tuple[PagePlacement, ...] = ()
    mesh: tuple[MeshShare, ...] = ()

    def for_node(self, node_id: str) -> tuple[NodeShare, ...]:
        return tuple(s for s in self.shares if s.node_id == node_id)

    def for_job(self, job: str) -> tuple[NodeShare, ...]:
        return tuple(s for s in self.shares if s.job == job)

    def node_usage(self) -> dict[str, ResourceVector]:
        usage: dict[str, ResourceVector] = {}
        for s in self.shares:
            usage[s.node_id] = usage.get(s.node_id, ZERO) + s.resources
        return usage

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "round": self.round,
            "shares": [
                {
                    "node_id": s.node_id,
                    "job": s.job,
                    "replicas": s.replicas,
                    "resources": s.resources.as_dict(nonzero=True),
                }
                for s in self.shares
            ],
            "pages": [
                {"node_id": p.node_id, "job": p.job, "stack_fractions": list(p.stack_fractions)}
                for p in self.pages
            ],
            "mesh": [
                {
                    "node_id": m.node_id,
                    "job": m.job,
                    "rate_limit_rps": m.rate_limit_rps,
                    "weights": [list(w) for w in m.weights],
                }
                for m in self.mesh
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlacementPlan:
        return cls(
            epoch=int(d["epoch"]),
            round=int(d["round"]),
            shares=tuple(
                NodeShare(
                    s["node_id"],
                    s["job"],
                    int(s["replicas"]),
                    ResourceVector.from_dict(s["resources"]),
                )
                for s in d.get("shares", ())
            ),
            pages=tuple(
                PagePlacement(p["node_id"], p["job"], tuple(p["stack_fractions"]))
                for p in d.get("pages", ())
            ),
            mesh=tuple(
                MeshShare(
                    m["node_id"],
                    m["job"],
                    float(m["rate_limit_rps"]),
                    tuple((str(a), float(b)) for a, b in m.get("weights", ())),
                )
                for m in d.get("mesh", ())
            ),
        )


# --------------------------------------------------------------------------- telemetry

# Fixed log-spaced latency histogram (Prometheus-style) so request-level
# percentiles over any period can be computed by merging windows: 96 buckets
# from 10 us to ~100 s, each 18.3% wider than the last (percentile error < 10%).
LATENCY_BUCKET_EDGES_MS: np.ndarray = np.geomspace(0.01, 100_000.0, 97)
N_LATENCY_BUCKETS = len(LATENCY_BUCKET_EDGES_MS) - 1


def latency_histogram(latencies_ms: np.ndarray | Iterable[float]) -> np.ndarray:
    """Counts per bucket (values outside the range land in the first / last bucket)."""
    lat = np.asarray(
        list(latencies_ms) if not isinstance(latencies_ms, np.ndarray) else latencies_ms,
        dtype=float,
    )
    idx = np.searchsorted(LATENCY_BUCKET_EDGES_MS, lat, side="right") - 1
    idx = np.clip(idx, 0, N_LATENCY_BUCKETS - 1)
    return np.bincount(idx, minlength=N_LATENCY_BUCKETS).astype(np.int64)


def histogram_percentile(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) of a latency histogram, interpolated geometrically in its bucket."""
    hist = np.asarray(hist, dtype=float)
    n = hist.sum()
    if n <= 0:
        return math.nan
    rank = q / 100.0 * n
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, rank, side="left"))
    i = min(i, N_LATENCY_BUCKETS - 1)
    below = cum[i - 1] if i > 0 else 0.0
    frac = 0.0 if hist[i] == 0 else min(max((rank - below) / hist[i], 0.0), 1.0)
    lo, hi = LATENCY_BUCKET_EDGES_MS[i], LATENCY_BUCKET_EDGES_MS[i + 1]
    return float(lo * (hi / lo) ** frac)


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """One replica's (or one job-on-node's) counters for one window.

    ``seq`` numbers a replica's windows from 0, so a gap means a lost window.
    Rejected and timed-out requests are counted apart and are SLO misses.
    ``latency_hist`` uses LATENCY_BUCKET_EDGES_MS. ``extras`` carries device
    counters (mesh, PIM) under their own names.
    """

    job: str
    node_id: str
    replica: str
    seq: int
    start: float
    end: float
    offered: int = 0
    completed: int = 0
    rejected: int = 0
    timed_out: int = 0
    within_slo: int = 0
    latency_mean_ms: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p95_ms: float = math.nan
    latency_p99_ms: float = math.nan
    exec_ms_mean: float = math.nan
    upstream_ms_mean: float = math.nan
    cpu_quota: float = 0.0
    cpu_used_s: float = 0.0
    throttled_s: float = 0.0
    frequency: float = 1.0
    concurrency: int = 0
    latency_hist: tuple[int, ...] = ()
    extras: Mapping[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def misses(self) -> int:
        return self.offered - self.within_slo


TELEMETRY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TelemetryWindow))


# --------------------------------------------------------------------------- models


class PerformanceModel(Protocol):
    """What allocators need from a learner (or from ground truth, for oracles).

    ``bounds`` is vectorized: ``alloc`` has shape (m,) or (m, d), ``load`` is a
    scalar or shape (m,); it returns three arrays of shape (m,): the lower
    confidence bound, the mean estimate and the upper confidence bound of the
    job's performance value (reward in [0, 1] unless the model says otherwise).
    """

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
