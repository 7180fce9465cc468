"""`loader report --out report.html`: one self-contained HTML file (no network needed to open it) with
the pipeline's recent history, drawn by a few lines of inline JavaScript into SVG:

- rows loaded per run, one line per table;
- seconds per stage per run (plan, execute, sinks), one line per stage;
- rows quarantined per run, one line per table;
- lag per source at the end of each committed incremental run, over time;
- the latest committed run's rows per table, region and sink.

The numbers are embedded as JSON (`<script id="report-data">`), so a test (or a person) can compare
what was drawn with what was loaded."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loader.errors import ConfigError

TEMPLATE = Path(__file__).parent / "templates" / "report.html"


def report_data(pipeline: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The charts' series from history entries (newest first, as `history` returns them)."""
    runs = [e for e in reversed(entries) if e["outcome"] == "committed"]
    tables = sorted({t for e in runs for t in e["tables"]})
    stages = [s for s in ("plan", "execute", "sinks") if any(s in e["timings_s"] for e in runs)]
    incremental = [e for e in runs if e["mode"] == "incremental"]
    sources = sorted({s for e in incremental for s in e["lag_seconds"]})
    latest = runs[-1] if runs else None
    return {
        "pipeline": pipeline,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [{"run": e["run_number"], "mode": e["mode"], "outcome": e["outcome"], "started_at": e["started_at"],
                  "duration_s": e["duration_s"]} for e in reversed(entries)],
        "charts": {
            "rows": {"title": "Rows loaded per run", "x": "run", "y": "rows", "series": {
                t: [[e["run_number"], e["tables"][t]["rows"]] for e in runs if t in e["tables"]] for t in tables}},
            "stages": {"title": "Seconds per stage per run", "x": "run", "y": "seconds", "series": {
                s: [[e["run_number"], round(e["timings_s"][s], 3)] for e in runs if s in e["timings_s"]] for s in stages}},
            "quarantined": {"title": "Rows quarantined per run", "x": "run", "y": "rows", "series": {
                t: [[e["run_number"], sum((e["tables"][t].get("quarantined") or {}).values())] for e in runs
                    if t in e["tables"]] for t in tables}},
            "lag": {"title": "Lag per source at the end of each incremental run", "x": "time", "y": "seconds",
                    "series": {s: [[e["finished_at"], e["lag_seconds"][s]] for e in incremental if s in e["lag_seconds"]]
                               for s in sources}},
        },
        "latest": None if latest is None else {
            "run": latest["run_number"], "finished_at": latest["finished_at"],
            "rows": [{"table": t, "sink": sink, "region": region, "rows": count}
                     for t, info in sorted(latest["tables"].items())
                     for sink, written in sorted(info["sinks"].items())
                     for region, count in sorted((written.get("regions") or {}).items())],
        },
    }


def render(data: dict[str, Any]) -> str:
    # `</` inside the JSON would end the script element early.
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    return (TEMPLATE.read_text(encoding="utf-8")
            .replace("{{title}}", html.escape(f"loader report: {data['pipeline']}"))
            .replace("{{data}}", payload))


def write_report(path: Path, pipeline: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
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
