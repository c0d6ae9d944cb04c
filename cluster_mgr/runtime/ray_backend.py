"""RayManager: starts the manager on Ray (a private local instance, or any cluster by address).

``start()`` connects to Ray and starts the named Controller actor in the
manager's namespace (detached on a cluster, so the manager outlives the
process that started it); the controller starts one NodeAgent per node.
Every ControlPlane method forwards to the controller, so a RayManager is a
ControlPlane the CLI and the admin server can use in-process. When the
controller dies, Ray restarts it (``max_restarts=-1``) and it resumes from the
run log; ``wait_controller()`` blocks until it answers again.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.controller import Controller
from actors.names import CONTROLLER
from cluster_mgr.control.api import Explanation, PolicyInfo, Status
from cluster_mgr.model import JobSpec
from cluster_mgr.settings import ManagerConfig


class RayManager:
    def __init__(
        self, config: ManagerConfig, controller_options: dict[str, Any] | None = None
    ) -> None:
        self.config = config
        self.controller_options = controller_options or {}
        self.controller: Any = None
        self.admin_address = ""
        self._owns_ray = False

    @property
    def local(self) -> bool:
        return self.config.address == "local"

    def start(self) -> RayManager:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not ray.is_initialized():
            if self.local:
                ray.init(
                    address="local",
                    num_cpus=self.config.num_cpus,
                    object_store_memory=self.config.object_store_mb * 1024**2,
                    include_dashboard=False,
                    namespace=self.config.namespace,
                )
            else:
                ray.init(address=self.config.address, namespace=self.config.namespace)
            self._owns_ray = True
        self.controller = Controller.options(
            name=CONTROLLER,
            namespace=self.config.namespace,
            get_if_exists=True,  # on a cluster: attach to the running manager
            lifetime=None if self.local else "detached",
            # beside the process that started it while that node lives (on a cluster: usually
            # the head); anywhere else when it dies (Ray restarts it and it resumes from the log)
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True),
        ).remote(self.config, self.controller_options)
        info = ray.get(self.controller.start.remote(), timeout=120)
        self.admin_address = info.get("admin_address", "")
        return self

    def stop(self) -> None:
        """Stop the manager: its replicas, agents and controller; and Ray if we started it."""
        if self.controller is not None:
            try:
                ray.get(self.controller.shutdown.remote(), timeout=180)
            finally:
                ray.kill(self.controller, no_restart=True)
                self.controller = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- calls -------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, timeout: float = 60.0) -> Any:
        """Call the controller, riding out a restart (Ray restarts it when its node dies and
        it resumes from the log). Only for calls that are safe to repeat."""
        deadline = time.time() + timeout
        while True:
            try:
                ref = getattr(self.controller, method).remote(*args)
                return ray.get(ref, timeout=max(1.0, deadline - time.time()))
            except ray.exceptions.ActorUnavailableError:
                if time.time() > deadline:
                    raise
            time.sleep(0.2)  # polling a restarting actor, not standing in for work

    # -- waiting -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self._call("info")

    def wait_controller(self, timeout: float = 120.0) -> dict[str, Any]:
        """Block until the controller answers (after a restart: once it has resumed)."""
        deadline = time.time() + timeout
        while True:
            try:
                return ray.get(self.controller.info.remote(), timeout=max(1.0, deadline - time.time()))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise
            time.sleep(0.2)  # polling a restarting actor, not standing in for work

    def wait_rounds(self, n: int, timeout: float = 120.0) -> dict[str, Any]:
        """Block until ``n`` more rounds have been decided and enforced (or shadow-logged)."""
        start = self.info()["rounds_done"]
        deadline = time.time() + timeout
        while True:
            info = self.info()
            if info["rounds_done"] >= start + n:
                return info
            if time.time() > deadline:
                raise TimeoutError(f"{n} rounds not done within {timeout} s (last: {info})")
            time.sleep(0.2)  # polling a remote counter, not standing in for work

    # -- ControlPlane ------------------------------------------------------------------
    def status(self) -> Status:
        return self._call("status")

    def submit(self, spec: JobSpec) -> None:
        self._call("submit", spec)  # add-or-update: safe to repeat

    def remove(self, name: str) -> None:
        ray.get(self.controller.remove.remote(name), timeout=60)

    def drain(self, node_id: str) -> None:
        self._call("drain", node_id)

    def explain(self, job: str) -> Explanation:
        return self._call("explain", job)

    def policies(self) -> tuple[PolicyInfo, ...]:
        return self._call("policies")
