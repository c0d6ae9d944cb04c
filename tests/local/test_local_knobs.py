from __future__ import annotations

import numpy as np

from cluster_mgr.local.knobs import Knobs, NodeBudget, diff_actions, fit_budget


def test_fit_budget_scales_increases_and_keeps_releases() -> None:
    old = Knobs.initial(np.array([[2.0, 2.0, 2.0]]))
    new = old.with_(quota=np.array([[6.0, 6.0, 1.0]]), frequency=np.array([[2.0, 1.0, 0.1]]))
    out = fit_budget(old, new, NodeBudget.uniform(1, cores=9.0, freq_min=0.5, freq_max=1.5))
    assert out.quota.sum() <= 9.0 + 1e-9
    assert out.quota[0, 2] == 1.0  # the release is kept
    assert out.quota[0, 0] == out.quota[0, 1] > 2.0  # increases scaled by one factor
    assert out.frequency.tolist() == [[1.5, 1.0, 0.5]]


def test_fit_budget_quantizes_up_and_down() -> None:
    old = Knobs.initial(np.array([[1.0, 1.0]]))
    new = old.with_(quota=np.array([[1.03, 0.97]]))
    out = fit_budget(old, new, NodeBudget.uniform(1, cores=10.0))
    assert np.allclose(out.quota, [[1.1, 0.9]])


def test_diff_actions_lists_only_changes() -> None:
    old = Knobs.initial(np.array([[1.0, 2.0]]))
    new = old.with_(quota=np.array([[1.0, 3.0]]), frequency=np.array([[1.2, 1.0]]))
    acts = diff_actions(old, new, ("a", "b"))
    assert [(a.service, a.kind, a.value, a.previous) for a in acts] == [
        ("a", "frequency", 1.2, 1.0),
        ("b", "quota", 3.0, 2.0),
    ]
