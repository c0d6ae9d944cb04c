"""``cluster-mgr demo``: run a small example on the local Ray backend and show it live.

The demo is a real run: a private local Ray instance, emulated jobs, the
manager deciding every round. While it runs it shows a table per round (live
in a terminal, one printed table per round otherwise) with a progress bar;
at the end it writes ``<out>/summary.json`` from the run log, which it keeps
at ``<out>/log``.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster_mgr.admin import render
from cluster_mgr.admin.summary import build_summary
from cluster_mgr.control.api import Status
from cluster_mgr.metrics import MetricsExporter
from cluster_mgr.settings import ManagerConfig
from cluster_mgr.store import RunLog, write_json_atomic

ManagerFactory = Callable[[ManagerConfig], Any]
FIRST_ROUND_TIMEOUT_S = 90.0


def start_load(config: ManagerConfig, duration_s: float) -> list[tuple[Any, Any]]:
    """One open-loop load generator per job whose workload has ``load_rps`` (a rate, or a
    list of rates one per ``load_step_s``); returns (actor, run ref) pairs."""
    from actors.load_generator import LoadGenerator  # Ray only when a demo runs

    gens = []
    for i, job in enumerate(config.jobs):
        trace = job.workload.get("load_rps")
        if trace is None:
            continue
        gen = LoadGenerator.options(namespace=config.namespace).remote(
            job.name,
            config.namespace,
            trace,
            step_s=float(job.workload.get("load_step_s", 1.0)),
            duration_s=duration_s,
            seed=config.seed + i,
        )
        gens.append((gen, gen.run.remote()))
    return gens


def stop_load(gens: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Stop the generators and collect their client-side reports (by job)."""
    import ray

    for gen, _ in gens:
        gen.stop.remote()
    reports = {}
    for gen, ref in gens:
        try:
            report = ray.get(ref, timeout=30)
            reports[str(report.get("job", len(reports)))] = report
        except Exception as exc:  # a generator that died: say so in the summary
            reports[f"failed-{len(reports)}"] = {"error": str(exc)}
        ray.kill(gen)
    return reports


