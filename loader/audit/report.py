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
from loader.observe.results import TableResult, tables_from_json
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
            self._console = Console(soft_wrap=True, width=200 if _plain_stdout() else None)
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


def _print_fitted(*objects: Any) -> None:
    """Print for a person: in a terminal (or what rich is told is one, TTY_COMPATIBLE=1), hard-wrapped
    at its width, or at COLUMNS when set, so that no line runs past it. Piped (cron logs, CI), as wide
    as _Stdout makes it, whatever COLUMNS says: a shell or a test runner may export it, and a phrase
    wrapped in a log is a phrase grep cannot find."""
    if _plain_stdout():
        _out.print(*objects)
        return
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else None
    _out.print(*objects, width=width, soft_wrap=False)


def _shown_location(location: str) -> str:
    """A sink's location as people read it: a local path under the current folder relative to it (a
    table of absolute paths overflows any terminal), anything else (a URL, a path elsewhere) as given."""
    if "://" in location or not os.path.isabs(location):
        return location
    try:
        relative = os.path.relpath(location)
    except ValueError:  # another drive
        return location
    return location if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def _shown_window(window: Any) -> str:
    """A run's window of one table, (lower, upper], its instants complete (see `_shown_instant`)."""
    return _shown_bounds(window.to_json() if window else {"lower": None, "upper": "?"})


def _shown_bounds(bounds: dict[str, Any]) -> str:
    """A window as JSON gives it ({lower, upper}) for a table cell."""
    return f"({_shown_instant(bounds['lower'], empty='-inf')}, {_shown_instant(bounds['upper'])}]"


