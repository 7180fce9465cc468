"""What the CLI shows people: run summaries, plans and status, as rich tables (or JSON payloads)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from loader.config import LoaderConfig
from loader.landing.plans import RunPlan
from loader.observe.results import tables_from_json
from loader.observe.run_history import RunEntry
from loader.protocol.batches import Cutting
from loader.protocol.incremental import RunSummary
from loader.redaction import redact, redact_data


class _Stdout:
    """rich's console on stdout, made on first use: rich is imported (about 15 ms) only by what prints
    with it, not by a run with nothing new on a pipe (see print_run_summary)."""

    def __init__(self) -> None:
        self._console: Any = None

    def print(self, *objects: Any, **options: Any) -> None:
        if self._console is None:
            from rich.console import Console

            # Wide when piped (cron logs, CI): a narrow default would cut paths.
            self._console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
        self._console.print(*objects, **options)


_out = _Stdout()


def escape(markup: str) -> str:
    """rich.markup.escape (rich imported on first use)."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


def _plain_stdout() -> bool:
    """True when rich would print no styles at all on stdout: not a terminal, and neither FORCE_COLOR
    nor TTY_COMPATIBLE=1 (which make rich treat it as one). Then plain text is the very same output."""
    if "FORCE_COLOR" in os.environ or os.environ.get("TTY_COMPATIBLE", "") == "1":
        return False
    try:
        return not sys.stdout.isatty()
    except (AttributeError, ValueError):
        return True


def print_run_summary(summary: RunSummary) -> None:
    if summary.status == "nothing_new":
        facts = "no new facts" if summary.dimensions else "nothing new to load"
        # cron, CI, pipes: the frequent case, without importing rich
        if _plain_stdout() and not summary.dimensions:
            print(f"{summary.pipeline}: {facts} (no run recorded, checkpoints unchanged)")
            return
        _out.print(f"[bold]{summary.pipeline}[/]: {facts} (no run recorded, checkpoints unchanged)")
        _print_dimensions(summary.dimensions)
        return
    from rich.table import Table

    numbers = [b.run_number for b in summary.batches]
    runs = (f"run {numbers[0]}" if len(numbers) == 1
            else f"runs {numbers[0]}-{numbers[-1]} ({len(numbers)} batches)")
    title = f"{summary.pipeline}: {runs} committed" + (f" (run {numbers[0]} replayed)"
                                                       if summary.replayed else "")
    table = Table(title=title)
    # Upstream deletes: the tombstones a table's rows carried, and what each sink did with them
    # (removed or marked keys; tombstone versions written to the Parquet log). Shown when there were any.
    deletes = any(t.deleted or any(w.deleted for w in t.sinks.values()) for t in summary.tables.values())
    columns = ("table", "window", "rows", *(("deleted",) if deletes else ()), "sink", "rows written",
               *(("deletes applied",) if deletes else ()), "location")
    for column in columns:
        table.add_column(column)
    for name, result in summary.tables.items():
        bounds = result.window.to_json() if result.window else {"lower": None, "upper": "?"}
        window = f"({bounds['lower'] or '-inf'}, {bounds['upper']}]"
        for sink, write in result.sinks.items():
            written = "already landed" if write.skipped else f"{write.rows:,}"
            if deletes:
                applied = "-" if write.skipped else f"{write.deleted:,}"
                table.add_row(name, window, f"{result.rows:,}", f"{result.deleted:,}", sink, written,
                              applied, redact(write.location))
            else:
                table.add_row(name, window, f"{result.rows:,}", sink, written, redact(write.location))
            name, window = "", ""
    _out.print(table)
    _print_dimensions(summary.dimensions)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in summary.timings.items())
    if len(summary.batches) > 1:
        rows = (", ".join(f"{b.rows:,}" for b in summary.batches[:12])
                + (", ..." if len(summary.batches) > 12 else ""))
        _out.print(f"batches of about {summary.max_batch_rows:,} rows (run.max_batch_rows): {rows} rows")
    # escaped: reasons quote commands such as pip install -e '.[gpu]', which rich would read as markup
    _out.print(escape(f"executor: {summary.executor} ({summary.executor_reason}); transforms: "
                      f"{summary.engine} ({summary.engine_reason}); {timings}"))


def _print_dimensions(dimensions: dict[str, dict[str, Any]]) -> None:
    """The dimension tables this run loaded (their files changed): versions opened and closed per sink
    (scd2; merge: rows upserted and deleted; replace: rows written)."""
    if not dimensions:
        return
    from rich.table import Table

    table = Table(title="dimensions (files changed since their last load)")
    for column in ("dimension", "mode", "rows read", "sink", "opened", "closed", "stale"):
        table.add_column(column)
    for name, info in dimensions.items():
        label, mode, rows = name, info["mode"], f"{info['rows']:,}"
        for sink, counts in info["sinks"].items():
            table.add_row(label, mode, rows, sink, f"{counts['opened']:,}", f"{counts['closed']:,}",
                          f"{counts.get('stale', 0):,}")
            label, mode, rows = "", "", ""
    _out.print(table)


