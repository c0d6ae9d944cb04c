"""Rich renderings of control-plane replies, shared by ``status``, ``explain``, ``policies``
and the live table of ``demo``. Pure: data in, renderables out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cluster_mgr.control.api import Explanation, JobStatus, PolicyInfo, Status

# Units per resource kind, for printing (DESIGN.md: cpu in CPUs, memory in GiB, mesh in req/s).
UNITS = {"cpu": "", "memory": " GiB", "gpu": "", "pim_cores": "", "mesh": " req/s"}


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def fmt_allocation(amounts: Mapping[str, float]) -> str:
    """'cpu 1.5, mesh 200 req/s': nonzero kinds only, cpu first."""
    parts = [
        f"{kind} {fmt_num(amount)}{UNITS.get(kind, '')}"
        for kind, amount in sorted(amounts.items(), key=lambda kv: (kv[0] != "cpu", kv[0]))
        if amount
    ]
    return ", ".join(parts) or "-"


def fmt_p99(job: JobStatus, slo_metric: str = "latency") -> Text:
    """'12.3 / 50 ms' in green when the SLO is met, red when not, plain without data.

    JobStatus does not say which kind of SLO a job has; callers that know (the demo reads
    the config) pass ``slo_metric`` so a throughput target is not printed as milliseconds.
    """
    p99 = fmt_num(job.p99_ms)
    if job.slo_target is None:
        return Text(f"{p99} ms" if p99 != "-" else "-")
    if slo_metric == "throughput":
        text = f"{p99} ms (SLO {fmt_num(job.slo_target)} req/s)"
    else:
        text = f"{p99} / {fmt_num(job.slo_target)} ms"
    style = "" if job.slo_met is None else ("green" if job.slo_met else "bold red")
    return Text(text, style=style)


def jobs_table(
    jobs: Iterable[JobStatus],
    title: str | None = None,
    slo_metrics: Mapping[str, str] | None = None,
) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for col, justify in (
        ("job", "left"),
        ("kind", "left"),
        ("allocation", "left"),
        ("replicas", "right"),
        ("load req/s", "right"),
        ("P99 / SLO", "right"),
        ("reward", "right"),
        ("utility", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=col in ("job", "P99 / SLO"))
    for j in jobs:
        table.add_row(
            j.name,
            j.kind,
            fmt_allocation(j.allocation),
            str(j.replicas),
            fmt_num(j.load_rps, 4),
            fmt_p99(j, (slo_metrics or {}).get(j.name, "latency")),
            fmt_num(j.reward),
            fmt_num(j.utility),
        )
    return table


def status_header(s: Status) -> Text:
    mode = " (shadow: deciding, not enforcing)" if s.shadow else ""
    return Text(
        f"policy {s.policy}{mode} | round {s.round} (epoch {s.epoch}), next in "
        f"{fmt_num(max(s.next_round_in_s, 0.0), 2)} s | telemetry windows {s.telemetry_windows}, "
        f"lost {s.lost_windows} | log {s.log_uri or '-'}"
    )


def nodes_table(s: Status) -> Table:
    table = Table(title="nodes", title_justify="left")
    for col in ("node", "state", "capacity", "used", "agent"):
        table.add_column(col)
    for n in s.nodes:
        state = "dead" if not n.alive else ("draining" if n.draining else "ok")
        table.add_row(
            n.node_id,
            Text(state, style="green" if state == "ok" else "yellow"),
            fmt_allocation(n.capacity),
            fmt_allocation(n.used),
            "ok" if n.agent_ok else Text("down", style="red"),
        )
    return table


def status_view(s: Status) -> Group:
    return Group(status_header(s), jobs_table(s.jobs, title="jobs"), nodes_table(s))


def explanation_view(e: Explanation) -> Group:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    bounds = " / ".join(fmt_num(e.bounds.get(k)) for k in ("lcb", "mean", "ucb"))
    rows = [
        ("job", e.job),
        ("allocation", fmt_allocation(e.allocation)),
        ("load", f"{fmt_num(e.load_rps, 4)} req/s"),
        ("performance (lcb / mean / ucb)", bounds),
        ("share of objective", f"{e.share_of_objective:.1%}"),
        ("binding constraints", ", ".join(e.binding) or "none"),
    ]
    extra = sorted(set(e.bounds) - {"lcb", "mean", "ucb"})
    if extra:
        rows.append(("other bounds", ", ".join(f"{k} {fmt_num(e.bounds[k])}" for k in extra)))
    for key, value in rows:
        table.add_row(key, value)
    parts: list = [table]
    if e.misspecified:
        parts.append(
            Text(
                "the learned model does not fit this job's recent feedback (misspecified)",
                style="yellow",
            )
        )
    parts.extend(Text(f"- {note}") for note in e.notes)
    return Group(*parts)


def policies_table(infos: Iterable[PolicyInfo]) -> Table:
    table = Table(title="policies", title_justify="left")
    for col in ("name", "kind", "description", "source"):
        table.add_column(col, no_wrap=col == "name")
    for p in infos:
        table.add_row(p.name, p.kind, p.description, p.source)
    return table
