"""Run the tail_aware plug-in objective against the built-in policies on one snapshot."""

from __future__ import annotations

import numpy as np

from allocators.base import Snapshot
from allocators.registry import get_objective, get_policy
from allocators.testing import check_objective, check_policy
from cluster_mgr.curves import RewardCurve
from cluster_mgr.model import SLO, JobSpec, NodeInfo, ResourceVector

obj = get_objective(
    "tail_aware:tail_aware"
)  # run from docs/examples (or install it as an entry point)
assert check_objective(obj) == []  # the declared properties hold on samples
check_policy(lambda: get_policy("welfare", objective=obj))  # the conformance kit passes

fams = ["tanh", "inverse", "logistic", "linear"] * 3
jobs = tuple(JobSpec(f"job-{i}", slo=SLO(threshold=0.9)) for i in range(12))
truth = {
    j.name: RewardCurve(f, scale=600.0 + 150 * i)
    for i, (j, f) in enumerate(zip(jobs, fams, strict=True))
}
nodes = tuple(NodeInfo(f"node-{k}", ResourceVector(cpu=8)) for k in range(3))
snap = Snapshot(0.0, 0, nodes, jobs, models=truth, loads={j.name: 1.0 for j in jobs})

print(f"{'policy':<22}{'mean utility':>14}{'min utility':>13}{'jobs < 0.5':>12}")
for label, pol in [
    ("tail_aware (plug-in)", get_policy("welfare", objective=obj)),
    ("utilitarian", get_policy("utilitarian")),
    ("egalitarian", get_policy("egalitarian")),
    ("nash", get_policy("nash")),
    ("fair_share", get_policy("fair_share")),
]:
    alloc, _ = pol.decide(snap, {})
    u = np.array(
        [
            min(1.0, truth[j.name].mean(np.array([alloc.get(j.name).cpu]), 1.0)[0] / 0.9)
            for j in jobs
        ]
    )
    print(f"{label:<22}{u.mean():>14.3f}{u.min():>13.3f}{int((u < 0.5).sum()):>12d}")