def plan_payload(plan: RunPlan, *, replay_of: int | None, cutting: Cutting | None = None) -> dict[str, Any]:
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
    batches = None if cutting is None else {
        "budget": cutting.budget, "warnings": cutting.warnings,
        "batches": [{"number": b.number, "estimated_rows": b.estimated_rows, "windows": {
            name: p.window.to_json() for name, p in b.plan.sources.items()}} for b in cutting.batches],
    }
    return {"replay_of_run": replay_of, "nothing_new": plan.is_empty, "sources": sources, "batches": batches}


def print_plan(payload: dict[str, Any]) -> None:
    from rich.table import Table

    if payload["replay_of_run"]:
        _out.print(f"run {payload['replay_of_run']} did not finish: the next run replays its windows")
    table = Table(title="plan of the next incremental run")
    for column in ("source", "window", "files (of listed)", "row groups", "est. rows"):
        table.add_column(column)
    for name, s in payload["sources"].items():
        window = ("nothing new" if s["window"] is None
                  else f"({s['window']['lower'] or '-inf'}, {s['window']['upper']}]")
        table.add_row(name, window, f"{s['files']} of {s['files_listed']}", str(s["row_groups"]),
                      f"{s['estimated_rows']:,}")
    _out.print(table)
    cut = payload.get("batches")
    if cut and cut["batches"]:
        sizes = [b["estimated_rows"] for b in cut["batches"]]
        _out.print(f"{len(sizes)} batch(es) of about {cut['budget']:,} rows at most (run.max_batch_rows), "
                   f"largest {max(sizes):,} estimated rows; each commits before the next")
        for warning in cut["warnings"]:
            _out.print(f"[yellow]warning: {escape(warning)}[/]")


def status_payload(config: LoaderConfig) -> dict[str, Any]:
    from state import StateStore

    store = StateStore.open(config.state.url)
    try:
        checkpoints = store.checkpoints(config.pipeline)
        last = store.last_committed_run(config.pipeline, mode="incremental")
        unfinished = store.unfinished_run(config.pipeline)
        lease = store.lease(config.pipeline)
        batches = batch_progress(store, config.pipeline,
                                 lease_held=lease is not None and lease.expires_at >= datetime.now(UTC))
        from loader.protocol.backfill import backfill_status

        backfill = backfill_status(store, config.pipeline,
                                   lease_held=lease is not None and lease.expires_at >= datetime.now(UTC))
        dimension_loads = store.dimension_sink_loads(config.pipeline)
        from loader.protocol.fact_gaps import gaps_payload, open_fact_gaps

        fact_gaps = gaps_payload(config, open_fact_gaps(config, store))
    finally:
        store.close()
    now = datetime.now(UTC)
    sources = {}
    for name in config.sources:
        cp = checkpoints.get(name)
        rows = quarantined = deleted = None
        result = None if last is None else tables_from_json(last.metrics.get("tables")).get(name)
        if last is not None:
            rows = None if result is None else result.rows
            quarantined = 0 if result is None else sum(result.quarantined.values())
            deleted = 0 if result is None else result.deletes_applied
        sources[name] = {
            "checkpoint": cp.cursor.isoformat() if cp else None,
            "checkpoint_run": cp.run_number if cp else None,
            "lag_seconds": round((now - cp.cursor).total_seconds(), 1) if cp else None,
            "last_run_rows": rows,
            "last_run_quarantined": quarantined,
            "last_run_deleted": deleted,
        }
    return redact_data({  # the state URL's password (user info or query), a secret in the last error
        "pipeline": config.pipeline,
        "state": config.state.url,
        "sources": sources,
        "last_run": None if last is None else {
            "run_number": last.run_number, "mode": last.mode, "finished_at": _iso(last.finished_at),
            "tables": {t: result.rows for t, result in tables_from_json(last.metrics.get("tables")).items()},
        },
        "unfinished_run": None if unfinished is None else {
            "run_number": unfinished.run_number, "attempts": unfinished.attempts, "error": unfinished.error,
        },
        "lease": None if lease is None or lease.expires_at < now else {
            "holder": lease.holder, "expires_at": _iso(lease.expires_at),
        },
        "backfill": backfill,
        "batches": batches,
        # the last load of each dimension table, and per sink what it changed there
        "dimensions": {name: _dimension_status(loads) for name, loads in sorted(dimension_loads.items())},
        # facts sinks enabled later lack, with the `loader backfill` that fills them (protocol/fact_gaps.py)
        "fact_gaps": fact_gaps,
    })


