"""Exact multiple-choice knapsack over CPU units: one option per job, total units within budget."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto(options: Sequence[tuple[int, float]]) -> list[int]:
    """Indices of options that some cheaper option does not already match or beat."""
    order = sorted(range(len(options)), key=lambda i: (options[i][0], -options[i][1]))
    keep, best = [], -np.inf
    for i in order:
        if options[i][1] > best:
            keep.append(i)
            best = options[i][1]
    return keep


def solve(options: Sequence[Sequence[tuple[int, float]]], budget: int) -> list[int] | None:
    """Pick one (units, value) per job maximising total value with total units <= budget.

    Returns the chosen index per job, or None when even the cheapest options do
    not fit. Ties go to fewer units (scan order). O(jobs x budget x options).
    """
    neg = -np.inf
    best = np.full(budget + 1, neg)
    best[0] = 0.0
    choice: list[np.ndarray] = []
    for opts in options:
        keep = pareto(opts)
        nxt = np.full(budget + 1, neg)
        arg = np.full(budget + 1, -1)
        for i in keep:
            u, v = opts[i]
            if u > budget:
                continue
            cand = np.full(budget + 1, neg)
            cand[u:] = best[: budget + 1 - u] + v
            better = cand > nxt
            nxt[better], arg[better] = cand[better], i
        choice.append(arg)
        best = nxt
    if not np.isfinite(best).any():
        return None
    # total units used by the best plan: the smallest u reaching the best value
    u = int(np.argmax(best >= best.max() - 1e-12))
    picks: list[int] = []
    for j in range(len(options) - 1, -1, -1):
        i = int(choice[j][u])
        picks.append(i)
        u -= options[j][i][0]
    return picks[::-1]
