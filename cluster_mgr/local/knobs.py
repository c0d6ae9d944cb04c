"""Fast-path actions as plain data, and the per-node budget they must fit in.

A controller's decision is a full ``Knobs`` value (arrays over nodes x
services); ``diff_actions`` turns the change into the list of ``FastAction``
records a NodeAgent enforces and the global allocator is told about.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from cluster_mgr.model import CPU_QUANTUM

ActionKind = Literal["quota", "frequency", "concurrency", "rate_limit", "pim_cores"]
KNOB_KINDS: tuple[str, ...] = ("quota", "frequency", "concurrency", "rate_limit", "pim_cores")
#: Smallest quota a service keeps (one CPU quantum: the fast path never stops a service).
MIN_QUOTA = CPU_QUANTUM


@dataclass(frozen=True, slots=True)
class FastAction:
    """One fast-path change: set ``kind`` of ``service`` on ``node`` to ``value``."""

    node: int
    service: str
    kind: ActionKind
    value: float
    previous: float


@dataclass(frozen=True)
class NodeBudget:
    """What the global allocator reserved for the job on each node, for one round.

    Arrays of shape (N,): ``cores`` bounds the sum of quotas; frequencies stay in
    [freq_min, freq_max]; ``pim_cores`` bounds the sum of PIM cores.
    """

    cores: np.ndarray
    freq_min: np.ndarray
    freq_max: np.ndarray
    pim_cores: np.ndarray

    @staticmethod
    def uniform(
        n: int, cores: float, freq_min: float = 0.5, freq_max: float = 1.5, pim_cores: float = 0.0
    ) -> NodeBudget:
        full = np.full
        return NodeBudget(full(n, cores), full(n, freq_min), full(n, freq_max), full(n, pim_cores))

    def take(self, idx: np.ndarray | slice) -> NodeBudget:
        return NodeBudget(
            self.cores[idx], self.freq_min[idx], self.freq_max[idx], self.pim_cores[idx]
        )


@dataclass(frozen=True)
class Knobs:
    """Fast-path settings per node and service, arrays of shape (N, S).

    ``rate_limit`` is the admitted request rate at the node proxy (inf: no limit).
    """

    quota: np.ndarray
    frequency: np.ndarray
    concurrency: np.ndarray
    rate_limit: np.ndarray
    pim_cores: np.ndarray

    @staticmethod
    def initial(cores: np.ndarray, concurrency: int = 64) -> Knobs:
        c = np.asarray(cores, dtype=float)
        return Knobs(
            quota=quantize_up(c),
            frequency=np.ones_like(c),
            concurrency=np.full_like(c, float(concurrency)),
            rate_limit=np.full_like(c, np.inf),
            pim_cores=np.zeros_like(c),
        )

    def copy(self) -> Knobs:
        return Knobs(*(np.array(getattr(self, k), dtype=float) for k in KNOB_KINDS))

    def with_(self, **arrays: np.ndarray) -> Knobs:
        return replace(self, **arrays)

    def take(self, idx: np.ndarray | slice) -> Knobs:
        return Knobs(*(getattr(self, k)[idx] for k in KNOB_KINDS))


def quantize_up(cores: np.ndarray) -> np.ndarray:
    """Round up to the 0.1-CPU quantum (a fast scale-up must not fall short of its sizing)."""
    c = np.asarray(cores, dtype=float)
    return np.maximum(np.ceil(c / CPU_QUANTUM - 1e-6) * CPU_QUANTUM, MIN_QUOTA)


def fit_budget(old: Knobs, new: Knobs, budget: NodeBudget) -> Knobs:
    """Clip ``new`` into the node budget.

    Frequencies are clipped to the node's range. When the quotas would exceed
    the node's cores, releases are kept and the increases are scaled down by
    one common factor per node, so the budget is honoured without undoing what
    another service gave back.
    """
    freq = np.clip(new.frequency, budget.freq_min[:, None], budget.freq_max[:, None])
    q_old, q_new = old.quota, np.maximum(new.quota, MIN_QUOTA)
    inc = np.maximum(q_new - q_old, 0.0)
    base = np.minimum(q_new, q_old)
    room = np.maximum(budget.cores - base.sum(axis=1), 0.0)
    need = inc.sum(axis=1)
    scale = np.where(need > room, room / np.maximum(need, 1e-12), 1.0)
    quota = base + inc * scale[:, None]
    # Keep the quantum without overshooting: round the scaled increase down.
    quota = np.maximum(np.floor(quota / CPU_QUANTUM + 1e-6) * CPU_QUANTUM, MIN_QUOTA)
    # Quotas are enforced in 0.1-CPU units: increases round up, releases round down.
    exact = np.where(q_new >= q_old, np.ceil(q_new / CPU_QUANTUM - 1e-6),
                     np.floor(q_new / CPU_QUANTUM + 1e-6)) * CPU_QUANTUM  # fmt: skip
    quota = np.where(scale[:, None] < 1.0, quota, np.maximum(exact, MIN_QUOTA))
    pim = np.maximum(np.round(new.pim_cores), 0.0)
    p_need = pim.sum(axis=1)
    pim = np.where(
        (p_need > budget.pim_cores)[:, None],
        np.floor(pim * (budget.pim_cores / np.maximum(p_need, 1e-12))[:, None]),
        pim,
    )
    return Knobs(
        quota=quota,
        frequency=freq,
        concurrency=np.maximum(np.round(new.concurrency), 1.0),
        rate_limit=np.maximum(new.rate_limit, 0.0),
        pim_cores=pim,
    )


def diff_actions(
    old: Knobs, new: Knobs, services: tuple[str, ...], tol: float = 1e-9
) -> list[FastAction]:
    """The FastActions that move ``old`` to ``new`` (node-major, then service, then kind)."""
    out: list[FastAction] = []
    for kind in KNOB_KINDS:
        a, b = getattr(old, kind), getattr(new, kind)
        both_inf = np.isinf(a) & np.isinf(b)
        with np.errstate(invalid="ignore"):
            changed = ~both_inf & ~(np.abs(np.nan_to_num(a - b, nan=np.inf)) <= tol)
        for n, s in zip(*np.nonzero(changed), strict=True):
            out.append(FastAction(int(n), services[s], kind, float(b[n, s]), float(a[n, s])))  # type: ignore[arg-type]
    out.sort(key=lambda x: (x.node, x.service, KNOB_KINDS.index(x.kind)))
    return out