def _dimension_status(per_sink: dict[str, Any]) -> dict[str, Any]:
    """One dimension's newest load (loaded_at, cursor, mode, rows) and per sink what its own last load
    changed (a load recorded before loads were kept per sink, sink '*', speaks for the sinks it names)."""
    newest = max(per_sink.values(), key=lambda d: d.loaded_at)
    sinks: dict[str, Any] = {}
    for name, load in sorted(per_sink.items(), key=lambda item: item[1].loaded_at):
        changed = load.changes.get("sinks", {})
        sinks.update(changed if name == "*" else {name: changed[name]} if name in changed else {})
    return {"loaded_at": _iso(newest.loaded_at), "cursor": _iso(newest.cursor) if newest.cursor else None,
            "mode": newest.changes.get("mode"), "rows": newest.changes.get("rows"), "sinks": sinks}


def batch_progress(store: Any, pipeline: str, *, lease_held: bool) -> dict[str, Any] | None:
    """The latest incremental run cut in batches, unless it finished: `running` (the lease is held) or
    `interrupted`, with batches and rows committed so far and the batch in flight (to be replayed)."""
    latest = store.runs(pipeline, limit=1, mode="incremental")
    info = latest[0].metrics.get("batch") if latest else None
    if not info:
        return None
    total = int(info["of"])
    series = [r for r in store.runs(pipeline, limit=total + 1, mode="incremental")
              if r.metrics.get("batch", {}).get("series") == info["series"]]
    committed = [r for r in series if r.status == "committed"]
    in_flight = next((r for r in series if r.status == "planned"), None)
    if len(committed) >= total and in_flight is None:
        return None
    rows = sum(sum(int(t.get("rows") or 0) for t in r.metrics.get("tables", {}).values()) for r in committed)
    return {
        "state": "running" if lease_held else "interrupted",
        "batches_done": len(committed), "batches_total": total, "rows_done": rows,
        "rows_planned": info.get("planned_rows"),
        "batch_in_flight": None if in_flight is None else {
            "run_number": in_flight.run_number, "index": in_flight.metrics.get("batch", {}).get("index"),
            "attempts": in_flight.attempts},
    }


def print_status(payload: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{payload['pipeline']} ({payload['state']})")
    for column in ("source", "checkpoint", "run", "lag", "rows last run", "quarantined last run",
                   "deleted last run"):
        table.add_column(column)
    for name, s in payload["sources"].items():
        lag = "-" if s["lag_seconds"] is None else _human_seconds(s["lag_seconds"])
        rows = "-" if s["last_run_rows"] is None else f"{s['last_run_rows']:,}"
        bad = "-" if s.get("last_run_quarantined") is None else f"{s['last_run_quarantined']:,}"
        deleted = "-" if s.get("last_run_deleted") is None else f"{s['last_run_deleted']:,}"
        table.add_row(name, s["checkpoint"] or "never loaded", str(s["checkpoint_run"] or "-"), lag, rows,
                      bad, deleted)
    _out.print(table)
    for name, d in payload.get("dimensions", {}).items():
        changes = ", ".join(f"{sink} {c['opened']:,} opened / {c['closed']:,} closed"
                            for sink, c in d["sinks"].items())
        _out.print(f"dimension {name} ({d['mode']}, {d['rows']:,} rows): last loaded {d['loaded_at']}: "
                   f"{changes}")
    for gap in payload.get("fact_gaps", []):
        _out.print(f"[yellow]{escape(gap['message'])}[/]")
    if payload["last_run"]:
        last = payload["last_run"]
        _out.print(f"last committed run: {last['run_number']} ({last['mode']}) at {last['finished_at']}")
    if payload.get("batches"):
        b = payload["batches"]
        flight = b["batch_in_flight"]
        doing = f"; batch {flight['index']} (run {flight['run_number']}) in flight" if flight else ""
        planned = f" of about {b['rows_planned']:,}" if b.get("rows_planned") else ""
        if b["state"] == "running":
            _out.print(f"run in progress: {b['batches_done']} of {b['batches_total']} batches committed, "
                       f"{b['rows_done']:,}{planned} rows{doing}")
        else:
            _out.print(f"[yellow]run interrupted after {b['batches_done']} of {b['batches_total']} batches "
                       f"({b['rows_done']:,}{planned} rows committed){doing}: the next "
                       f"`loader run --incremental` replays the batch in flight, then loads the rest[/]")
    if payload["unfinished_run"]:
        u = payload["unfinished_run"]
        _out.print(f"[yellow]run {u['run_number']} did not finish ({u['attempts']} attempt(s)); the next run "
                   f"replays it. Last error: {escape(str(u['error']))}[/]")
    if payload["lease"]:
        _out.print(f"lease held by {payload['lease']['holder']} until {payload['lease']['expires_at']}")
    if payload.get("backfill"):
        b = payload["backfill"]
        r = b["request"]
        _out.print(f"backfill {r.get('id', '')} ({r['start']}, {r['end']}] of {', '.join(r['sources'])} into "
                   f"{', '.join(r['sinks'])}: {b['chunks_done']}/{b['chunks_total']} chunks done, "
                   f"{b['state']}"
                   + ("" if b["state"] != "interrupted"
                      else f"; `loader backfill --resume {r.get('id')}` continues it"))


def print_history(pipeline: str, entries: list[RunEntry]) -> None:
    if not entries:
        _out.print(f"{pipeline}: no runs yet (`loader run --incremental` starts one)")
        return
    from rich.table import Table

    table = Table(title=f"{pipeline}: the newest {len(entries)} run(s)")
    for column in ("run", "mode (batch)", "outcome", "started (UTC)", "took", "rows per table", "quarantined",
                   "deleted", "seconds per stage"):
        table.add_column(column)
    for e in entries:
        rows = ", ".join(f"{name} {t.rows:,}" for name, t in e.tables.items())
        stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in e.timings_s.items())
        outcome = (e.outcome if e.outcome != "failed"
                   else f"[red]failed[/]: {escape(redact(str(e.error or '')))[:120]}")
        took = "-" if e.duration_s is None else _human_seconds(e.duration_s)
        bad = ", ".join(f"{name} {sum(t.quarantined.values()):,}" for name, t in e.tables.items()
                        if t.quarantined)
        deleted = ", ".join(f"{name} {t.deletes_applied:,}" for name, t in e.tables.items()
                            if t.deletes_applied)
        mode = e.mode + (f" {e.batch['index']}/{e.batch['of']}" if e.batch else "")
        table.add_row(str(e.run_number), mode, outcome, e.started_at.isoformat()[:19].replace("T", " "), took,
                      rows or "-", bad or "-", deleted or "-", stages or "-")
    _out.print(table)


