"""Where the CLI finds the running manager: a small state file written by ``up``.

``<home>/manager.json`` holds the admin address, the port, the path of the token
file (never the token itself) and the pid of the manager process; ``<home>`` is
``$CLUSTER_MGR_HOME`` or ``~/.cluster-mgr``. ``down`` removes it. Token files
are created with mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

HOME_ENV = "CLUSTER_MGR_HOME"
STATE_FILE = "manager.json"
TOKEN_FILE = "token"


@dataclass(frozen=True)
class ManagerState:
    address: str  # admin API 'host:port' as a client dials it
    port: int
    token_path: str
    pid: int  # the process running the manager (``down`` signals it)
    pid_started: float = 0.0  # its start time (psutil), so a reused pid is never signalled
    ray_address: str = "local"
    namespace: str = "cluster-mgr"
    metrics_address: str = ""  # '' when metrics are off
    log_uri: str = ""
    config_path: str = ""

    def token(self) -> str:
        return Path(self.token_path).read_text(encoding="utf-8").strip()


def manager_process(state: ManagerState) -> psutil.Process | None:
    """The live manager process the state file names, or None (exited, a zombie, or the
    pid now belongs to another process)."""
    try:
        proc = psutil.Process(state.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if state.pid_started and abs(proc.create_time() - state.pid_started) > 0.01:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_started(pid: int) -> float:
    return psutil.Process(pid).create_time()


class NoManagerError(RuntimeError):
    """No state file: no manager was started with ``cluster-mgr up`` (or it was taken down)."""


def home_dir() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cluster-mgr")


def state_path() -> Path:
    return home_dir() / STATE_FILE


def write_state(state: ManagerState) -> Path:
    """Atomically (temp file + rename), so a concurrent ``status`` never reads half a file."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_state() -> ManagerState:
    path = state_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NoManagerError(
            f"no running manager ({path} not found); start one with 'cluster-mgr up --config FILE'"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise NoManagerError(f"cannot read {path}: {exc}") from None
    try:
        return ManagerState(**data)
    except TypeError as exc:
        raise NoManagerError(f"{path} is not a manager state file: {exc}") from None


def remove_state() -> bool:
    """True if a state file was there."""
    try:
        state_path().unlink()
        return True
    except FileNotFoundError:
        return False


def write_token(token: str | None = None) -> tuple[str, Path]:
    """Store ``token`` (a fresh random one if None) in ``<home>/token`` with mode 0600."""
    token = token or secrets.token_urlsafe(32)
    path = home_dir() / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Create with 0600 from the start: no moment at which another user could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path
