"""Shared fixtures: a small network trained once (cached by config hash)."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("sklearn")

from actors.inference.data import load_split  # noqa: E402
from actors.inference.train import TrainConfig, load_or_train  # noqa: E402

SMALL = TrainConfig(widths=(96, 96, 96), epochs=8, batch=64)


@pytest.fixture(scope="session")
def split():
    return load_split()


@pytest.fixture(scope="session")
def weights(split):
    return {na: load_or_train(replace(SMALL, noise_aware=na), split) for na in (False, True)}
