"""The manager process behind ``cluster-mgr up``: runs the manager until SIGTERM.

``up`` starts this module as a detached process (``python -m
cluster_mgr.admin.daemon --config FILE --token-file PATH``) because a local Ray
instance lives only as long as its driver: the daemon is that driver. It
starts the manager, makes sure the admin API answers (the Controller actor
serves it; if the manager does not, the daemon serves it on the manager's
ControlPlane methods itself), exports metrics, and only then writes the state
file the CLI reads, so a state file always means "ready". ``down`` sends
SIGTERM; the daemon stops everything and removes the state file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cluster_mgr.admin.client import AdminClient
from cluster_mgr.admin.errors import AdminError
from cluster_mgr.admin.server import AdminServer, serve
from cluster_mgr.admin.state import (
    ManagerState,
    process_started,
    read_state,
    remove_state,
    write_state,
)
from cluster_mgr.metrics import MetricsExporter
from cluster_mgr.settings import ManagerConfig

log = logging.getLogger("cluster_mgr.daemon")

ManagerFactory = Callable[[ManagerConfig], Any]


def ray_manager(config: ManagerConfig) -> Any:
    from cluster_mgr.runtime.ray_backend import RayManager  # Ray only in the daemon

    return RayManager(config)


class DecisionTimes:
    """The decision time of the latest round, read from new decision parts of the run log."""

    def __init__(self, log_uri: str) -> None:
        self._uri = log_uri
        self._seen: set[str] = set()

    def latest_ms(self) -> float | None:
        if not self._uri:
            return None
        import pyarrow.parquet as pq

        from cluster_mgr.store import RunLog

        try:
            run_log = RunLog(self._uri, writer="metrics")
            new = [p for p in run_log.parts("decisions") if p not in self._seen]
        except OSError:
            return None
        latest: tuple[int, int, float] | None = None
        for part in new:
            self._seen.add(part)
            t = pq.read_table(part, columns=["epoch", "round", "decision_ms"]).to_pylist()
            for row in t:
                key = (row["epoch"], row["round"], row["decision_ms"])
                if latest is None or key[:2] >= latest[:2]:
                    latest = key
        return latest[2] if latest else None


def _admin_for(manager: Any, config: ManagerConfig) -> tuple[str, AdminServer | None]:
    """The admin address to record, and the server this process started (None if the
    manager's controller serves it)."""
    address = getattr(manager, "admin_address", None)
    if isinstance(address, str) and address:
        return address, None
    try:
        server = serve(manager, config.admin_bind, config.admin_token)
        return server.address, server
    except OSError:
        # The port is taken: most likely by the Controller actor already. Check it is ours.
        with AdminClient.connect(config.admin_bind, config.admin_token, timeout=5.0) as client:
            client.status()
        return config.admin_bind, None


def run(
    config: ManagerConfig,
    token_path: str,
    config_path: str = "",
    stop: threading.Event | None = None,
    factory: ManagerFactory = ray_manager,
    handle_signals: bool = False,
) -> int:
    """Run the manager until ``stop`` is set (or, with ``handle_signals``, SIGTERM/SIGINT
    arrive); returns an exit code."""
    stop = stop or threading.Event()
    manager = factory(config)
    manager.start()
    if handle_signals:
        # After start(): ray.init installs its own SIGTERM handler in the driver, which
        # would end the process without stopping the manager (detached actors on a
        # cluster would outlive 'down'). Ours sets the event; the finally below stops all.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    admin: AdminServer | None = None
    exporter: MetricsExporter | None = None
    try:
        address, admin = _admin_for(manager, config)
        if config.metrics_bind and not getattr(manager, "metrics_address", None):
            exporter = MetricsExporter(config.metrics_bind)
        metrics_address = exporter.address if exporter else getattr(manager, "metrics_address", "")
        status = manager.status()
        decisions = DecisionTimes(status.log_uri or config.log_uri)
        write_state(
            ManagerState(
                address=address,
                port=int(address.rpartition(":")[2]),
                token_path=token_path,
                pid=os.getpid(),
                pid_started=process_started(os.getpid()),
                ray_address=config.address,
                namespace=config.namespace,
                metrics_address=metrics_address or "",
                log_uri=status.log_uri or config.log_uri,
                config_path=config_path,
            )
        )
        log.info("manager ready: admin %s, metrics %s", address, metrics_address or "off")
        while not stop.wait(config.telemetry_window_s):
            if exporter is not None:
                exporter.update(manager.status(), decisions.latest_ms())
        log.info("stopping the manager")
        return 0
    finally:
        _remove_own_state()
        if exporter is not None:
            exporter.stop()
        if admin is not None:
            admin.stop()
        manager.stop()


def _remove_own_state() -> None:
    try:
        if read_state().pid == os.getpid():
            remove_state()
    except Exception:  # nothing to remove, or not ours: either way nothing to do
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster-mgr-daemon")
    parser.add_argument("--config", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--address")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from cluster_mgr.config import load_config

    config = load_config(args.config)
    token = Path(args.token_file).read_text(encoding="utf-8").strip()
    config = replace(config, admin_token=token, address=args.address or config.address)
    try:
        return run(config, args.token_file, os.path.abspath(args.config), handle_signals=True)
    except (AdminError, OSError, ValueError) as exc:
        log.error("manager failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
