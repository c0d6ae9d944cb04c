"""Fixtures for the CLI / admin tests (the doubles live in cli_fakes.py)."""

from __future__ import annotations

import pytest
from cli_fakes import Captured, FakeControlPlane


@pytest.fixture
def fake() -> FakeControlPlane:
    return FakeControlPlane()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty CLUSTER_MGR_HOME, so no test sees (or writes) the user's state."""
    path = tmp_path / "home"
    monkeypatch.setenv("CLUSTER_MGR_HOME", str(path))
    monkeypatch.delenv("CLUSTER_MGR_TOKEN", raising=False)
    return path


@pytest.fixture
def captured() -> Captured:
    return Captured()
