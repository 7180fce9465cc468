"""Planning: the window of each source and the files and row groups that can hold rows in it.

Window = (checkpoint - lookback, upper], upper = the largest cursor value actually present, capped at
now - safety_lag. Pruning uses two facts of the landing-zone layout: a record's cursor is never later
than the end of its `ingest_date=` folder's day (so older folders cannot hold rows above the lower
bound), and Parquet row-group statistics of the cursor column. A run reads O(new data), not O(history).
Planning reads only footers (loader/landing/files.py): no Ray, no row data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from loader.config import LoaderConfig, SourceConfig
from loader.errors import BadSourceData
from loader.landing.files import Footer, list_file_infos, modified, read_footer
from loader.landing.plans import FilePlan, RunPlan, SourcePlan, in_window
from loader.retry import call_with_retries
from loader.storage import Location, locate, storage_error
from state import Checkpoint, Window

log = logging.getLogger(__name__)


def compute_window(
    *, checkpoint: datetime | None, lookback: timedelta, max_present: datetime | None,
    now: datetime, safety_lag: timedelta,
) -> Window | None:
    """The next window, or None when there is nothing new to read. Pure: unit-tested on its own."""
    if max_present is None:
        return None
    upper = min(max_present, now - safety_lag)
    if checkpoint is not None and upper <= checkpoint:
        return None
    lower = None if checkpoint is None else checkpoint - lookback
    return Window(lower=lower, upper=upper)


def plan_source(
    name: str, source: SourceConfig, location: Location, *, checkpoint: Checkpoint | None,
    now: datetime, fixed_window: Window | None = None, future_tolerance: timedelta = timedelta(hours=1),
) -> SourcePlan:
    """Plan one source. `fixed_window` (a replay or a backfill chunk) skips the window arithmetic.
    Cursors later than now + `future_tolerance` are quarantined, so they do not count as present."""
    lower = (fixed_window.lower if fixed_window
             else (checkpoint.cursor - source.lookback if checkpoint else None))
    since = lower.date() if lower is not None else None
    infos = list_file_infos(location, partition_column=source.partition_column, since=since)
    sizes = {info.path: info.size for info in infos}
    mtimes = {info.path: modified(info) for info in infos}
    with ThreadPoolExecutor(max_workers=8) as pool:
        footers = list(pool.map(lambda info: read_footer(location, info.path, source.cursor, name,
                                                         source.deletes.column if source.deletes else None),
                                infos))
    base_run = checkpoint.run_number if checkpoint else None
    window = fixed_window
    if window is None:
        highs = _present_highs(location, footers, name, source.cursor, now + future_tolerance)
        if checkpoint is not None:
            _check_not_ahead(name, location, checkpoint, footers, max(highs) if highs else None)
        window = compute_window(
            checkpoint=checkpoint.cursor if checkpoint else None, lookback=source.lookback,
            max_present=max(highs) if highs else None, now=now, safety_lag=source.safety_lag,
        )
        if window is None:
            upper = checkpoint.cursor if checkpoint else now
            return SourcePlan(name, location, Window(lower=upper, upper=upper), (), len(infos), base_run)
    chosen = []
    for footer in footers:
        stats = tuple(g for g in footer.groups if g[1] > 0 and in_window(window, g[2], g[3]))
        if stats:
            chosen.append(FilePlan(footer.path, tuple(g[0] for g in stats), sum(g[1] for g in stats),
                                   sizes.get(footer.path), stats, mtimes.get(footer.path), footer.schema))
    return SourcePlan(name, location, window, tuple(chosen), len(infos), base_run)


def _present_highs(location: Location, footers: list[Footer], source: str, cursor: str,
                   limit: datetime) -> list[datetime]:
    """Each row group's greatest cursor, from its statistics; where that lies beyond `limit` (a cursor
    in the future, to be quarantined), the greatest value not beyond it, read from the column (rare)."""
    highs = []
    for footer in footers:
        for index, rows, _low, high in footer.groups:
            if high is None or rows == 0:
                continue
            if high > limit:
                import pyarrow.compute as pc  # here: a run with nothing new never pays for it (~20 ms)

                from loader.landing.sources import read_parquet  # here: a run with nothing new never needs it

                values = read_parquet(location, footer.path, what=f"source {source!r}", columns=[cursor],
                                      row_groups=[index])[cursor]
                kept = pc.filter(values, pc.less_equal(values, pa.scalar(limit, type=values.type)))
                high = pc.max(kept).as_py() if len(kept) else None
            if high is not None:
                highs.append(high)
    return highs


def _check_not_ahead(
    name: str, location: Location, checkpoint: Checkpoint, footers: list[Footer], newest: datetime | None
) -> None:
    """The checkpoint was the newest cursor present when it was set; data older than it now means the
    landing zone lost files or the config points elsewhere. Loading on would silently skip data."""
    unknown_stats = any(g[2] is None for f in footers for g in f.groups)
    if unknown_stats or (footers and newest is not None and newest >= checkpoint.cursor):
        return
    found = "no files at all" if not footers else f"data only up to {newest.isoformat() if newest else '?'}"
    raise BadSourceData(
        f"the checkpoint of source {name!r} ({checkpoint.cursor.isoformat()}, run {checkpoint.run_number}) "
        f"is ahead of the landing zone at {location.uri}: it holds {found} since the lookback. The landing "
        f"zone lost files or the config points at another one. Point sources.{name}.path back at the loaded "
        f"data; if the landing zone was rebuilt on purpose, load it under a new `pipeline` name. Nothing was "
        f"written"
    )


def plan_run(
    config: LoaderConfig, checkpoints: dict[str, Checkpoint], *, now: datetime | None = None,
    windows: dict[str, Window] | None = None, only: tuple[str, ...] | None = None,
) -> RunPlan:
    """Plan every source (or `only` these). `windows` replays a recorded plan instead of a new one."""
    moment = now or datetime.now(UTC)
    listed_at = datetime.now(UTC)  # before listing: a file landing during planning counts as later
    plans = {}
    for name, source in config.sources.items():
        if only is not None and name not in only:
            continue
        fixed = windows.get(name) if windows is not None else None
        if windows is not None and fixed is None:
            continue
        plans[name] = plan_source(
            name, source, locate(config.source_path(name)), checkpoint=checkpoints.get(name),
            now=moment, fixed_window=fixed, future_tolerance=config.quarantine.future_tolerance,
        )
    return RunPlan(plans, planned_at=listed_at)


def plan_from_input(config: LoaderConfig, run_number: int, windows: dict[str, Window],
                    recorded: dict[str, Any], *, began_writing: bool = False) -> RunPlan:
    """The plan a run recorded before writing (`RunPlan.to_input`), for its replay: the same files and
    row groups, and no file landed since (a late file inside the window is the next run's to read, in
    every sink alike). A recorded file removed or rewritten since (another size or modification time)
    is the usual fix of a file that failed the run before it wrote anything: then the replay leaves it
    out, or plans it again by the window, with a warning. A run that `began_writing` must replay exactly
    what it read: a changed file then stops the replay (BadSourceData naming it), since a sink that
    wrote part of the run holds what it read from the old file and the others would get the new one."""
    planned_at = recorded.get("planned_at")
    plans = {}
    for name, window in windows.items():
        location = locate(config.source_path(name))
        entries = recorded["sources"].get(name, {}).get("files", [])
        files = [FilePlan(e["path"], tuple(e["row_groups"]), int(e["rows"]), e.get("size"), (),
                          e.get("mtime"))
                 for e in entries]
        if files:
            try:
                infos = location.filesystem.get_file_info([f.path for f in files])
            except OSError as error:
                raise storage_error(error, location.uri, side="source",
                                    doing="checking the replayed files in") from error
            kept, changed = [], False  # changed: a file gone or rewritten since the run recorded it
            for file, info in zip(files, infos, strict=True):
                gone = info.type != pafs.FileType.File
                rewritten = not gone and ((file.size is not None and info.size != file.size)
                                          or (file.mtime is not None and modified(info) != file.mtime))
                if (gone or rewritten) and began_writing:
                    raise BadSourceData(
                        f"file {file.path} of source {name!r}, read by run {run_number} before it was "
                        f"interrupted while writing to the sinks, is {'gone' if gone else 'rewritten'} "
                        "since: a replay reading it as it is now would mix its rows with those the run "
                        "already wrote from the old file. Put the file back as it was and run again; or "
                        f"abandon the run (`loader runs abandon {run_number}`: what it wrote stays) and run "
                        f"`loader verify` to see what differs"
                    )
                changed = changed or gone or rewritten
                if gone:
                    log.warning("file %s of source %r, read by run %d before it failed, is gone: the replay "
                                "reads the other recorded files", file.path, name, run_number)
                elif rewritten:
                    log.warning("file %s of source %r changed since run %d read it (size %s -> %s bytes, "
                                "modified %s -> %s): the replay reads it as it is now, within the run's "
                                "window", file.path,
                                name, run_number, f"{file.size:,}" if file.size is not None else "?",
                                f"{info.size:,}", file.mtime or "?", modified(info))
                    deletes = config.sources[name].deletes
                    footer = read_footer(location, file.path, config.sources[name].cursor, name,
                                         deletes.column if deletes else None)
                    groups = tuple(g for g in footer.groups if g[1] > 0 and in_window(window, g[2], g[3]))
                    if groups:
                        kept.append(FilePlan(file.path, tuple(g[0] for g in groups),
                                             sum(g[1] for g in groups),
                                             info.size, groups, modified(info), footer.schema))
                else:
                    kept.append(file)
            if changed:
                window = _window_of_what_is_left(location, config.sources[name].cursor, name, window, kept)
            files = kept
        plans[name] = SourcePlan(name, location, window, tuple(files), len(entries), None)
    return RunPlan(plans, planned_at=datetime.fromisoformat(planned_at) if planned_at else None)


def _window_of_what_is_left(location: Location, cursor: str, name: str, window: Window,
                            files: list[FilePlan]) -> Window:
    """A replay's window once files of its input went away: its upper bound (the checkpoint it sets)
    no further than the newest cursor still there, so the checkpoint stays on data that exists."""
    highs = []
    for file in files:
        groups = file.stats or read_footer(location, file.path, cursor, name).groups
        highs += [g[3] for g in groups
                  if g[0] in file.row_groups and g[3] is not None and g[3] <= window.upper]
    if not highs:
        return window if window.lower is None else Window(lower=window.lower, upper=window.lower)
    return Window(lower=window.lower, upper=max(max(highs), window.lower) if window.lower else max(highs))


def cursor_reader(config: LoaderConfig) -> Callable[[SourcePlan, FilePlan, int], np.ndarray | None]:
    """Reads one planned row group's cursor column (one column: cheap), for the batch cut where the
    statistics cannot place a row group's rows (loader/protocol/batches.py)."""

    def read(plan: SourcePlan, file: FilePlan, group: int) -> np.ndarray | None:
        from loader.landing.sources import read_parquet  # only when a cut needs it

        column = config.sources[plan.source].cursor
        values = call_with_retries(
            "reading cursors", config.source_retry,
            lambda: read_parquet(plan.location, file.path, what=f"source {plan.source!r}", columns=[column],
                                 row_groups=[group])[column])
        return cursor_micros(values)

    return read


def cursor_micros(values: pa.ChunkedArray) -> np.ndarray | None:
    """Timestamps as int64 microseconds, nulls left out; None for another type. Nanoseconds round up,
    so a value counts in (lower, upper] exactly as the read's filter counts it."""
    kind = values.type
    if not pa.types.is_timestamp(kind):
        return None
    raw = values.drop_null().cast(pa.int64()).to_numpy()
    if kind.unit == "ns":
        return -((-raw) // 1000)
    return raw * {"s": 1_000_000, "ms": 1_000, "us": 1}[kind.unit]
