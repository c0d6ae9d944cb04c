"""The ``cluster-mgr`` command line (every command is described in docs/cli.md).

Exit codes: 0 ok; 2 bad input (a malformed config or job file, an unknown job
or node; one line, no traceback); 1 runtime failure (no manager running, the
manager unreachable or failing; one line). Commands that talk to a running
manager use the admin gRPC API and never import Ray, so they answer in well
under a second; only ``demo`` and the process ``up`` starts run a Ray driver.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster_mgr.admin.errors import AdminError
from cluster_mgr.admin.state import NoManagerError
from cluster_mgr.config import ConfigError, load_config, load_job
from cluster_mgr.control.api import PolicyInfo

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "examples" / "demo.toml"
DEBUG_ENV = "CLUSTER_MGR_DEBUG"  # set to show tracebacks of runtime failures


@dataclass
class Context:
    """What commands need besides their arguments; tests pass their own client and consoles."""

    out: Console
    err: Console
    client_factory: Callable[[float], Any]
    timeout: float = 5.0

    def client(self) -> Any:
        return self.client_factory(self.timeout)


def _default_client(timeout: float) -> Any:
    from cluster_mgr.admin.client import AdminClient

    return AdminClient.from_state(timeout=timeout)


# --------------------------------------------------------------------------- admin commands


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from cluster_mgr.admin import render

    status = ctx.client().status()
    if args.json:
        ctx.out.print_json(json.dumps(asdict(status), default=str, allow_nan=True))
    else:
        ctx.out.print(render.status_view(status))
    return EXIT_OK


def cmd_submit(args: argparse.Namespace, ctx: Context) -> int:
    # Parse locally first: a bad file is refused with its own path and key, nothing is sent.
    spec = load_job(args.job_file)
    name = ctx.client().submit(spec)
    ctx.out.print(f"submitted {name}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, ctx: Context) -> int:
    ctx.client().remove(args.name)
    ctx.out.print(f"removed {args.name}")
    return EXIT_OK


def cmd_drain(args: argparse.Namespace, ctx: Context) -> int:
    ctx.client().drain(args.node)
    ctx.out.print(f"draining {args.node}: no new replicas there; its replicas move away")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, ctx: Context) -> int:
    from cluster_mgr.admin import render

    explanation = ctx.client().explain(args.job)
    if args.json:
        ctx.out.print_json(json.dumps(asdict(explanation), default=str))
    else:
        ctx.out.print(render.explanation_view(explanation))
    return EXIT_OK


def cmd_policies(args: argparse.Namespace, ctx: Context) -> int:
    from cluster_mgr.admin import render

    infos = local_policies()
    if args.json:
        ctx.out.print_json(json.dumps([asdict(p) for p in infos]))
    else:
        ctx.out.print(render.policies_table(infos))
    return EXIT_OK


def local_policies() -> tuple[PolicyInfo, ...]:
    """The policies this installation offers: the allocators registry, or the built-in one."""
    try:
        from allocators import registry
    except ImportError:
        from allocators.policies.fair_share import ProportionalFairShare

        return (PolicyInfo("fair_share", "baseline", _summary(ProportionalFairShare), "built-in"),)
    return tuple(_as_policy_info(p, registry) for p in registry.list_policies())


def _summary(obj: Any) -> str:
    """First line of a class's docstring, else of its module's."""
    doc = getattr(obj, "__doc__", None) or getattr(sys.modules.get(obj.__module__), "__doc__", "")
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _as_policy_info(item: Any, registry: Any) -> PolicyInfo:
    """Accept what the registry lists: PolicyInfo-like records, or bare names."""
    if isinstance(item, PolicyInfo):
        return item
    if isinstance(item, str):
        cls = registry.get_policy(item)
        kind = getattr(cls, "kind", "")
        return PolicyInfo(item, kind if isinstance(kind, str) else "", _summary(cls), "")
    return PolicyInfo(
        str(getattr(item, "name", item)),
        str(getattr(item, "kind", "")),
        str(getattr(item, "description", "")),
        str(getattr(item, "source", "")),
    )


# --------------------------------------------------------------------------- up / down


def cmd_up(args: argparse.Namespace, ctx: Context) -> int:
    from cluster_mgr.admin import state

    config = load_config(args.config)  # a bad file stops here, before anything starts
    if args.address:
        config = replace(config, address=args.address)
    try:
        running = state.read_state()
    except NoManagerError:
        running = None
    if running is not None:
        if state.manager_process(running) is not None:
            ctx.err.print(
                f"error: a manager is already running (pid {running.pid}, admin at "
                f"{running.address}); run 'cluster-mgr down' first"
            )
            return EXIT_FAILURE
        state.remove_state()  # left behind by a manager that died
    _, token_path = state.write_token(config.admin_token or None)
    log_path = state.home_dir() / "manager.log"
    cmd = [sys.executable, "-m", "cluster_mgr.admin.daemon", "--config", str(args.config)]
    cmd += ["--token-file", str(token_path)]
    if args.address:
        cmd += ["--address", args.address]
    if args.foreground:
        from cluster_mgr.admin import daemon

        return daemon.main(cmd[3:])
    with open(log_path, "ab") as log_file:
        # A session of its own: the manager outlives this command and ignores its Ctrl-C.
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    ready = _wait_ready(proc, args.timeout, ctx)
    if ready is None:
        return EXIT_FAILURE
    ctx.out.print(
        f"manager up (pid {ready.pid}): admin {ready.address}, metrics "
        f"{ready.metrics_address or 'off'}, log {ready.log_uri}; process log {log_path}"
    )
    return EXIT_OK


def _wait_ready(proc: subprocess.Popen, timeout: float, ctx: Context) -> Any:
    from cluster_mgr.admin import state

    deadline = time.monotonic() + timeout
    with ctx.err.status(f"starting the manager (pid {proc.pid})..."):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                ctx.err.print(
                    f"error: the manager exited with code {proc.returncode}: "
                    f"{_last_line(state.home_dir() / 'manager.log')}"
                )
                return None
            try:
                current = state.read_state()
                if current.pid == proc.pid:
                    return current
            except NoManagerError:
                pass
            time.sleep(0.2)
    proc.terminate()  # our own child, by its handle
    ctx.err.print(f"error: the manager was not ready within {timeout:g} s; stopped it")
    return None


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def cmd_down(args: argparse.Namespace, ctx: Context) -> int:
    import psutil

    from cluster_mgr.admin import state

    current = state.read_state()
    proc = state.manager_process(current)
    if proc is None:
        state.remove_state()
        ctx.out.print(f"no manager process (pid {current.pid} is gone); removed its state file")
        return EXIT_OK
    proc.terminate()  # SIGTERM to the process the manager recorded (pid and start time)
    with ctx.err.status(f"stopping the manager (pid {current.pid})..."):
        try:
            proc.wait(timeout=args.timeout)
        except psutil.TimeoutExpired:
            ctx.err.print(
                f"error: the manager (pid {current.pid}) did not stop in {args.timeout:g} s"
            )
            return EXIT_FAILURE
    state.remove_state()
    ctx.out.print(f"manager down (pid {current.pid})")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from cluster_mgr.admin.daemon import ray_manager
    from cluster_mgr.admin.demo import Demo, summary_table

    config = load_config(args.config)
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = Demo(config, out, args.duration, ctx.out, ray_manager).run()
    ctx.out.print(summary_table(summary))
    ctx.out.print(f"wrote {out / 'summary.json'} and the run log {out / 'log'}")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster-mgr",
        description="A performance-aware resource manager for Ray clusters.",
    )
    parser.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds to wait for the manager (5)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run the example on a local Ray instance (about a minute)")
    p.add_argument("--duration", type=_positive, default=60.0, help="seconds to run (60)")
    p.add_argument("--out", help="run folder (default runs/demo-<time>)")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="config file (examples/demo.toml)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("up", help="start the manager in the background")
    p.add_argument("--config", required=True, help="manager config (TOML)")
    p.add_argument("--address", help="Ray address: 'local' or a cluster (overrides the config)")
    p.add_argument("--foreground", action="store_true", help="run in this process until Ctrl-C")
    p.add_argument("--wait", dest="timeout", type=_positive, default=180.0,
                   help="seconds to wait until the manager is ready (180)")  # fmt: skip
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the manager started by 'up'")
    p.add_argument("--wait", dest="timeout", type=_positive, default=60.0,
                   help="seconds to wait until it stopped (60)")  # fmt: skip
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="jobs, allocations, P99 against SLO, nodes")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("submit", help="add or update a job from a job file (TOML)")
    p.add_argument("job_file", metavar="JOB.toml")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("remove", help="remove a job")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("drain", help="move replicas off a node and place none there")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("explain", help="why a job has what it has")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("policies", help="the allocation policies available")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_policies)

    _register_plugins(sub)
    return parser


def _register_plugins(sub: Any) -> None:
    """``simulate`` and ``bench`` live in cluster_mgr.sim_cli (the sim backend) when present."""
    try:
        from cluster_mgr import sim_cli  # type: ignore[attr-defined]
    except ImportError:
        return
    sim_cli.register(sub)


# --------------------------------------------------------------------------- main


def main(
    argv: Sequence[str] | None = None,
    *,
    client_factory: Callable[[float], Any] | None = None,
    out: Console | None = None,
    err: Console | None = None,
) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    ctx = Context(
        out=out or _console(),
        err=err or Console(stderr=True),
        client_factory=client_factory or _default_client,
    )
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors are bad input (2), --help is 0
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    ctx.timeout = args.timeout
    try:
        return int(args.func(args, ctx))
    except ConfigError as exc:
        ctx.err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except AdminError as exc:
        ctx.err.print(f"error: {exc.details}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILURE
    except NoManagerError as exc:
        ctx.err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        ctx.err.print("interrupted")
        return 130
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else ""
        ctx.err.print(
            f"error: {type(exc).__name__}: {reason} (set {DEBUG_ENV}=1 for a traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_FAILURE


def _console() -> Console:
    # Piped into a log, rich would assume 80 columns and squeeze the tables; logs are wide.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160 if wide else None)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
