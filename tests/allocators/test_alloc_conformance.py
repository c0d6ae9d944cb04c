"""The conformance kit passes for every built-in policy, and catches broken policies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from allocators.base import Policy, PolicyState, Snapshot
from allocators.objectives import BUILTIN_OBJECTIVES, objective
from allocators.registry import BUILTIN_POLICIES, KIND_POLICIES, get_policy
from allocators.testing import (
    ConformanceError,
    check_objective,
    check_policy,
    random_snapshot,
)
from cluster_mgr.model import Allocation, ResourceVector

# Cilantro's search at a reduced budget: the kit checks conformance, not quality.
OPTIONS: dict[str, dict[str, Any]] = {
    "cilantro": {"budget": 400},
    "welfare": {"objective": "balanced"},
}


def _kit_cases() -> list[Any]:
    """Every built-in; a policy that decides for one job kind only is skipped: the kit's random
    snapshots hold no such jobs, so it would leave every CPU idle (tests/inference checks it)."""
    return [
        pytest.param(
            n,
            marks=pytest.mark.skip(
                reason=f"{n} allocates {KIND_POLICIES[n]} jobs only (their knob profiles come from "
                "measured models); checked on inference snapshots in tests/inference"
            ),
        )
        if n in KIND_POLICIES
        else n
        for n in sorted(BUILTIN_POLICIES)
    ]


@pytest.mark.parametrize("name", _kit_cases())
def test_builtin_policy_conforms(name: str) -> None:
    check_policy(lambda: get_policy(name, **OPTIONS.get(name, {})), seed=3, n_snapshots=5)


class Greedy(Policy):
    """Broken on purpose: gives every job the whole capacity."""

    name = "greedy_broken"

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        cap = snapshot.capacity.cpu
        return snapshot.allocation(
            {j.name: ResourceVector(cpu=cap) for j in snapshot.jobs}, self.name
        ), state


class Idle(Policy):
    """Broken on purpose: gives nothing, although jobs gain from CPU."""

    name = "idle_broken"

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        return snapshot.allocation({}, self.name), state


class Random(Policy):
    """Broken on purpose: not deterministic."""

    name = "random_broken"

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
        cap = snapshot.capacity.cpu
        n = max(len(snapshot.jobs), 1)
        share = np.random.default_rng().dirichlet(np.ones(n)) * cap * 0.5
        return snapshot.allocation(
            {
                j.name: ResourceVector(cpu=round(float(s), 1))
                for j, s in zip(snapshot.jobs, share, strict=False)
            },
            self.name,
        ), state


@pytest.mark.parametrize(
    ("cls", "needle"),
    [(Greedy, "over capacity"), (Idle, "idle while"), (Random, "deterministic")],
)
def test_kit_catches_broken_policies(cls: type[Policy], needle: str) -> None:
    with pytest.raises(ConformanceError, match=needle):
        check_policy(cls, seed=1, n_snapshots=4)


def test_unpackable_allocation_is_an_error() -> None:
    from allocators.testing import check_allocation
    from cluster_mgr.model import JobSpec, NodeInfo

    nodes = (NodeInfo("a", ResourceVector(cpu=4)), NodeInfo("b", ResourceVector(cpu=4)))
    jobs = (JobSpec("pinned", pins=("a",)), JobSpec("other"))
    snap = Snapshot(0.0, 0, nodes, jobs)
    alloc = snap.allocation({"pinned": ResourceVector(cpu=6), "other": ResourceVector(cpu=2)}, "x")
    errs = check_allocation(snap, alloc)
    assert any("cannot be packed" in e for e in errs), errs


@pytest.mark.parametrize("name", sorted(BUILTIN_OBJECTIVES))
def test_builtin_objectives_declare_truthfully(name: str) -> None:
    assert check_objective(BUILTIN_OBJECTIVES[name]) == []


def test_objective_kit_catches_false_declarations() -> None:
    @objective("convex_liar", monotone=True, concave=True, separable=True)
    def convex(u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
        return u**3

    @objective("falling_liar", monotone=True, concave=False, separable=True)
    def falling(u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
        return -u

    @objective("coupled_liar", monotone=False, concave=False, separable=True)
    def coupled(u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
        return u - u.mean(axis=-1, keepdims=True)

    assert any("concave" in e for e in check_objective(convex))
    assert any("monotone" in e for e in check_objective(falling))
    assert any("separable" in e for e in check_objective(coupled))


def test_random_snapshot_is_seeded() -> None:
    a = random_snapshot(np.random.default_rng(5))
    b = random_snapshot(np.random.default_rng(5))
    assert a.jobs == b.jobs and a.nodes == b.nodes and a.signals == b.signals


def test_kit_catches_allocations_that_fit_in_aggregate_but_not_on_nodes() -> None:
    from allocators.testing import random_multi_snapshot

    class Unaware(Policy):
        """Broken on purpose: splits every kind by weight, blind to the nodes."""

        name = "unaware_broken"
        resources = ("cpu", "memory", "pim_cores")

        def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Allocation, PolicyState]:
            cap, jobs = snapshot.capacity, snapshot.jobs
            w = np.array([j.weight for j in jobs])
            share = w / w.sum() if len(jobs) else w
            out = {}
            for j, s in zip(jobs, share, strict=True):
                out[j.name] = ResourceVector(
                    cpu=np.floor(cap.cpu * s * 10) / 10,
                    memory=np.floor(cap.memory * s * 10) / 10,
                    pim_cores=float(np.floor(cap.pim_cores * s)),
                )
            return snapshot.allocation(out, self.name), state

    rng = np.random.default_rng(0)
    snaps = [random_multi_snapshot(rng) for _ in range(10)]
    with pytest.raises(ConformanceError, match="cannot be packed"):
        check_policy(Unaware, seed=1, n_snapshots=0, extra=snaps)
