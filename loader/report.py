"""What the CLI shows people: run summaries, plans and status, as rich tables (or JSON payloads)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
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
    # escaped: reasons quote commands such as pip install -e '.[gpu]', which rich would read as markup
    _out.print(escape(f"executor: {summary.executor} ({summary.executor_reason}); transforms: {summary.engine} "
                      f"({summary.engine_reason}); {timings}"))


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
        last = store.last_committed_run(config.pipeline, mode="incremental")
        unfinished = store.unfinished_run(config.pipeline)
        lease = store.lease(config.pipeline)
        from loader.backfill import backfill_status

        backfill = backfill_status(store, config.pipeline,
                                   lease_held=lease is not None and lease.expires_at >= datetime.now(UTC))
    finally:
        store.close()
    now = datetime.now(UTC)
    sources = {}
    for name in config.sources:
        cp = checkpoints.get(name)
        rows = quarantined = None
        if last is not None:
            info = last.metrics.get("tables", {}).get(name, {})
            rows, quarantined = info.get("rows"), sum((info.get("quarantined") or {}).values())
        sources[name] = {
            "checkpoint": cp.cursor.isoformat() if cp else None,
            "checkpoint_run": cp.run_number if cp else None,
            "lag_seconds": round((now - cp.cursor).total_seconds(), 1) if cp else None,
            "last_run_rows": rows,
            "last_run_quarantined": quarantined,
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
        "backfill": backfill,
    }


def print_status(payload: dict[str, Any]) -> None:
    table = Table(title=f"{payload['pipeline']} ({payload['state']})")
    for column in ("source", "checkpoint", "run", "lag", "rows last run", "quarantined last run"):
        table.add_column(column)
    for name, s in payload["sources"].items():
        lag = "-" if s["lag_seconds"] is None else _human_seconds(s["lag_seconds"])
        rows = "-" if s["last_run_rows"] is None else f"{s['last_run_rows']:,}"
        bad = "-" if s.get("last_run_quarantined") is None else f"{s['last_run_quarantined']:,}"
        table.add_row(name, s["checkpoint"] or "never loaded", str(s["checkpoint_run"] or "-"), lag, rows, bad)
    _out.print(table)
    if payload["last_run"]:
        last = payload["last_run"]
        _out.print(f"last committed run: {last['run_number']} ({last['mode']}) at {last['finished_at']}")
    if payload["unfinished_run"]:
        u = payload["unfinished_run"]
        _out.print(f"[yellow]run {u['run_number']} did not finish ({u['attempts']} attempt(s)); the next run replays it. Last error: {escape(str(u['error']))}[/]")
    if payload["lease"]:
        _out.print(f"lease held by {payload['lease']['holder']} until {payload['lease']['expires_at']}")
    if payload.get("backfill"):
        b = payload["backfill"]
        r = b["request"]
        _out.print(f"backfill {r.get('id', '')} ({r['start']}, {r['end']}] of {', '.join(r['sources'])} into "
                   f"{', '.join(r['sinks'])}: {b['chunks_done']}/{b['chunks_total']} chunks done, {b['state']}"
                   + ("" if b["state"] != "interrupted" else f"; `loader backfill --resume {r.get('id')}` continues it"))


def print_history(pipeline: str, entries: list[dict[str, Any]]) -> None:
    if not entries:
        _out.print(f"{pipeline}: no runs yet (`loader run --incremental` starts one)")
        return
    table = Table(title=f"{pipeline}: the newest {len(entries)} run(s)")
    for column in ("run", "mode", "outcome", "started (UTC)", "took", "rows per table", "quarantined", "seconds per stage"):
        table.add_column(column)
    for e in entries:
        rows = ", ".join(f"{name} {info['rows']:,}" for name, info in e["tables"].items() if info["rows"] is not None)
        stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in e["timings_s"].items())
        outcome = e["outcome"] if e["outcome"] != "failed" else f"[red]failed[/]: {escape(str(e['error'] or ''))[:120]}"
        took = "-" if e["duration_s"] is None else _human_seconds(e["duration_s"])
        bad = ", ".join(f"{name} {sum(info['quarantined'].values()):,}" for name, info in e["tables"].items()
                        if info.get("quarantined"))
        table.add_row(str(e["run_number"]), e["mode"], outcome, e["started_at"][:19].replace("T", " "), took,
                      rows or "-", bad or "-", stages or "-")
    _out.print(table)


@contextmanager
def backfill_progress(*, quiet: bool) -> Iterator[Callable[[Any, int], None]]:
    """A progress bar over the chunks in a terminal; one log line per chunk otherwise."""
    import logging

    log = logging.getLogger("loader.backfill")
    if quiet or not sys.stderr.isatty():
        def line(chunk: Any, total: int) -> None:
            rows = sum(t.get("rows", 0) for t in chunk.tables.values())
            window = f"({chunk.window.lower.isoformat()}, {chunk.window.upper.isoformat()}]"
            log.info("backfill chunk %d/%d %s: %s%s in %.1fs", chunk.index + 1, total, window,
                     chunk.status.replace("_", " "), f", run {chunk.run_number}, {rows:,} rows" if chunk.run_number else "",
                     chunk.seconds)
        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=Console(stderr=True)) as progress:
        task = progress.add_task("", total=None)

        def advance(chunk: Any, total: int) -> None:
            progress.update(task, total=total, advance=1, description=f"chunk {chunk.index + 1}: {chunk.status.replace('_', ' ')}")
        yield advance


def print_backfill(payload: dict[str, Any]) -> None:
    r = payload["request"]
    if payload["dry_run"]:
        _out.print(f"dry run: {payload['chunks_total']} chunk(s) would be loaded into {', '.join(r['sinks'])}; nothing "
                   f"was written (rows are estimates from row-group statistics)")
    table = Table(title=f"{payload['pipeline']}: backfill ({r['start']}, {r['end']}] {'(dry run)' if payload['dry_run'] else ''}")
    for column in ("chunk", "window", "status", "run", "files", "rows"):
        table.add_column(column)
    for c in payload["chunks"]:
        rows = sum(t.get("rows", 0) for t in c["tables"].values()) if c["tables"] else c["estimated_rows"]
        table.add_row(str(c["index"] + 1), f"({c['window']['lower']}, {c['window']['upper']}]", c["status"].replace("_", " "),
                      str(c["run_number"] or "-"), str(c["files"]), f"{rows:,}")
    _out.print(table)
    if payload["dry_run"]:
        return
    _out.print(f"{payload['chunks_loaded']} chunk(s) loaded, {payload['chunks_already_loaded']} already loaded; "
               f"sinks {', '.join(r['sinks'])}; incremental checkpoints unchanged")


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


def print_doctor(pipeline: str, checks: list[Any]) -> None:
    table = Table(title=f"{pipeline}: loader doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    colour = {"ok": "green", "unavailable": "yellow", "failed": "red"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", escape(c.detail))
    _out.print(table)
