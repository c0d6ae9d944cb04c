"""Fixtures for the DPU mesh agent tests: echo services, a real Envoy, an agent."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from dpu_agent.service import EchoService


@pytest.fixture
def echo_pair() -> Iterator[tuple[EchoService, EchoService]]:
    a, b = EchoService("a").start(), EchoService("b").start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def token() -> str:
    return secrets.token_hex(16)
