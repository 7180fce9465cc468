"""`loader report --out report.html`: one self-contained HTML file (plotly.js is embedded once, inline,
so it opens with no network) with the pipeline's recent history as Plotly charts:

- rows loaded per run per table (the hover names each run's batch: `batch 2 of 3`);
- seconds per stage per run, stacked;
- lag per source at the end of each committed incremental run, over time, in minutes, hours or days;
- rows quarantined and keys deleted per run per table, only when a run had any (else a line of text);
- the latest committed run's rows per table, region and sink (a chart and a table) and its batches.

The figures are built here (plotly.graph_objects) and embedded as JSON; a few lines of inline script
plot them with the light or dark template the browser prefers, and switch when it changes. The numbers
are embedded as JSON too (`<script id="report-data">`), so a test (or a person) can compare what was
drawn with what was loaded."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from loader.errors import ConfigError
from loader.observe.results import TableResult
from loader.observe.run_history import RunEntry
from loader.redaction import redact_data

TEMPLATE = Path(__file__).parent / "templates" / "report.html"
STAGES = ("plan", "execute", "sinks")  # the run's order; any other stage a ledger holds comes after
# The largest unit the biggest lag reaches twice: the axis reads "2.6 days", not 89,292,635 seconds.
LAG_UNITS = (("days", "d", 86400), ("hours", "h", 3600), ("minutes", "min", 60), ("seconds", "s", 1))
# What a chart with nothing to draw says instead (quarantined and deleted: when every run had none).
EMPTY = {"rows": "No committed run yet", "stages": "No committed run yet",
         "lag": "No committed incremental run yet",
         "quarantined": "No rows were quarantined in these runs",
         "deleted": "No keys were deleted upstream in these runs"}
ZEROS_MEAN_EMPTY = ("quarantined", "deleted")


def report_data(pipeline: str, entries: list[RunEntry]) -> dict[str, Any]:
    """The charts' series from history entries (newest first, as `history` returns them), masked
    like every output (loader/redaction.py)."""
    runs = [e for e in reversed(entries) if e.outcome == "committed"]
    tables = sorted({t for e in runs for t in e.tables})
    found = {s for e in runs for s in e.timings_s}
    stages = [s for s in STAGES if s in found] + sorted(found - set(STAGES))
    incremental = [e for e in runs if e.mode == "incremental"]
    sources = sorted({s for e in incremental for s in e.lag_seconds})
    latest = runs[-1] if runs else None

    def per_table(value: Callable[[TableResult], int]) -> dict[str, list[list[Any]]]:
        return {t: [[e.run_number, value(e.tables[t])] for e in runs if t in e.tables] for t in tables}

    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return redact_data({
        "pipeline": pipeline,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [{"run": e.run_number, "mode": e.mode, "outcome": e.outcome, "started_at": iso(e.started_at),
                  "duration_s": e.duration_s, "batch": e.batch, "label": run_label(e)}
                 for e in reversed(entries)],
        "charts": {
            "rows": {"title": "Rows loaded per run", "x": "run", "y": "rows",
                     "series": per_table(lambda t: t.rows)},
            "stages": {"title": "Seconds per stage per run", "x": "run", "y": "seconds", "series": {
                s: [[e.run_number, round(e.timings_s[s], 3)] for e in runs if s in e.timings_s]
                for s in stages}},
            "lag": {"title": "Lag per source at the end of each incremental run", "x": "time", "y": "seconds",
                    "series": {s: [[iso(e.finished_at), e.lag_seconds[s]] for e in incremental
                                   if s in e.lag_seconds]
                               for s in sources}},
            "quarantined": {"title": "Rows quarantined per run", "x": "run", "y": "rows",
                            "series": per_table(lambda t: sum(t.quarantined.values()))},
            "deleted": {"title": "Keys deleted upstream per run (tombstones)", "x": "run", "y": "keys",
                        "series": per_table(lambda t: t.deletes_applied)},
        },
        "latest": None if latest is None else {
            "run": latest.run_number, "finished_at": iso(latest.finished_at),
            "rows": [{"table": t, "sink": sink, "region": region, "rows": count}
                     for t, result in sorted(latest.tables.items())
                     for sink, written in sorted(result.sinks.items())
                     for region, count in sorted(written.regions.items())],
            "batches": [{"run": e.run_number, "batch": e.batch, "finished_at": iso(e.finished_at),
                         "duration_s": e.duration_s,
                         "rows": {t: result.rows for t, result in sorted(e.tables.items())}}
                        for e in runs if _series(e) == _series(latest)],
        },
    })


def run_label(entry: RunEntry) -> str:
    """`run 7 · incremental · batch 2 of 3`: what the hover says about a run."""
    batch = entry.batch
    return f"run {entry.run_number} · {entry.mode}" + (
        f" · batch {batch['index']} of {batch['of']}" if batch and batch.get("of") else "")


def _series(entry: RunEntry) -> tuple[Any, ...]:
    """What names the run a ledger run was a batch of: its `series` (recorded with each batch), else
    (ledgers from before series were shown) the first batch's run number, as batches took consecutive
    numbers: batch i of n of the run whose first batch was run f is run f + i - 1."""
    batch = entry.batch or {}
    if batch.get("series"):
        return (entry.mode, batch["series"])
    if not batch.get("index"):
        return (entry.mode, entry.run_number, 1)
    return (entry.mode, entry.run_number - int(batch["index"]) + 1, batch.get("of"))


def lag_unit(seconds: float) -> tuple[str, str, int]:
    return next((unit for unit in LAG_UNITS if seconds >= 2 * unit[2]), LAG_UNITS[-1])


def human_seconds(seconds: float) -> str:
    _, short, size = lag_unit(seconds)
    return f"{seconds / size:,.1f} {short}" if size > 1 else f"{seconds:,.0f} s"


def figures(data: dict[str, Any]) -> dict[str, go.Figure]:
    """One figure per chart that has something to show (quarantined and deleted: only a non-zero value)."""
    charts, labels = data["charts"], {r["run"]: r["label"] for r in data["runs"]}
    batches = {r["run"]: f"{r['batch']['index']}/{r['batch']['of']}" for r in data["runs"]
               if r["batch"] and (r["batch"].get("of") or 0) > 1}
    out: dict[str, go.Figure] = {}

    def per_run(name: str, unit: str, fmt: str, *, stack: bool = False) -> None:
        chart = charts[name]
        if not any(y or name not in ZEROS_MEAN_EMPTY
                   for points in chart["series"].values() for _, y in points):
            return  # no committed run; for quarantined and deleted, none with any: a line of text says so
        traces = [go.Bar(name=series, x=[x for x, _ in points], y=[y for _, y in points],
                         customdata=[labels.get(x, f"run {x}") for x, _ in points],
                         hovertemplate=f"%{{customdata}}<br>{series}: %{{y:{fmt}}} {unit}<extra></extra>")
                  for series, points in chart["series"].items()]
        # Runs as categories: one evenly spaced bar group per ledger run, no half-run ticks; a run cut in
        # batches shows which batch each ledger run was ("3 (2/4)").
        runs = sorted({x for points in chart["series"].values() for x, _ in points})
        out[name] = _figure(traces, x_title="run (batch)" if any(batches.get(x) for x in runs) else "run",
                            y_title=chart["y"], barmode="stack" if stack else "group",
                            xaxis={"type": "category", "categoryorder": "array", "categoryarray": runs,
                                   "tickmode": "array", "tickvals": runs,
                                   "ticktext": [f"{x} ({batches[x]})" if batches.get(x) else str(x)
                                                for x in runs]})
        top = max((y for points in chart["series"].values() for _, y in points), default=0)
        if unit != "s" and top < 5:
            out[name].update_yaxes(dtick=1)  # a count: no ticks at 0.2 of a row

    per_run("rows", "rows", ",")
    per_run("stages", "s", ".2f", stack=True)
    lag = charts["lag"]["series"]
    if any(lag.values()):
        unit, _, size = lag_unit(max(y for points in lag.values() for _, y in points))
        # The axis has one unit; each point's hover its own ("12 s" beside "3.2 h").
        out["lag"] = _figure([go.Scatter(name=source, mode="lines+markers", x=[x for x, _ in points],
                                         y=[round(y / size, 2) for _, y in points],
                                         customdata=[human_seconds(y) for _, y in points],
                                         hovertemplate=f"{source}: %{{customdata}}<extra></extra>")
                              for source, points in lag.items()], x_title="run finished (UTC)",
                             y_title=f"lag ({unit})", hovermode="x unified")
    per_run("quarantined", "rows", ",")
    per_run("deleted", "keys", ",")
    latest = data["latest"]
    if latest and latest["rows"]:
        by_pair: dict[str, list[dict[str, Any]]] = {}
        for r in latest["rows"]:
            by_pair.setdefault(f"{r['table']} → {r['sink']}", []).append(r)
        out["regions"] = _figure([go.Bar(name=pair, x=[r["region"] for r in rows],
                                         y=[r["rows"] for r in rows],
                                         hovertemplate=f"{pair}<br>%{{x}}: %{{y:,}} rows<extra></extra>")
                                  for pair, rows in by_pair.items()],
                                 x_title="region", y_title="rows", barmode="group")
    return out


def _figure(traces: list[Any], *, x_title: str, y_title: str, **layout: Any) -> go.Figure:
    # No template here: the page's script applies the light or the dark one the browser prefers.
    return go.Figure(traces, layout={
        "template": "none", "autosize": True, "height": 340, "margin": {"l": 70, "r": 20, "t": 10, "b": 50},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        "xaxis_title": x_title, "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"}, **layout})


def render(data: dict[str, Any]) -> str:
    figs = figures(data)
    titles = {name: chart["title"] for name, chart in data["charts"].items()}
    if data["latest"]:
        titles["regions"] = f"Latest committed run ({data['latest']['run']}): rows per region"
    sections = []
    for name in ("rows", "stages", "lag", "quarantined", "deleted", "regions"):
        if name in figs:
            body = f'<div class="chart" id="chart-{name}" data-chart="{name}"></div>'
        elif name != "regions":
            body = f'<p class="empty" id="empty-{name}">{html.escape(EMPTY[name])}</p>'
        else:
            continue  # no committed run: the latest run's section says so
        sections.append(f"<section><h2>{html.escape(titles[name])}</h2>{body}</section>")
    committed = sum(r["outcome"] == "committed" for r in data["runs"])
    themes = {"light": pio.templates["plotly_white"], "dark": pio.templates["plotly_dark"]}
    values = {
        "title": html.escape(f"loader report: {data['pipeline']}"),
        "summary": html.escape(f"{len(data['runs'])} run(s), {committed} committed "
                               "(only committed runs are drawn); "
                               f"generated {data['generated_at']}"),
        "charts": "\n".join(sections),
        "latest": _latest_html(data["latest"]),
        # `</` inside the JSON would end the script element early (`<\/` is the same JSON string).
        "data": json.dumps(data, default=str).replace("</", "<\\/"),
        "figures": json.dumps(figs, cls=PlotlyJSONEncoder).replace("</", "<\\/"),
        "themes": json.dumps(themes, cls=PlotlyJSONEncoder).replace("</", "<\\/"),
        # plotly.js holds no `</script` today; were one to appear, `<\/` means the same in any JS string.
        "plotlyjs": re.sub(r"</(?=script)", r"<\\/", get_plotlyjs(), flags=re.IGNORECASE),
    }
    # One pass over the template: nothing substituted in is searched again.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m[1]], TEMPLATE.read_text(encoding="utf-8"))


def _latest_html(latest: dict[str, Any] | None) -> str:
    if latest is None:
        return '<p class="empty">No committed run yet</p>'

    def table(id_: str, caption: str, head: list[str], rows: list[list[str]]) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return (f'<table id="{id_}"><caption>{html.escape(caption)}</caption><tr>'
                + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>")

    batches = latest["batches"]
    of = (batches[-1]["batch"] or {}).get("of") or 1
    names = sorted({t for b in batches for t in b["rows"]})
    finished = str(latest["finished_at"])[:19].replace("T", " ")
    return (table("latest-table", f"run {latest['run']}, finished {finished} UTC",
                  ["table", "sink", "region", "rows"],
                  [[r["table"], r["sink"], r["region"], f"{r['rows']:,}"] for r in latest["rows"]])
            + table("batches-table", f"{len(batches)} of {of} batch(es) committed",
                    ["batch", "ledger run", "finished (UTC)", "seconds", *[f"{t} rows" for t in names]],
                    [[f"{(b['batch'] or {}).get('index', 1)} of {of}", str(b["run"]),
                      str(b["finished_at"])[11:19],
                      "-" if b["duration_s"] is None else f"{b['duration_s']:.2f}",
                      *[f"{b['rows'][t]:,}" if b["rows"].get(t) is not None else "-" for t in names]]
                     for b in batches]))


def write_report(path: Path, pipeline: str, entries: list[RunEntry]) -> dict[str, Any]:
    """Write the report atomically (a hidden file renamed into place); an unwritable path is a usage error."""
    data = report_data(pipeline, entries)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        hidden = path.with_name(f".{path.name}.tmp")
        hidden.write_text(render(data), encoding="utf-8")
        hidden.replace(path)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}: choose another --out") from error
    return data
