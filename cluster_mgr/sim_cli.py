"""``cluster-mgr simulate`` and ``cluster-mgr bench``: the sim backend's commands.

``cluster_mgr.cli`` calls ``register(subparsers)``; each command's function
takes (args, ctx) with ``ctx.out`` / ``ctx.err`` rich consoles and returns the
exit code. A bad scenario (or an unknown policy) raises ``ConfigError``
subclasses, which the CLI prints as one line and exits 2: nothing runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cluster_mgr.config import ConfigError

# Everything heavier (numpy, scipy, pyarrow, matplotlib) is imported inside the commands: the
# CLI builds this parser for every command, and `cluster-mgr status` must not pay for the sim.

EXIT_OK = 0
EXIT_FAILURE = 1


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run a scenario on the sim backend (virtual time)")
    p.add_argument(
        "scenario", metavar="SCENARIO", help="scenario file (TOML, see docs/scenarios.md)"
    )
    p.add_argument("--policy", required=True, help="allocation policy (see 'cluster-mgr policies')")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the scenario's)")
    p.add_argument(
        "--duration", type=_positive, default=None, help="virtual seconds (default: the scenario's)"
    )
    p.add_argument("--out", required=True, help="run folder: summary.json, telemetry log, plots")
    p.add_argument("--feed", choices=("auto", "telemetry", "observe"), default="auto",
                   help="how windows reach the allocator: the Ray path (telemetry) or arrays (observe)")  # fmt: skip
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("bench", help="baselines, ours and the oracle side by side on a scenario")
    p.add_argument("scenario", metavar="SCENARIO", help="scenario file (TOML)")
    p.add_argument(
        "--policies", default="all", help="comma-separated policy names, or 'all' (default)"
    )
    p.add_argument("--seeds", type=_count, default=1, help="seeds per policy (default 1)")
    p.add_argument("--duration", type=_positive, default=None, help="virtual seconds per run")
    p.add_argument("--jobs", type=_count, default=None, help="parallel processes (default: CPUs)")
    p.add_argument("--out", required=True, help="folder for bench.json, report.html and every run")
    p.set_defaults(func=cmd_bench)


def _check_policies(names: list[str], where: str) -> None:
    from allocators.registry import policy_class

    for n in names:
        try:
            policy_class(n)
        except ValueError as exc:
            raise ConfigError(
                where, "--policies" if "," in where else "--policy", str(exc)
            ) from None


# --------------------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace, ctx: Any) -> int:
    from cluster_mgr.metrics_calc import METRIC_KEYS, summarize
    from cluster_mgr.scenario import load_scenario
    from cluster_mgr.sim.engine import SimOptions, Simulation
    from cluster_mgr.sim.plots import plot_run
    from cluster_mgr.store import write_json_atomic

    sc = load_scenario(args.scenario)
    _check_policies([args.policy], "<command line>")
    out = Path(args.out)
    sim = None
    with _progress(ctx) as progress:
        task = progress.add_task(f"{sc.name} / {args.policy}", total=None)

        def tick(done: int, total: int) -> None:
            if done % 10 == 0 or done == total:
                progress.update(task, completed=done, total=total)

        sim = Simulation(
            sc,
            SimOptions(
                policy=args.policy,
                seed=args.seed,
                duration_s=args.duration,
                out_dir=out,
                feed=args.feed,
            ),
            progress=tick,
        )
        result = sim.run()
    result.save(out / "run.npz")
    summary = {"policy": args.policy, "scenario": sc.name, "seed": result.seed, **summarize(result)}
    write_json_atomic(str(out / "summary.json"), summary)
    plot_run(result, out)
    table = Table(
        title=f"{sc.name}: {args.policy} (seed {result.seed}, {result.duration_s:g} s virtual)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in METRIC_KEYS:
        v = summary["metrics"][k]
        table.add_row(k, "-" if v is None else f"{v:.4g}")
    ctx.out.print(table)
    ctx.out.print(f"wrote {out}/summary.json, plots and the telemetry log ({out}/log)")
    return EXIT_OK


def _progress(ctx: Any) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} windows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=ctx.err,
        transient=False,
    )


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace, ctx: Any) -> int:
    from cluster_mgr.metrics_calc import HIGHER_IS_BETTER, METRIC_KEYS
    from cluster_mgr.scenario import load_scenario
    from cluster_mgr.sim.bench import (
        SHORT,
        all_policies,
        oracle_for,
        ratio_rows,
        run_bench,
        value_rows,
    )
    from cluster_mgr.sim.report import write_report

    sc = load_scenario(args.scenario)
    if args.policies.strip() == "all":
        policies = all_policies({str(j.spec.kind) for j in sc.jobs})
    else:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        if not policies:
            raise ConfigError("<command line>", "--policies", "no policy named")
        _check_policies(policies, "<command line>")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    oracle = oracle_for(sc.objective)
    n_runs = (len([p for p in policies if p != oracle]) + 1) * args.seeds
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(), console=ctx.err,
    ) as progress:  # fmt: skip
        task = progress.add_task(f"bench {sc.name}", total=n_runs)

        def done(policy: str, seed: int, err: str) -> None:
            progress.advance(task)
            if err:
                progress.console.print(f"[yellow]{policy} seed {seed} failed: {err}[/]")

        report = run_bench(
            args.scenario,
            policies,
            args.seeds,
            out,
            duration_s=args.duration,
            workers=args.jobs,
            on_done=done,
        )
    command = (
        "cluster-mgr " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 1
        else "bench"
    )
    command = "cluster-mgr bench " + " ".join(
        shlex.quote(x)
        for x in [
            args.scenario,
            "--policies",
            args.policies,
            "--seeds",
            str(args.seeds),
            "--out",
            args.out,
        ]
        + (["--duration", f"{args.duration:g}"] if args.duration else [])
    )
    write_report(report, out, command)
    arrows = {k: "↑" if HIGHER_IS_BETTER[k] else "↓" for k in METRIC_KEYS}
    table = Table(
        title=f"bench {sc.name}: means over seeds {report['seeds']}", title_justify="left"
    )
    table.add_column("policy")
    table.add_column("kind")
    for k in METRIC_KEYS:
        table.add_column(f"{SHORT[k]} {arrows[k]}", justify="right")
    for row in value_rows(report):
        table.add_row(*row)
    ctx.out.print(table)
    ratios = Table(
        title="ours: ratio to the best baseline / ratio to the oracle", title_justify="left"
    )
    ratios.add_column("policy")
    for k in METRIC_KEYS:
        ratios.add_column(f"{SHORT[k]} {arrows[k]}", justify="right")
    for row in ratio_rows(report):
        ratios.add_row(*row)
    ctx.out.print(ratios)
    if report["errors"]:
        ctx.err.print(f"{len(report['errors'])} run(s) failed; see bench.json 'errors'")
    ctx.out.print(f"wrote {out}/bench.json and {out}/report.html")
    return EXIT_OK if report["results"] else EXIT_FAILURE
