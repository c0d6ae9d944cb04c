"""learners/ and allocators/ are pure: importing any of their modules (or the
cluster_mgr package and its data model) must import neither Ray nor gRPC."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _modules(package: str) -> list[str]:
    path = REPO_ROOT / package
    names = [package]
    for info in pkgutil.walk_packages([str(path)], prefix=f"{package}."):
        names.append(info.name)
    return names


PURE = _modules("learners") + _modules("allocators") + ["cluster_mgr", "cluster_mgr.model"]


@pytest.mark.parametrize("module", PURE)
def test_module_imports_neither_ray_nor_grpc(module: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in ('ray', 'grpc') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"
