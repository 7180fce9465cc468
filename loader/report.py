"""What the CLI shows people: run summaries, plans and status, as rich tables (or JSON payloads)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from loader.config import LoaderConfig
from loader.planning import RunPlan
from loader.runner import RunSummary

# Wide when piped (cron logs, CI): a narrow default would cut paths.
_out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def print_run_summary(summary: RunSummary) -> None:
    if summary.status == "nothing_new":
        _out.print(f"[bold]{summary.pipeline}[/]: nothing new to load (no run recorded, checkpoints unchanged)")
        return
    title = f"{summary.pipeline}: run {summary.run_number} committed" + (" (replayed)" if summary.replayed else "")
    table = Table(title=title)
    for column in ("table", "window", "rows", "sink", "rows written", "location"):
        table.add_column(column)
    for name, info in summary.tables.items():
        window = f"({info['window']['lower'] or '-inf'}, {info['window']['upper']}]"
        for sink, write in info["sinks"].items():
            written = "already landed" if write["skipped"] else f"{write['rows']:,}"
            table.add_row(name, window, f"{info['rows']:,}", sink, written, write["location"])
            name, window = "", ""
    _out.print(table)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in summary.timings.items())
    _out.print(f"engine: {summary.engine} ({summary.engine_reason}); {timings}")


def plan_payload(plan: RunPlan, *, replay_of: int | None) -> dict[str, Any]:
    sources = {}
    for name, p in plan.sources.items():
        sources[name] = {
            "window": None if p.is_empty else p.window.to_json(),
            "files_listed": p.files_seen,
            "files": len(p.files),
            "row_groups": p.row_groups,
            "estimated_rows": p.estimated_rows,
            "paths": [f.path for f in p.files],
        }
    return {"replay_of_run": replay_of, "nothing_new": plan.is_empty, "sources": sources}


def print_plan(payload: dict[str, Any]) -> None:
    if payload["replay_of_run"]:
        _out.print(f"run {payload['replay_of_run']} did not finish: the next run replays its windows")
    table = Table(title="plan of the next incremental run")
    for column in ("source", "window", "files (of listed)", "row groups", "est. rows"):
        table.add_column(column)
    for name, s in payload["sources"].items():
        window = "nothing new" if s["window"] is None else f"({s['window']['lower'] or '-inf'}, {s['window']['upper']}]"
        table.add_row(name, window, f"{s['files']} of {s['files_listed']}", str(s["row_groups"]), f"{s['estimated_rows']:,}")
    _out.print(table)


def status_payload(config: LoaderConfig) -> dict[str, Any]:
    from state import StateStore

    store = StateStore.open(config.state.url)
    try:
        checkpoints = store.checkpoints(config.pipeline)
        last = store.last_committed_run(config.pipeline)
        unfinished = store.unfinished_run(config.pipeline)
        lease = store.lease(config.pipeline)
    finally:
        store.close()
    now = datetime.now(UTC)
    sources = {}
    for name in config.sources:
        cp = checkpoints.get(name)
        rows = None
        if last is not None:
            rows = last.metrics.get("tables", {}).get(name, {}).get("rows")
        sources[name] = {
            "checkpoint": cp.cursor.isoformat() if cp else None,
            "checkpoint_run": cp.run_number if cp else None,
            "lag_seconds": round((now - cp.cursor).total_seconds(), 1) if cp else None,
            "last_run_rows": rows,
        }
    return {
        "pipeline": config.pipeline,
        "state": _mask_url(config.state.url),
        "sources": sources,
        "last_run": None if last is None else {
            "run_number": last.run_number, "mode": last.mode, "finished_at": _iso(last.finished_at),
            "tables": {t: info.get("rows") for t, info in last.metrics.get("tables", {}).items()},
        },
        "unfinished_run": None if unfinished is None else {
            "run_number": unfinished.run_number, "attempts": unfinished.attempts, "error": unfinished.error,
        },
        "lease": None if lease is None or lease.expires_at < now else {
            "holder": lease.holder, "expires_at": _iso(lease.expires_at),
        },
    }


def print_status(payload: dict[str, Any]) -> None:
    table = Table(title=f"{payload['pipeline']} ({payload['state']})")
    for column in ("source", "checkpoint", "run", "lag", "rows last run"):
        table.add_column(column)
    for name, s in payload["sources"].items():
        lag = "-" if s["lag_seconds"] is None else _human_seconds(s["lag_seconds"])
        rows = "-" if s["last_run_rows"] is None else f"{s['last_run_rows']:,}"
        table.add_row(name, s["checkpoint"] or "never loaded", str(s["checkpoint_run"] or "-"), lag, rows)
    _out.print(table)
    if payload["last_run"]:
        last = payload["last_run"]
        _out.print(f"last committed run: {last['run_number']} ({last['mode']}) at {last['finished_at']}")
    if payload["unfinished_run"]:
        u = payload["unfinished_run"]
        _out.print(f"[yellow]run {u['run_number']} did not finish ({u['attempts']} attempt(s)); the next run replays it. Last error: {u['error']}[/]")
    if payload["lease"]:
        _out.print(f"lease held by {payload['lease']['holder']} until {payload['lease']['expires_at']}")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _human_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _mask_url(url: str) -> str:
    """Never show a password from the state URL."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
