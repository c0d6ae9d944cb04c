"""Allocations that pack: shrink what packing cannot place, give idle CPU back where it fits.

An allocation can fit every kind in aggregate and still not pack (``allocators.packing``
places a job's whole vector of kinds in node pieces of the same proportions; a job heavy in
memory cannot use the CPU of a node whose memory is taken). Multi-resource policies
(``multi_resource``, ``drf``) run their solution through ``fit_to_nodes`` before returning
it, so a decision never fails in packing. Pure.
"""

from __future__ import annotations

import numpy as np

from allocators.base import PolicyError, Snapshot
from allocators.packing import PackingError, pack
from cluster_mgr.model import CPU_QUANTUM, Allocation, JobSpec, ResourceVector


def as_allocation(jobs: list[JobSpec], kinds: list[str], x: np.ndarray) -> Allocation:
    return Allocation(
        {
            j.name: ResourceVector.from_dict(
                {
                    **j.minimum.as_dict(),
                    **{k: round(float(v), 9) for k, v in zip(kinds, row, strict=True)},
                }
            )
            for j, row in zip(jobs, x, strict=True)
        }
    )


def packing_failure(
    snapshot: Snapshot, jobs: list[JobSpec], kinds: list[str], x: np.ndarray
) -> PackingError | None:
    try:
        pack(as_allocation(jobs, kinds, x), snapshot.jobs, snapshot.nodes)
    except PackingError as exc:
        return exc
    return None


def regrow_cpu(
    snapshot: Snapshot,
    jobs: list[JobSpec],
    kinds: list[str],
    x: np.ndarray,
    hi_cpu: np.ndarray,
    w: np.ndarray,
    cap_cpu: float,
    c: int = 0,
) -> np.ndarray:
    """Idle CPU (column ``c``) back to the jobs, heaviest first (three passes), each the most
    (whole quanta, halving) that still packs; the other kinds stay as they are."""
    x = x.copy()
    order = sorted(range(len(jobs)), key=lambda r: (-w[r], jobs[r].name))
    for i in order * 3:  # a few passes: a halved step may leave a quantum for the next pass
        idle = np.floor((cap_cpu - x[:, c].sum()) / CPU_QUANTUM + 1e-6) * CPU_QUANTUM
        add = min(idle, np.floor((hi_cpu[i] - x[i, c]) / CPU_QUANTUM + 1e-6) * CPU_QUANTUM)
        while add >= CPU_QUANTUM - 1e-9:
            y = x.copy()
            y[i, c] = round(x[i, c] + add, 9)
            if packing_failure(snapshot, jobs, kinds, y) is None:
                x = y
                break
            add = np.floor(add / 2.0 / CPU_QUANTUM + 1e-6) * CPU_QUANTUM
    return x


#: Shrink steps before giving up on a packable allocation above the minimums.
FIT_STEPS = 64


def fit_to_nodes(
    snapshot: Snapshot,
    jobs: list[JobSpec],
    kinds: list[str],
    x: np.ndarray,
    lo: np.ndarray,
    quant: np.ndarray,
    *,
    who: str,
    proportional: bool = False,
) -> tuple[np.ndarray, set[int]]:
    """``x`` (jobs x ``kinds``) shrunk until it packs, and the rows shrunk.

    The job packing names gives up a quarter of what it holds above its minimum (whole
    quanta, at least one): on every kind at once when ``proportional`` (DRF's task vectors
    keep their shape), else on its other kinds (memory, PIM cores, mesh) before its CPU.
    Once that job is at its minimums every job above its minimums gives up a quarter.
    Raises PolicyError when even the minimums do not pack."""
    x = x.copy()
    pos = {j.name: i for i, j in enumerate(jobs)}
    c = kinds.index("cpu") if "cpu" in kinds else None
    shrunk: set[int] = set()
    for _ in range(FIT_STEPS):
        err = packing_failure(snapshot, jobs, kinds, x)
        if err is None:
            return x, shrunk
        i = pos.get(err.job) if err.job is not None else None
        rows = [i] if i is not None and np.any(x[i] > lo[i] + 1e-9) else []
        if not rows:
            rows = [r for r in range(len(jobs)) if np.any(x[r] > lo[r] + 1e-9)]
        if not rows:
            raise PolicyError(f"{who}: the minimums do not pack: {err}")
        for r in rows:
            extra = x[r] - lo[r]
            above = [k for k in range(len(kinds)) if extra[k] > 1e-9]
            if not proportional:
                above = [k for k in above if k != c] or above
            for k in above:
                cut = np.ceil(extra[k] / 4.0 / quant[k] - 1e-9) * quant[k]
                x[r, k] = max(lo[r, k], round(x[r, k] - max(cut, quant[k]), 9))
            shrunk.add(r)
    if packing_failure(snapshot, jobs, kinds, x) is None:
        return x, shrunk
    x = np.maximum(lo, 0.0)  # what is left: the minimums, if they pack
    err = packing_failure(snapshot, jobs, kinds, x)
    if err is not None:
        raise PolicyError(f"{who}: the minimums do not pack: {err}")
    return x, set(range(len(jobs)))