@contextmanager
def backfill_progress(*, quiet: bool) -> Iterator[Callable[[Any, int], None]]:
    """A progress bar over the chunks in a terminal; one log line per chunk otherwise."""
    import logging

    log = logging.getLogger("loader.protocol.backfill")
    if quiet or not sys.stderr.isatty():
        def line(chunk: Any, total: int) -> None:
            rows = sum(t.rows for t in chunk.tables.values())
            window = f"({chunk.window.lower.isoformat()}, {chunk.window.upper.isoformat()}]"
            log.info("backfill chunk %d/%d %s: %s%s in %.1fs", chunk.index + 1, total, window,
                     chunk.status.replace("_", " "),
                     f", run {chunk.run_number}, {rows:,} rows" if chunk.run_number else "",
                     chunk.seconds)
        yield line
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=Console(stderr=True)) as progress:
        task = progress.add_task("", total=None)

        def advance(chunk: Any, total: int) -> None:
            progress.update(task, total=total, advance=1,
                            description=f"chunk {chunk.index + 1}: {chunk.status.replace('_', ' ')}")
        yield advance


def print_backfill(payload: dict[str, Any]) -> None:
    from rich.table import Table

    r = payload["request"]
    if payload["dry_run"]:
        _out.print(f"dry run: {payload['chunks_total']} chunk(s) would be loaded into "
                   f"{', '.join(r['sinks'])}; nothing was written (rows are estimates from row-group "
                   f"statistics)")
    table = Table(title=f"{payload['pipeline']}: backfill ({r['start']}, {r['end']}] "
                        f"{'(dry run)' if payload['dry_run'] else ''}")
    for column in ("chunk", "window", "status", "run", "files", "rows"):
        table.add_column(column)
    for c in payload["chunks"]:
        rows = sum(t.get("rows", 0) for t in c["tables"].values()) if c["tables"] else c["estimated_rows"]
        table.add_row(str(c["index"] + 1), f"({c['window']['lower']}, {c['window']['upper']}]",
                      c["status"].replace("_", " "),
                      str(c["run_number"] or "-"), str(c["files"]), f"{rows:,}")
    _out.print(table)
    if payload["dry_run"]:
        return
    _out.print(f"{payload['chunks_loaded']} chunk(s) loaded, {payload['chunks_already_loaded']} already "
               f"loaded; sinks {', '.join(r['sinks'])}; incremental checkpoints unchanged")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _human_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def print_doctor(pipeline: str, checks: list[Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{pipeline}: loader doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    colour = {"ok": "green", "unavailable": "yellow", "failed": "red"}
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", escape(c.detail))
    _out.print(table)
