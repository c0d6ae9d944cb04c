"""The one-page HTML report of a bench: the table of metrics and ratios, and the plots inline."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from cluster_mgr.metrics_calc import HIGHER_IS_BETTER, METRIC_KEYS
from cluster_mgr.sim.bench import _fmt, table_policies


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></figure>'
    )


def write_report(report: dict[str, Any], out: Path, command: str) -> Path:
    names = [*report["baselines"], *report["ours"]] + (
        [report["oracle"]] if report["oracle"] else []
    )
    kind = {p: "baseline" for p in report["baselines"]} | {p: "ours" for p in report["ours"]}
    if report["oracle"]:
        kind[report["oracle"]] = "oracle"
    head = "".join(
        f'<th class="{kind[p]}">{html.escape(p)}<br><small>{kind[p]}</small></th>' for p in names
    )
    head += "".join(
        f"<th>{html.escape(p)}<br><small>/ best baseline, / oracle</small></th>"
        for p in report["ours"]
    )
    rows = []
    for k in METRIC_KEYS:
        cells = "".join(f"<td>{_fmt(report['results'][p][k])}</td>" for p in names)
        for p in report["ours"]:
            r = report["ratios"][p][k]
            cells += f"<td>{_fmt(r['vs_best_baseline'])} / {_fmt(r['vs_oracle'])}</td>"
        arrow = "higher is better" if HIGHER_IS_BETTER[k] else "lower is better"
        rows.append(
            f'<tr><th title="{arrow}">{k} {"↑" if HIGHER_IS_BETTER[k] else "↓"}</th>{cells}</tr>'
        )
    errors = "".join(
        f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in report.get("errors", {}).items()
    )
    gap = "".join(
        f"<li>{html.escape(p)}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in g.items()) + "</li>"
        for p, g in report.get("gap_closed", {}).items()
    )
    oracle_dir = out / report["oracle"] / f"seed-{report['seeds'][0]}" if report["oracle"] else None
    ours_dirs = [out / p / f"seed-{report['seeds'][0]}" for p in report["ours"][:1]]
    figs = _img(out / "welfare_over_time.png") + _img(out / "metrics.png")
    for d in [*ours_dirs, *([oracle_dir] if oracle_dir else [])]:
        figs += "".join(_img(d / f) for f in ("allocation.png", "p99.png"))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bench: {html.escape(report["scenario"])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }} th.ours {{ background: #e4f4e4; }}
th.oracle {{ background: #eee; }} figure {{ display: inline-block; margin: 4px; }} img {{ max-width: 620px; }}
code {{ background: #f4f4f4; padding: 2px 4px; }}
</style></head><body>
<h1>bench: {html.escape(report["scenario"])}</h1>
<p>Command: <code>{html.escape(command)}</code> &middot; seeds {report["seeds"]} &middot; oracle
{html.escape(str(report["oracle"]))}. Values are means over seeds; ratios are ours divided by the best
baseline on that metric and by the oracle (read them with the arrow: ↑ higher is better).</p>
<table><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>
<p>Share of the gap between the best baseline and the oracle that ours closes:</p><ul>{gap}</ul>
{f"<p>Runs that failed:</p><ul>{errors}</ul>" if errors else ""}
{figs}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def markdown(report: dict[str, Any], keys: tuple[str, ...] = METRIC_KEYS) -> str:
    """The bench table as Markdown (docs/benchmarks.md is written from it)."""
    order = table_policies(report)
    head = "| policy | kind | " + " | ".join(keys) + " |"
    rule = "|" + " --- |" * (len(keys) + 2)
    rows = [
        f"| {p} | {k} | " + " | ".join(_fmt(report["results"][p][m]) for m in keys) + " |"
        for p, k in order
    ]
    ratios = [
        f"| {p} / best baseline, / oracle | ours | "
        + " | ".join(
            f"{_fmt(report['ratios'][p][m]['vs_best_baseline'])} / {_fmt(report['ratios'][p][m]['vs_oracle'])}"
            for m in keys
        )
        + " |"
        for p in report["ours"]
    ]
    return "\n".join([head, rule, *rows, *ratios])


if __name__ == "__main__":  # python -m cluster_mgr.sim.report runs/x/bench.json [metric ...]
    import json
    import sys

    rep = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(rep, tuple(sys.argv[2:]) or METRIC_KEYS))
