"""Packing at scale and the vectorized capacity check keep the behaviour of the exact versions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from allocators.packing import PackingError, pack
from cluster_mgr.model import (
    Allocation,
    JobSpec,
    NodeInfo,
    NodeShare,
    PlacementPlan,
    ResourceVector,
)
from cluster_mgr.place import PlanError, _check_plan_exact, check_plan


def _cluster(n_jobs: int, n_nodes: int, seed: int = 0) -> tuple[list[JobSpec], list[NodeInfo]]:
    rng = np.random.default_rng(seed)
    nodes = [NodeInfo(f"n{k:05d}", ResourceVector(cpu=16.0, memory=64.0)) for k in range(n_nodes)]
    jobs = [
        JobSpec(f"j{i:04d}", replica_cpus=float(rng.choice([0.5, 1.0, 2.0]))) for i in range(n_jobs)
    ]
    return jobs, nodes


def _alloc(jobs: list[JobSpec], x: np.ndarray) -> Allocation:
    return Allocation({j.name: ResourceVector(cpu=float(v)) for j, v in zip(jobs, x, strict=True)})


def test_many_nodes_previous_shares_stay_and_capacity_holds() -> None:
    jobs, nodes = _cluster(300, 3000)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 2.0, len(jobs))
    first = np.floor(w / w.sum() * 16 * 3000 * 0.9 * 10) / 10
    a = pack(_alloc(jobs, first), jobs, nodes)
    # Same amounts again: every share stays where it was, nothing moves.
    again = pack(_alloc(jobs, first), jobs, nodes, a.shares)
    assert again.moves == 0
    assert {(s.node_id, s.job) for s in again.shares} == {(s.node_id, s.job) for s in a.shares}
    # Amounts shift by up to 10 %: the plan stays within capacity and kept shares dominate.
    second = np.floor(first * rng.uniform(0.9, 1.1, len(jobs)) * 10) / 10
    b = pack(_alloc(jobs, second), jobs, nodes, a.shares)
    check_plan(PlacementPlan(1, 1, b.shares), nodes)
    kept = {(s.node_id, s.job) for s in a.shares} & {(s.node_id, s.job) for s in b.shares}
    assert len(kept) >= 0.8 * len(a.shares)
    per_job = {}
    for s in b.shares:
        per_job[s.job] = per_job.get(s.job, 0.0) + s.resources.cpu
    assert np.allclose([per_job[j.name] for j in jobs], second)


def test_packing_error_names_the_job() -> None:
    nodes = [NodeInfo("a", ResourceVector(cpu=4)), NodeInfo("b", ResourceVector(cpu=4))]
    jobs = [JobSpec("pinned", pins=("a",)), JobSpec("other")]
    alloc = Allocation({"pinned": ResourceVector(cpu=6), "other": ResourceVector(cpu=2)})
    with pytest.raises(PackingError) as err:
        pack(alloc, jobs, nodes)
    assert err.value.job == "pinned"


@pytest.mark.parametrize("seed", range(20))
def test_vectorized_check_plan_agrees_with_the_exact_check(seed: int) -> None:
    rng = np.random.default_rng(seed)
    jobs, nodes = _cluster(int(rng.integers(1, 30)), int(rng.integers(1, 20)), seed)
    cap = 16.0 * len(nodes)
    w = rng.uniform(0.2, 2.0, len(jobs))
    plan = PlacementPlan(
        1, 1, pack(_alloc(jobs, np.floor(w / w.sum() * cap * 8) / 10), jobs, nodes).shares
    )
    k = int(rng.integers(0, len(nodes)))
    broken = list(nodes)
    broken[k] = replace(
        nodes[k],
        capacity=nodes[k].capacity.scale(float(rng.uniform(0.3, 1.0))),
        draining=bool(rng.random() < 0.3),
    )
    if rng.random() < 0.3:
        broken.pop(int(rng.integers(0, len(broken))))
    for ns in (nodes, broken):
        outcomes = []
        for fn in (check_plan, _check_plan_exact):
            try:
                fn(plan, ns)
                outcomes.append("ok")
            except PlanError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("seed", range(20))
def test_fresh_cpu_only_fast_path_decides_like_the_general_path(seed: int) -> None:
    # The fast path (no previous shares, CPU-only, unpinned) must place every piece where the
    # general best-fit path does; a previous share of a job absent from the allocation sends
    # the same allocation down the general path without changing what it decides.
    rng = np.random.default_rng(seed)
    nodes = [
        NodeInfo(f"n{k:03d}", ResourceVector(cpu=float(rng.choice([1, 2, 4, 5.3, 8])), memory=8))
        for k in range(int(rng.integers(1, 30)))
    ]
    jobs = [
        JobSpec(f"j{i:03d}", replica_cpus=float(rng.choice([0.5, 1, 2])))
        for i in range(int(rng.integers(1, 40)))
    ]
    cap = sum(n.capacity.cpu for n in nodes)
    x = np.floor(rng.dirichlet(np.ones(len(jobs))) * cap * rng.uniform(0.5, 1.0) * 10) / 10
    alloc = _alloc(jobs, x)
    ghost = JobSpec("ghost")
    fast = pack(alloc, jobs, nodes)
    general = pack(
        alloc,
        [*jobs, ghost],
        nodes,
        (NodeShare(nodes[0].node_id, "ghost", 1, ResourceVector(cpu=0.1)),),
    )
    assert fast.shares == general.shares and fast.moves == general.moves
