"""Admission: when not every SLO can be met, say who misses and by how much; degrade by priority.

Priority classes are served from the highest ``JobSpec.priority`` down: a
class gets its demands in full when they fit; the first class that does not
fit shares what is left by weighted water-filling of its demands; lower classes
get their minimums. With ``refuse_new`` (the admin's choice) a job that was not
in the allocation in force and would miss its SLO is refused: it keeps its
minimum only and is listed as refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from allocators.waterfill import waterfill


@dataclass(frozen=True)
class AdmissionResult:
    alloc: np.ndarray
    report: dict[str, object]


def admit(
    names: tuple[str, ...],
    priority: np.ndarray,
    weights: np.ndarray,
    demand: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    capacity: float,
    new: np.ndarray,
    refuse_new: bool,
) -> AdmissionResult:
    """Allocate demands (inf = SLO unreachable: capped at ``hi``) by priority class."""
    want = np.clip(np.where(np.isfinite(demand), demand, hi), lo, hi)
    refused = np.zeros(len(names), dtype=bool)
    x = lo.copy()
    left = capacity - lo.sum()
    for p in sorted(set(priority.tolist()), reverse=True):
        cls = np.flatnonzero(priority == p)
        if refuse_new:
            # A new job whose SLO is out of reach even alone is refused outright.
            doomed = cls[new[cls] & ~np.isfinite(demand[cls])]
            refused[doomed] = True
            cls = np.setdiff1d(cls, doomed)
        extra = want[cls] - lo[cls]
        if extra.sum() <= left + 1e-12:
            x[cls] = want[cls]
            left -= extra.sum()
            continue
        if refuse_new and new[cls].any():
            # Refuse the new jobs of a class that does not fit before degrading the old ones.
            late = cls[new[cls]]
            refused[late] = True
            cls = cls[~new[cls]]
            extra = want[cls] - lo[cls]
            if extra.sum() <= left + 1e-12:
                x[cls] = want[cls]
                left -= extra.sum()
                continue
        if len(cls):
            x[cls] = waterfill(left + lo[cls].sum(), weights[cls], lo[cls], want[cls])
        left = 0.0
    misses = []
    for i in np.flatnonzero((x < want - 1e-9) | ~np.isfinite(demand) | refused):
        misses.append(
            {
                "job": names[i],
                "priority": int(priority[i]),
                "demand": float(demand[i]) if np.isfinite(demand[i]) else None,
                "granted": float(x[i]),
                "shortfall": float(want[i] - x[i]) if np.isfinite(demand[i]) else None,
                "reachable": bool(np.isfinite(demand[i])),
                "refused": bool(refused[i]),
            }
        )
    report = {
        "all_slos_met": not misses,
        "misses": misses,
        "refused": [names[i] for i in np.flatnonzero(refused)],
    }
    return AdmissionResult(x, report)