def _none_if_nan(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def round_record(status: Status, elapsed_s: float) -> dict[str, Any]:
    """What the live view saw in one round, as JSON-able data."""
    return {
        "round": status.round,
        "elapsed_s": round(elapsed_s, 3),
        "jobs": {
            j.name: {
                "allocation": dict(j.allocation),
                "replicas": j.replicas,
                "load_rps": _none_if_nan(j.load_rps),
                "p99_ms": _none_if_nan(j.p99_ms),
                "slo_target_ms": j.slo_target,
                "slo_met": j.slo_met,
                "reward": _none_if_nan(j.reward),
                "utility": _none_if_nan(j.utility),
            }
            for j in status.jobs
        },
    }


class Demo:
    def __init__(
        self,
        config: ManagerConfig,
        out_dir: Path,
        duration_s: float,
        console: Console,
        factory: ManagerFactory,
        poll_s: float = 1.0,
        stop: threading.Event | None = None,
        load_starter: Callable[[ManagerConfig, float], list] = start_load,
        load_stopper: Callable[[list], dict[str, Any]] = stop_load,
    ) -> None:
        self.out_dir = out_dir
        self.duration_s = duration_s
        self.console = console
        self.factory = factory
        self.poll_s = poll_s
        self.stop = stop or threading.Event()
        self.load_starter = load_starter
        self.load_stopper = load_stopper
        # The demo owns its run: its log in the run folder, its own token, any free admin
        # port (so it never collides with a manager started by 'up'), metrics served here.
        self.config = replace(
            config,
            log_uri=str(out_dir / "log"),
            admin_bind="127.0.0.1:0",
            admin_token=config.admin_token or secrets.token_urlsafe(24),
            metrics_bind=None,
        )
        self.rounds: list[dict[str, Any]] = []
        self.interrupted = False
        self._last: Status | None = None
        self.slo_metrics = {j.name: j.slo.metric for j in config.jobs if j.slo is not None}

    def run(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.console.status("starting a local Ray instance and the manager..."):
            manager = self.factory(self.config)
            manager.start()
        try:
            self._wait_first_round(manager)
        except BaseException:
            manager.stop()
            raise
        exporter = MetricsExporter("127.0.0.1:0")
        self.console.print(f"metrics at {exporter.url}; run folder {self.out_dir}")
        final: Status | None = None
        load: dict[str, Any] = {}
        started = time.monotonic()
        try:
            gens = self.load_starter(self.config, self.duration_s)
            try:
                final = self._watch(manager, exporter)
            except KeyboardInterrupt:
                # Ctrl-C ends the run early; what ran so far is still summarised.
                self.interrupted = True
                final = self._last
            finally:
                load = self.load_stopper(gens)
        finally:
            elapsed = time.monotonic() - started
            exporter.stop()
            with self.console.status("stopping the manager..."):
                manager.stop()
        log = RunLog((final.log_uri if final and final.log_uri else None) or self.config.log_uri)
        summary = build_summary(
            self.config,
            log,
            final,
            self.rounds,
            duration_s=round(elapsed, 3),
            warmup_s=min(self.config.round_s, self.duration_s / 4),
        )
        summary["interrupted"] = self.interrupted
        summary["load_generators"] = {
            job: {k: _none_if_nan(v) if isinstance(v, float) else v for k, v in report.items()}
            for job, report in load.items()
        }
        write_json_atomic(str(self.out_dir / "summary.json"), summary)
        return summary

    def _wait_first_round(self, manager: Any) -> None:
        """Load sent before any replica runs would only measure refusals: wait for round 1
        to be enforced (a manager without ``info``, such as a test double, has no wait)."""
        info = getattr(manager, "info", None)
        if info is None:
            return
        deadline = time.monotonic() + FIRST_ROUND_TIMEOUT_S
        with self.console.status("placing the first round's replicas..."):
            while info().get("rounds_done", 0) < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the manager enforced no round within {FIRST_ROUND_TIMEOUT_S:g} s"
                    )
                time.sleep(0.2)  # polling a remote counter

    def _watch(self, manager: Any, exporter: MetricsExporter) -> Status:
        progress = Progress(
            TextColumn("[bold]demo"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TimeElapsedColumn(),
        )
        task = progress.add_task("demo", total=self.duration_s)
        start = time.monotonic()
        status: Status = manager.status()
        live_mode = self.console.is_terminal
        with Live(console=self.console, refresh_per_second=4, auto_refresh=live_mode) as live:
            while True:
                elapsed = time.monotonic() - start
                status = manager.status()
                self._last = status
                exporter.update(status)
                new_round = not self.rounds or self.rounds[-1]["round"] != status.round
                if new_round:
                    self.rounds.append(round_record(status, elapsed))
                progress.update(task, completed=min(elapsed, self.duration_s))
                view = Group(
                    progress,
                    render.status_header(status),
                    render.jobs_table(
                        status.jobs, title=f"round {status.round}", slo_metrics=self.slo_metrics
                    ),
                )
                if live_mode:
                    live.update(view)
                elif new_round:
                    # Not a terminal (a log, CI): one table per round, not a redraw per second.
                    live.console.print(view)
                if elapsed >= self.duration_s or self.stop.wait(
                    min(self.poll_s, self.duration_s - elapsed)
                ):
                    break
        return status


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"summary: {summary['rounds']} rounds, {summary['windows_ingested']} windows "
            f"ingested, {summary['lost_windows']} lost (after {summary['warmup_s']:g} s warm-up)"
        ),
        title_justify="left",
    )
    for col in (
        "job",
        "requests",
        "P99 ms",
        "mean window P99 ms",
        "SLO ms",
        "reward",
        "last allocation",
    ):
        table.add_column(col, justify="left" if col in ("job", "last allocation") else "right")
    last_alloc = summary["allocations"][-1] if summary["allocations"] else {}
    amounts = last_alloc.get("amounts") or {
        name: j["allocation"] for name, j in last_alloc.get("jobs", {}).items()
    }
    for name, j in summary["jobs"].items():
        table.add_row(
            name,
            str(j["offered"]),
            render.fmt_num(j["p99_ms"]),
            render.fmt_num(j["mean_window_p99_ms"]),
            render.fmt_num(j["slo_target_ms"]),
            render.fmt_num(j["reward"]),
            render.fmt_allocation(amounts.get(name, {})),
        )
    return table
