"""Switching cost: move an allocation only when the expected gain pays for the move.

A move of ``m`` CPUs out of a capacity ``C`` costs ``switching_cost * m / C``
in welfare units (moving the whole cluster costs ``switching_cost``). The
policy keeps the allocation in force unless its own objective, on its own
bound, rises by more than that. Jobs arriving or leaving, changed bounds or a
last allocation that no longer fits always force a decision.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from allocators.base import Snapshot
from allocators.problem import CpuProblem


def last_vector(snapshot: Snapshot, problem: CpuProblem) -> np.ndarray | None:
    """The allocation in force, as a vector over ``problem``'s jobs; None if it no longer applies."""
    last = snapshot.last
    if last is None or set(last.amounts) != set(problem.names):
        return None
    x = np.array([last.get(n).get(problem.kind) for n in problem.names], dtype=float)
    if np.any(x < problem.lo - 1e-9) or np.any(x > problem.hi + 1e-9):
        return None
    if x.sum() > problem.capacity + 1e-9:
        return None
    return x


def hold_or_move(
    new: np.ndarray,
    old: np.ndarray | None,
    score: Callable[[np.ndarray], float],
    capacity: float,
    switching_cost: float,
) -> tuple[np.ndarray, dict[str, float | bool]]:
    """(allocation to use, a record for the policy state)."""
    if old is None:
        return new, {"moved": True, "reason_forced": True}
    moved = float(np.abs(new - old).sum()) / 2.0
    if moved <= 1e-9:
        return old, {"moved": False, "gain": 0.0, "cost": 0.0}
    gain = score(new) - score(old)
    cost = switching_cost * moved / max(capacity, 1e-12)
    if gain > cost:
        return new, {"moved": True, "gain": gain, "cost": cost}
    return old, {"moved": False, "gain": gain, "cost": cost}
