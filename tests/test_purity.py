"""learners/ and allocators/ are pure: importing any of their modules (or the
cluster_mgr package and its data model) must import neither Ray nor gRPC.

One fresh interpreter per package imports its modules one by one and names the
first module after whose import ``ray`` or ``grpc`` shows up in sys.modules.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    bad = sorted(m for m in ('ray', 'grpc') if m in sys.modules)
    if bad:
        print(f"{name} pulls in {','.join(bad)}")
        break
"""


def _modules(package: str) -> list[str]:
    names = [package]
    for info in pkgutil.walk_packages([str(REPO_ROOT / package)], prefix=f"{package}."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("package", ["learners", "allocators"])
def test_pure_packages_import_neither_ray_nor_grpc(package: str) -> None:
    modules = ["cluster_mgr", "cluster_mgr.model", *_modules(package)]
    assert len(modules) > 3, f"found no modules under {package}/"
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


#: What the pure packages may import of cluster_mgr: the shared data model, the
#: ground-truth curve families that conformance kits and oracles measure against, and
#: the one Erlang B/C implementation (pure numpy/scipy).
ALLOWED_FROM_CLUSTER_MGR = {"cluster_mgr.model", "cluster_mgr.curves", "cluster_mgr.queueing"}


@pytest.mark.parametrize("package", ["learners", "allocators"])
def test_pure_packages_import_only_the_data_model_of_cluster_mgr(package: str) -> None:
    offenders = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "cluster_mgr" and name not in ALLOWED_FROM_CLUSTER_MGR:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)
