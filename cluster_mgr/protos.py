"""Generated gRPC code, compiled from the .proto files at import time.

No generated module is committed: ``load`` compiles ``<package>/<name>.proto``
with grpcio-tools (``grpc.protos_and_services``) the first time it is asked
and caches the modules for the process.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def load(relative_proto: str) -> tuple[ModuleType, ModuleType]:
    """(messages, services) for a .proto path relative to the repository root,
    e.g. ``load("pim_agent/pim.proto")``."""
    import grpc  # imported here so importing cluster_mgr never imports grpc

    path = os.path.join(_ROOT, relative_proto)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"proto file not found: {path}")
    with _LOCK:
        if _ROOT not in sys.path:
            sys.path.append(_ROOT)
        return grpc.protos_and_services(relative_proto)
