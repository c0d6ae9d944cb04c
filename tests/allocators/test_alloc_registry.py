"""Registry: built-ins, dotted paths, entry points, listing; the docs' plug-in example runs."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import allocators.registry as registry
from allocators.registry import get_objective, get_policy, list_policies
from allocators.testing import check_objective, check_policy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_every_builtin_loads_and_declares_kind_and_description() -> None:
    infos = list_policies()
    assert {i.kind for i in infos} >= {"ours", "baseline", "oracle"}
    for i in infos:
        assert i.description and i.source, i.name
    names = {i.name for i in infos}
    assert {"utilitarian", "egalitarian", "nash", "njc", "cilantro", "parties", "hpa"} <= names


def test_unknown_policy_lists_known_names() -> None:
    with pytest.raises(ValueError, match="known policies: .*utilitarian"):
        get_policy("no_such_policy")
    with pytest.raises(ValueError, match="bad options"):
        get_policy("utilitarian", not_an_option=1)
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("no_such_objective")


def test_dotted_paths_for_policies_and_objectives() -> None:
    pol = get_policy("allocators.policies.welfare:Utilitarian")
    assert pol.name == "utilitarian"
    assert get_objective("allocators.objectives:nash").name == "nash"
    with pytest.raises(ValueError, match="not a Policy"):
        get_policy("allocators.objectives:nash")


def test_entry_points_are_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    from allocators.policies.welfare import Nash

    ep = SimpleNamespace(
        name="my_nash", value="allocators.policies.welfare:Nash", load=lambda: Nash
    )

    def fake(group: str) -> list:
        return [ep] if group == registry.POLICY_GROUP else []

    monkeypatch.setattr(registry, "entry_points", lambda group: fake(group))
    assert isinstance(get_policy("my_nash"), Nash)
    assert any(i.name == "my_nash" and i.kind == "plug-in" for i in list_policies())


def test_docs_plugin_example_conforms_and_runs_against_builtins() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        obj = get_objective("tail_aware:tail_aware")
    finally:
        sys.path.remove(str(DOCS))
    assert check_objective(obj) == []
    check_policy(lambda: get_policy("welfare", objective=obj), seed=2, n_snapshots=3)
    from allocators.testing import random_snapshot

    snap = random_snapshot(np.random.default_rng(9), n_jobs=6, n_nodes=2)
    mine = get_policy("welfare", objective=obj).decide(snap, {})[0]
    assert mine.total().cpu <= snap.capacity.cpu + 1e-9