def _shown_instant(moment: str | None, *, empty: str = "-") -> str:
    """An ISO instant for a table cell, complete (a cursor to the microsecond) but in UTC without its
    offset and with a space before the time, where a narrow column wraps it instead of cutting it."""
    if not moment:
        return empty
    try:
        instant = datetime.fromisoformat(moment)
    except ValueError:
        return moment
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC).replace(tzinfo=None)
    return instant.isoformat(sep=" ")


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
    windows = {name: _shown_window(result.window) for name, result in summary.tables.items()}
    # one window for every table (the usual case): said once under the table, which then fits 80 columns
    shared = next(iter(windows.values())) if len(set(windows.values())) == 1 else None
    table = Table(title=escape(title), caption=f"window (UTC): {shared}" if shared else "windows in UTC")
    # Upstream deletes: the tombstones a table's rows carried, and what each sink did with them
    # (removed or marked keys; tombstone versions written to the Parquet log). Shown when there were any.
    deletes = any(t.deleted or any(w.deleted for w in t.sinks.values()) for t in summary.tables.values())
    columns = ("table", *(() if shared else ("window",)), "rows", *(("deleted",) if deletes else ()), "sink",
               "rows written", *(("deletes applied",) if deletes else ()), "location")
    for column in columns:
        # a long window or path wraps (at its spaces, else anywhere) rather than being cut
        table.add_column(column, overflow="fold" if column in ("window", "location") else "ellipsis")
    for name, result in summary.tables.items():
        label, window = escape(name), windows[name]
        for sink, write in result.sinks.items():
            written = "already landed" if write.skipped else f"{write.rows:,}"
            cells = [label, *(() if shared else (window,)), f"{result.rows:,}"]
            cells += [f"{result.deleted:,}"] if deletes else []
            cells += [escape(sink), written]
            cells += [("-" if write.skipped else f"{write.deleted:,}")] if deletes else []
            table.add_row(*cells, escape(redact(_shown_location(write.location))))
            label, window = "", ""
    _print_fitted(table)
    _print_dimensions(summary.dimensions)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in summary.timings.items())
    if len(summary.batches) > 1:
        rows = (", ".join(f"{b.rows:,}" for b in summary.batches[:12])
                + (", ..." if len(summary.batches) > 12 else ""))
        _print_fitted(f"batches of about {summary.max_batch_rows:,} rows (run.max_batch_rows): {rows} rows")
    # escaped: reasons quote commands such as pip install -e '.[gpu]', which rich would read as markup
    _print_fitted(escape(f"executor: {summary.executor} ({summary.executor_reason}); transforms: "
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
        _print_fitted(f"run {payload['replay_of_run']} is unfinished: the next run replays its windows")
    table = Table(title="plan of the next incremental run", caption="windows in UTC")
    for column in ("source", "window", "files (of listed)", "row groups", "est. rows"):
        table.add_column(column, overflow="fold" if column == "window" else "ellipsis")
    for name, s in payload["sources"].items():
        window = "nothing new" if s["window"] is None else _shown_bounds(s["window"])
        table.add_row(name, window, f"{s['files']} of {s['files_listed']}", str(s["row_groups"]),
                      f"{s['estimated_rows']:,}")
    _print_fitted(table)
    cut = payload.get("batches")
    if cut and cut["batches"]:
        sizes = [b["estimated_rows"] for b in cut["batches"]]
        _print_fitted(f"{len(sizes)} batch(es) of about {cut['budget']:,} rows at most (run.max_batch_rows), "
                      f"largest {max(sizes):,} estimated rows; each commits before the next")
        for warning in cut["warnings"]:
            _print_fitted(f"[yellow]warning: {escape(warning)}[/]")


def status_payload(config: LoaderConfig) -> dict[str, Any]:
    from state import StateStore

    store = StateStore.open_to_read(config.state.url)
    try:
        checkpoints = store.checkpoints(config.pipeline)
        last = store.last_committed_run(config.pipeline, mode="incremental")
        unfinished = store.unfinished_run(config.pipeline)
        lease = store.lease(config.pipeline)
        from loader.protocol.steps import holder_alive

        live_lease = lease is not None and lease.expires_at >= datetime.now(UTC)
        alive = None if lease is None else holder_alive(lease.holder)
        # running: a live lease whose process is not known to be gone (killed on this host, its lease
        # is left to expire: the run it held is interrupted, whatever the lease says)
        running = live_lease and alive is not False
        batches = batch_progress(store, config.pipeline, lease_held=running)
        from loader.protocol.backfill import backfill_status

        backfill = backfill_status(store, config.pipeline, lease_held=running)
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
        # state: running (a live process holds the lease), failed (its error recorded) or interrupted
        # (its process was killed): the next `loader run --incremental` replays the latter two
        "unfinished_run": None if unfinished is None else {
            "run_number": unfinished.run_number, "attempts": unfinished.attempts, "error": unfinished.error,
            "state": "running" if running else "failed" if unfinished.error else "interrupted",
        },
        # holder_alive: whether its process runs (known on its own host only, else null)
        "lease": None if lease is None or not live_lease else {
            "holder": lease.holder, "expires_at": _iso(lease.expires_at), "holder_alive": alive,
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
    """Status for people: never a bare None (a missing value is "-" or said in words), and one wording
    for a run that did not finish: in progress while a live process holds the lease, else unfinished,
    with what `loader run --incremental` does next (replay it)."""
    from rich.table import Table

    table = Table(title=escape(f"{payload['pipeline']} ({payload['state']})"),
                  caption="checkpoints in UTC; rows, quarantined, deleted: of the last run")
    for column in ("source", "checkpoint", "run", "lag", "rows", "quarantined", "deleted"):
        # a narrow terminal wraps the checkpoint (at its space, else anywhere): never cut to the date
        table.add_column(column, overflow="fold" if column == "checkpoint" else "ellipsis")
    for name, s in payload["sources"].items():
        lag = "-" if s["lag_seconds"] is None else _human_seconds(s["lag_seconds"])
        rows = _count(s["last_run_rows"])
        bad = _count(s.get("last_run_quarantined"))
        deleted = _count(s.get("last_run_deleted"))
        table.add_row(escape(name), _shown_instant(s["checkpoint"], empty="never loaded"),
                      str(s["checkpoint_run"] or "-"), lag, rows, bad, deleted)
    _print_fitted(table)
    for name, d in payload.get("dimensions", {}).items():
        changes = ", ".join(f"{sink} {_count(c.get('opened'))} opened / {_count(c.get('closed'))} closed"
                            for sink, c in d["sinks"].items())
        mode = d.get("mode") or "mode not recorded"
        _print_fitted(escape(f"dimension {name} ({mode}, {_count(d.get('rows'))} rows): last loaded "
                             f"{d.get('loaded_at') or '-'}: {changes or 'no sink changed'}"))
    for gap in payload.get("fact_gaps", []):
        _print_fitted(f"[yellow]{escape(gap['message'])}[/]")
    if payload["last_run"]:
        last = payload["last_run"]
        _print_fitted(f"last committed run: {last['run_number']} ({last['mode']}) at "
                      f"{last.get('finished_at') or '-'}")
    for line in _unfinished_lines(payload):
        _print_fitted(line)
    if payload.get("backfill"):
        b = payload["backfill"]
        r = b["request"]
        resume = ("" if b["state"] != "interrupted"
                  else f"; `loader backfill --resume {r.get('id')}` continues it")
        _print_fitted(escape(
            f"backfill {r.get('id') or '-'} ({r.get('start') or '-inf'}, {r.get('end') or '-'}] of "
            f"{', '.join(r.get('sources') or [])} into {', '.join(r.get('sinks') or [])}: "
            f"{b['chunks_done']}/{b['chunks_total']} chunks done, {b['state']}{resume}"))


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _unfinished_lines(payload: dict[str, Any]) -> list[str]:
    """What status says of a run in progress or unfinished, and of the lease: one message per run."""
    lines: list[str] = []
    b, u, lease = payload.get("batches"), payload.get("unfinished_run"), payload.get("lease")
    flight = (b or {}).get("batch_in_flight")
    holder = "" if not lease else escape(str(lease["holder"]))
    expires = "" if not lease else str(lease.get("expires_at") or "-")
    replay, wait = "the next `loader run --incremental` replays it", ""
    if lease and lease.get("holder_alive") is False:  # killed on this host: its lease outlives it
        wait = f" (after the lease its gone process left expires at {expires}: until then it exits 3)"
    if b:
        index = None if not flight else flight.get("index")
        doing = ("" if not flight
                 else f"; batch {'?' if index is None else index} (run {flight['run_number']}) in flight")
        planned = f" of about {b['rows_planned']:,}" if b.get("rows_planned") else ""
        if b["state"] == "running":
            lines.append(f"run in progress: {b['batches_done']} of {b['batches_total']} batches committed, "
                         f"{b['rows_done']:,}{planned} rows{doing}")
        else:
            lines.append(f"[yellow]run unfinished after {b['batches_done']} of {b['batches_total']} batches "
                         f"({b['rows_done']:,}{planned} rows committed){doing}: "
                         + replay.replace("replays it", "replays the batch in flight, then loads the rest")
                         + f"{wait}[/]")
    # the batch in flight of a run cut in batches is this ledger run: said above, with the batches
    if u and not (flight and flight.get("run_number") == u["run_number"] and u.get("state") != "failed"):
        state = u.get("state") or ("failed" if u.get("error") else "interrupted")
        attempts = f"{u['attempts']} attempt(s)"
        if state == "running":
            lines.append(f"run {u['run_number']} in progress ({attempts})")
        elif state == "failed":
            lines.append(f"[yellow]run {u['run_number']} unfinished: it failed ({attempts}; last error: "
                         f"{escape(str(u['error']))}); {replay}{wait}[/]")
        else:
            lines.append(f"[yellow]run {u['run_number']} unfinished: its process stopped before it committed "
                         f"({attempts}, no error recorded: killed?); {replay}{wait}[/]")
    if lease:
        gone = lease.get("holder_alive") is False
        held = f"lease left by {holder} (its process is gone)" if gone else f"lease held by {holder}"
        lines.append(f"{held} until {expires}")
    return lines


def runs_payload(entries: list[RunEntry]) -> list[dict[str, Any]]:
    """`loader runs list --json`: the ledger's runs, newest first, without their rows and timings."""
    keys = ("run_number", "mode", "outcome", "attempts", "started_at", "finished_at", "batch", "windows",
            "error")  # of `loader history --json`'s one shape (RunEntry.to_json)
    return redact_data([{key: entry[key] for key in keys} for entry in (e.to_json() for e in entries)])


def print_runs(pipeline: str, entries: list[RunEntry]) -> None:
    """`loader runs list`: the ledger, one short line per run, and what the next run does with an
    unfinished one."""
    if not entries:
        _print_fitted(f"{escape(pipeline)}: no runs yet (`loader run --incremental` starts one)")
        return
    from rich.table import Table

    table = Table(title=escape(f"{pipeline}: the newest {len(entries)} run(s)"), caption="times in UTC")
    for column in ("run", "mode", "outcome", "started", "batch", "windows"):
        table.add_column(column, overflow="fold")
    for e in entries:
        batch = "-" if not e.batch else f"{e.batch.get('index')}/{e.batch.get('of')}"
        started = _shown_instant(e.started_at.isoformat())[:19]
        table.add_row(str(e.run_number), e.mode, e.outcome, started, batch, escape(_short_windows(e.windows)))
    _print_fitted(table)
    waiting = next((e for e in entries if e.mode == "incremental" and e.outcome in ("unfinished", "failed")),
                   None)
    if waiting is not None:
        _print_fitted(f"run {waiting.run_number} is unfinished: the next `loader run --incremental` replays "
                      f"it (`loader status` says whether a run is in progress; `loader runs abandon "
                      f"{waiting.run_number}` stops the replay)")


def _short_windows(windows: dict[str, Any]) -> str:
    """The windows of a run to the second, one per line; sources sharing a window on one line."""
    shown: dict[str, list[str]] = {}
    for name, window in windows.items():
        bounds = window.to_json()
        text = (f"({_shown_instant(bounds['lower'], empty='-inf')[:19]}, "
                f"{_shown_instant(bounds['upper'])[:19]}]")
        shown.setdefault(text, []).append(name)
    if len(shown) == 1:
        return next(iter(shown)) if windows else "-"
    return "\n".join(f"{', '.join(names)} {text}" for text, names in shown.items())


def print_history(pipeline: str, entries: list[RunEntry]) -> None:
    """The newest runs, a row each, narrow enough for 80 columns (cells wrap): the windows (one line when
    the sources share it), rows per table with what was quarantined or deleted, and the lag each source
    was left with. Seconds per stage are in --json and the report."""
    if not entries:
        _out.print(f"{pipeline}: no runs yet (`loader run` starts one)")
        return
    from rich.table import Table

    table = Table(title=f"{pipeline}: the newest {len(entries)} run(s)")
    for column in ("run", "mode", "outcome", "started (UTC)", "took", "window (cursor, UTC)", "rows", "lag"):
        table.add_column(column)
    for e in entries:
        outcome = (e.outcome if e.outcome != "failed"
                   else f"[red]failed[/]: {escape(redact(str(e.error or '')))[:120]}")
        took = "-" if e.duration_s is None else _human_seconds(e.duration_s)
        mode = e.mode + (f" {e.batch['index']}/{e.batch['of']}" if e.batch else "")
        lags = {name: _human_seconds(seconds) for name, seconds in e.lag_seconds.items()}
        lag = next(iter(lags.values())) if len(set(lags.values())) == 1 else \
            "\n".join(f"{name} {shown}" for name, shown in lags.items())
        started = e.started_at.isoformat(sep=" ", timespec="seconds")[:19]
        table.add_row(str(e.run_number), mode, outcome, started, took, _short_windows(e.windows),
                      _rows_cell(e.tables) or "-", lag or "-")
    _out.print(table)


def _rows_cell(tables: dict[str, TableResult]) -> str:
    lines = []
    for name, t in tables.items():
        extra = [f"{sum(t.quarantined.values()):,} quarantined"] if t.quarantined else []
        extra += [f"{t.deletes_applied:,} deleted"] if t.deletes_applied else []
        lines.append(f"{name} {t.rows:,}" + (f" ({', '.join(extra)})" if extra else ""))
    return "\n".join(lines)


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
    """The chunks of a backfill: rows read (estimated in a dry run) and, per sink, rows written (a
    version a sink held already is not written again); its id, for `--resume`."""
    from rich.table import Table

    r = payload["request"]
    dry = payload["dry_run"]
    if dry:
        _out.print(f"dry run: {payload['chunks_total']} chunk(s) would be loaded into "
                   f"{', '.join(r['sinks'])}; nothing was written (rows are estimates from row-group "
                   f"statistics)")
    table = Table(title=f"{payload['pipeline']}: backfill {r['id']} ({r['start']}, {r['end']}]"
                        f"{' (dry run)' if dry else ''}")
    columns = ("chunk", "window", "status", "files", "rows (estimated)", "batches") if dry else \
        ("chunk", "window", "status", "run", "rows read", "rows written")
    for column in columns:
        table.add_column(column)
    for c in payload["chunks"]:
        window = _shown_bounds(c["window"])
        status = c["status"].replace("_", " ")
        if dry:
            table.add_row(str(c["index"] + 1), window, status, str(c["files"]), f"{c['estimated_rows']:,}",
                          str(c["batches"]))
            continue
        read = sum(t.get("rows", 0) for t in c["tables"].values())
        written: dict[str, int] = {}
        for t in c["tables"].values():
            for sink, result in t.get("sinks", {}).items():
                written[sink] = written.get(sink, 0) + int(result.get("rows", 0))
        runs = c.get("run_numbers") or ([c["run_number"]] if c["run_number"] else [])
        table.add_row(str(c["index"] + 1), window, status, ", ".join(map(str, runs)) or "-",
                      f"{read:,}" if c["tables"] else "-",
                      ", ".join(f"{sink} {rows:,}" for sink, rows in written.items()) or "-")
    _out.print(table)
    if dry:
        return
    _out.print(f"backfill {r['id']}: {payload['chunks_loaded']} chunk(s) loaded, "
               f"{payload['chunks_already_loaded']} already loaded; sinks {', '.join(r['sinks'])}; "
               f"incremental checkpoints unchanged")
    if payload["chunks_total"] and payload["chunks_already_loaded"] == payload["chunks_total"]:
        _out.print("every chunk of this window was loaded before, so nothing was read: after fixing landing "
                   "files, add --force to load the window again")


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
