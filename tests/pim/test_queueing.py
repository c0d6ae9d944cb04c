"""The one Erlang B/C implementation (cluster_mgr.queueing) and the models that call it."""

from __future__ import annotations

import ast
import subprocess
import sys

import numpy as np
import pytest

from cluster_mgr import queueing, workloads
from tests.conftest import REPO_ROOT


def _recursion(c: int, a: float) -> float:
    """The textbook Erlang B recursion, as reference."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def test_closed_forms() -> None:
    # c = 1: B = a / (1 + a), C = rho; c = 2, a = 1: B = 1/5, C = 1/3; no server: all lost.
    assert queueing.erlang_b(1, 0.5) == pytest.approx(1 / 3)
    assert queueing.erlang_c(1, 0.7) == pytest.approx(0.7)
    assert queueing.erlang_b(2, 1.0) == pytest.approx(0.2)
    assert queueing.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert queueing.erlang_b(0, 3.0) == pytest.approx(1.0)
    assert queueing.erlang_b(4, 0.0) == pytest.approx(0.0)
    assert queueing.erlang_c(3, 0.0) == 0.0
    assert queueing.erlang_c(3, 3.0) == 1.0  # unstable: every arrival waits


@pytest.mark.parametrize("c", [1, 2, 4, 9, 20, 72, 300])
def test_integer_servers_match_the_recursion_at_every_load(c: int) -> None:
    # Up to loads far above c, where Gamma(c + 1, a) underflows and the series takes over.
    a = np.geomspace(1e-3, c + 3000.0, 200)
    got = queueing.erlang_b(np.full(a.shape, c), a)
    want = np.array([_recursion(c, x) for x in a])
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-300)


def test_continuous_in_cores_and_linear_between_integers() -> None:
    c = np.linspace(2.0, 6.0, 81)
    p = queueing.erlang_c(c, np.full_like(c, 1.8))
    assert np.all(np.diff(p) < 0) and np.max(np.abs(np.diff(p))) < 0.05
    b2, b3 = queueing.erlang_b(2, 1.5), queueing.erlang_b(3, 1.5)
    assert queueing.erlang_b_linear(2.25, 1.5) == pytest.approx(0.75 * b2 + 0.25 * b3)
    assert queueing.erlang_c_linear(3.0, 1.5) == pytest.approx(queueing.erlang_c(3, 1.5))


def test_every_call_site_uses_the_shared_implementation() -> None:
    c, a = np.array([0.0, 0.5, 3.0, 40.0]), np.array([0.2, 0.3, 2.0, 35.0])
    # The sim counts a job without cores as MIN_CORES, otherwise the same function.
    np.testing.assert_array_equal(
        workloads.erlang_c(c, a), queueing.erlang_c(np.maximum(c, workloads.MIN_CORES), a)
    )
    for path in ("pim_agent/queueing.py", "allocators/pim/queue.py", "cluster_mgr/workloads.py"):
        src = (REPO_ROOT / path).read_text(encoding="utf-8")
        assert "cluster_mgr.queueing" in src or "from cluster_mgr import queueing" in src
        assert "a * b / (k + a * b)" not in src and "gammaincc" not in src, path


def test_shared_module_is_pure() -> None:
    tree = ast.parse((REPO_ROOT / "cluster_mgr/queueing.py").read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "collections", "numpy", "scipy"}, roots
    probe = (
        "import sys, cluster_mgr.queueing; "
        "print(sorted(m for m in ('ray', 'grpc') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
