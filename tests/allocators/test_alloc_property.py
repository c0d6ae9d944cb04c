"""Hypothesis: random snapshots never make a built-in policy break capacity, bounds or packing.

The fast variant tries a few hundred snapshots; the slow one (pytest -m slow) at
least 10,000 across the policies.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocators.base import InfeasibleError
from allocators.registry import BUILTIN_POLICIES, get_policy
from allocators.testing import check_allocation, random_snapshot

NAMES = sorted(BUILTIN_POLICIES)
OPTIONS = {"cilantro": {"budget": 200}, "welfare": {"objective": "balanced"}}


def _one(seed: int, policy: str, n_jobs: int, n_nodes: int) -> None:
    snap = random_snapshot(np.random.default_rng(seed), n_jobs=n_jobs, n_nodes=n_nodes)
    pol = get_policy(policy, **OPTIONS.get(policy, {}))
    try:
        alloc, state = pol.decide(snap, {})
    except InfeasibleError:
        return  # minimums above capacity are allowed to be refused (with a clear error)
    errs = check_allocation(snap, alloc, pol)
    assert not errs, (policy, seed, errs)


snapshot_args = dict(
    seed=st.integers(0, 2**31 - 1),
    policy=st.sampled_from(NAMES),
    n_jobs=st.integers(0, 12),
    n_nodes=st.integers(1, 6),
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(**snapshot_args)
def test_random_snapshots_fast(seed: int, policy: str, n_jobs: int, n_nodes: int) -> None:
    _one(seed, policy, n_jobs, n_nodes)


@pytest.mark.slow
@settings(
    max_examples=10_000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(**snapshot_args)
def test_random_snapshots_full(seed: int, policy: str, n_jobs: int, n_nodes: int) -> None:
    _one(seed, policy, n_jobs, n_nodes)
