"""Learner tests run BLAS single-threaded: on a shared 2-core machine OpenBLAS threads
oversubscribe the cores and a 200 x 200 Cholesky goes from milliseconds to a fifth
of a second. numpy and scipy ship separate OpenBLAS copies; both must be loaded
before the limit is applied, hence the imports."""

from __future__ import annotations

from collections.abc import Iterator

import numpy  # noqa: F401
import pytest
import scipy.linalg  # noqa: F401

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl comes with the test environment
    threadpool_limits = None


@pytest.fixture(autouse=True)
def _single_thread_blas() -> Iterator[None]:
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=1):
        yield
