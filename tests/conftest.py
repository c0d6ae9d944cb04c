"""Session-wide test settings shared by every suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy  # noqa: F401  (loaded before the BLAS limit below is applied)
import pytest
import scipy.linalg  # noqa: F401  (scipy ships its own OpenBLAS copy)
from threadpoolctl import threadpool_limits

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ../shared/data beside the repository (present here and on CI).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _single_thread_blas() -> Iterator[None]:
    """BLAS single-threaded: on a 2-core machine OpenBLAS threads oversubscribe the
    cores (a 200 x 200 Cholesky went from milliseconds to a fifth of a second)."""
    with threadpool_limits(limits=1):
        yield
