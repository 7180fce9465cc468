"""Planning: the window of each source and the files and row groups that can hold rows in it.

Window = (checkpoint - lookback, upper], upper = the largest cursor value actually present, capped at
now - safety_lag. Pruning uses two facts of the landing-zone layout: a record's cursor is never later
than the end of its `ingest_date=` folder's day (so older folders cannot hold rows above the lower
bound), and Parquet row-group statistics of the cursor column. A run reads O(new data), not O(history).
Planning reads only footers: no Ray, no row data.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader.config import LoaderConfig, SourceConfig
from loader.errors import BadSourceData
from loader.storage import Location, locate, storage_error
from state import Checkpoint, Window

log = logging.getLogger(__name__)

GroupStats = tuple[int, int, datetime | None, datetime | None]  # (index, rows, least cursor, greatest cursor)


@dataclass(frozen=True)
class FilePlan:
    path: str  # inside the source's filesystem
    row_groups: tuple[int, ...]
    rows: int  # rows in those row groups: an upper bound of what the window selects
    size: int | None = None  # bytes when planned: a replay refuses a file that changed since
    stats: tuple[GroupStats, ...] = ()  # of the planned row groups (empty for a replayed input)
    #: The modification time when listed (ISO; S3's LastModified): with the size, the file's identity
    #: (a rewrite of the same size changes it).
    mtime: str | None = None
    #: The file's columns, from the footer planning read (None for a replayed input: read when needed).
    schema: pa.Schema | None = field(default=None, compare=False)

    def to_input(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime": self.mtime, "row_groups": list(self.row_groups),
                "rows": self.rows}


@dataclass(frozen=True)
class SourcePlan:
    source: str
    location: Location
    window: Window
    files: tuple[FilePlan, ...]
    files_seen: int  # files listed (in the folders that can hold rows of the window), before row-group pruning
    base_run: int | None  # run number of the checkpoint this plan starts from

    @property
    def estimated_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def row_groups(self) -> int:
        return sum(len(f.row_groups) for f in self.files)

    @property
    def is_empty(self) -> bool:
        return not self.files

    def restrict(self, window: Window) -> SourcePlan:
        """This plan cut down to `window` (inside its own): the row groups that can hold rows of it."""
        files = []
        for file in self.files:
            stats = tuple(g for g in file.stats if in_window(window, g[2], g[3]))
            if stats:
                files.append(FilePlan(file.path, tuple(g[0] for g in stats), sum(g[1] for g in stats), file.size, stats,
                                      file.mtime, file.schema))
        return SourcePlan(self.source, self.location, window, tuple(files), self.files_seen, self.base_run)


@dataclass(frozen=True)
class RunPlan:
    sources: dict[str, SourcePlan]
    planned_at: datetime | None = None  # when the files were listed (`loader verify` counts files landed by then)

    def to_input(self) -> dict[str, Any]:
        """The exact input, recorded in the ledger before any write: a replay reads this and nothing else."""
        return {
            "planned_at": None if self.planned_at is None else self.planned_at.isoformat(),
            "sources": {name: {"files": [f.to_input() for f in p.files]} for name, p in self.sources.items()},
        }

    @property
    def is_empty(self) -> bool:
        return all(p.is_empty for p in self.sources.values())

    @property
    def estimated_rows(self) -> int:
        return sum(p.estimated_rows for p in self.sources.values())

    def windows(self) -> dict[str, Window]:
        return {name: p.window for name, p in self.sources.items()}


@dataclass(frozen=True)
class _Footer:
    path: str
    groups: tuple[tuple[int, int, datetime | None, datetime | None], ...]  # (index, rows, min, max)
    schema: pa.Schema | None = None


_PARTITION = re.compile(r"^([A-Za-z0-9_]+)=(\d{4}-\d{2}-\d{2})$")


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


def in_window(window: Window, low: datetime | None, high: datetime | None) -> bool:
    """Can a row group whose cursor spans [low, high] hold a row of the window? Unknown stats: yes."""
    if low is None or high is None:
        return True
    above_lower = window.lower is None or high > window.lower
    return above_lower and low <= window.upper


def list_files(location: Location, *, partition_column: str, since: date | None) -> list[str]:
    """Parquet files under the source, not listing `partition_column=` folders older than `since`."""
    return [info.path for info in list_file_infos(location, partition_column=partition_column, since=since)]


def list_file_infos(location: Location, *, partition_column: str, since: date | None) -> list[pafs.FileInfo]:
    """As `list_files`, with each file's size and modification time."""
    try:
        info = location.filesystem.get_file_info(location.path)
    except OSError as error:  # refused credentials, missing bucket: terminal; network: transient
        raise storage_error(error, location.uri, side="source", doing="listing the landing zone at") from error
    if info.type == pafs.FileType.NotFound:
        raise BadSourceData(
            f"landing folder {location.uri} does not exist: create the landing zone "
            f"(`loader demo-data init`) or fix the source's `path` in the config"
        )
    if since is None or not partition_column:
        listed = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    else:
        listed = _listed_since(location, partition_column, since)
    files = sorted(
        (f for f in listed
         if f.type == pafs.FileType.File and f.path.endswith(".parquet")
         and not any(part.startswith(("_", ".")) for part in f.path[len(location.path):].split("/"))),
        key=lambda f: f.path,
    )
    _refuse_links_out(location, files)
    return files


def _listed_since(location: Location, partition_column: str, since: date) -> list[pafs.FileInfo]:
    """The entries under the source's folder, folder by folder, not descending into a
    `<partition_column>=<date>` folder older than `since` (nor into hidden ones): a run lists what can
    hold rows of its window, so its cost does not grow with the zone's history (a year of daily folders
    is 365 names at one level, not their files; on S3 each level is one listing call)."""
    found: list[pafs.FileInfo] = []
    folders = [location.path]
    while folders:
        below = []
        for folder in folders:
            for info in location.filesystem.get_file_info(pafs.FileSelector(folder)):
                if info.type != pafs.FileType.Directory:
                    found.append(info)
                elif not info.base_name.startswith(("_", ".")) and not _older_partition(info.base_name,
                                                                                        partition_column, since):
                    below.append(info.path)
        folders = below
    return found


def _refuse_links_out(location: Location, files: list[pafs.FileInfo]) -> None:
    """On a local disk, a file reached through a symbolic link (to it, or to a folder above it) that
    leaves the source's folder is refused: the landing zone is written by others, and a link would let
    them make the loader read, and load into the warehouse, any file it can read."""
    if not isinstance(location.filesystem, pafs.LocalFileSystem):
        return  # object stores have no links
    root = os.path.realpath(location.path)
    for info in files:
        real = os.path.realpath(info.path)
        if real != info.path and os.path.commonpath([root, real]) != root:
            raise BadSourceData(
                f"{info.path} in the landing zone is a symbolic link (or lies in a linked folder) to {real}, outside "
                f"{location.uri}: the loader reads only files inside the landing zone. Copy the file in (or point "
                "the source's path at its real folder) and remove the link, then run again; nothing was loaded"
            )


def _older_partition(path: str, partition_column: str, since: date) -> bool:
    for part in path.split("/"):
        match = _PARTITION.match(part)
        if match and match.group(1) == partition_column:
            return date.fromisoformat(match.group(2)) < since
    return False


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}


def _stat_to_datetime(raw: object, unit: str | None) -> datetime | None:
    """A timestamp statistic from its raw integer (`stats.min` would import pandas: 0.3 s per run)."""
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    if unit is None or not isinstance(raw, int):
        return None
    scale = _MICROS_PER_UNIT[unit]
    micros = raw // 1000 if unit == "ns" else raw * int(scale)
    return _EPOCH + timedelta(microseconds=micros)


def missing_deletes_column(path: str, source: str, column: str) -> BadSourceData:
    """The error for a landing file without the column that marks upstream deletes."""
    return BadSourceData(
        f"file {path} of source {source!r} has no column {column!r}, which sources.{source}.deletes.column "
        f"names as the one marking deletes: add the column to the file (null or a live value for live rows), "
        f"or fix sources.{source}.deletes in the config (remove the block if the source sends no deletes)"
    )


def read_footer(location: Location, path: str, cursor: str, source: str, deletes: str | None = None) -> _Footer:
    """A file's row groups with their rows and cursor range. `deletes`: the column marking upstream
    deletes (sources.<name>.deletes.column), which every file of the source must have."""
    try:
        with location.filesystem.open_input_file(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
    except pa.ArrowInvalid as error:
        raise BadSourceData(
            f"unreadable Parquet file {path} in source {source!r}: {error}. "
            f"Replace or remove the file (nothing was loaded from this run)"
        ) from error
    except OSError as error:  # the store, not the file: may pass when tried again
        raise storage_error(error, location.uri, side="source", doing=f"reading the footer of {path} in") from error
    names = metadata.schema.names
    if cursor not in names:
        raise BadSourceData(
            f"file {path} of source {source!r} has no cursor column {cursor!r} (columns: {', '.join(names)}). "
            f"Fix sources.{source}.cursor in the config or the file"
        )
    if deletes is not None and deletes not in names:
        raise missing_deletes_column(path, source, deletes)
    column = names.index(cursor)
    schema = metadata.schema.to_arrow_schema()
    cursor_type = schema.field(cursor).type
    unit = cursor_type.unit if pa.types.is_timestamp(cursor_type) else None
    groups = []
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        stats = group.column(column).statistics
        low = high = None
        if stats is not None and stats.has_min_max:
            low, high = _stat_to_datetime(stats.min_raw, unit), _stat_to_datetime(stats.max_raw, unit)
        groups.append((index, group.num_rows, low, high))
    return _Footer(path, tuple(groups), schema)


def landing_schema(plan: SourcePlan) -> pa.Schema | None:
    """The planned files' columns as the reader combines them (from the footers planning read; a
    replay's are read again), or None where they cannot be combined (the read then says why)."""
    known = {f.path: f.schema for f in plan.files if f.schema is not None}
    return files_schema(plan.location, [f.path for f in plan.files], known)


def files_schema(location: Location, paths: Sequence[str], known: dict[str, pa.Schema] | None = None) -> pa.Schema | None:
    """The columns of these files as the reader combines them (footers not in `known` read, in
    parallel), or None where there are none or they cannot be combined."""
    known = known or {}

    def schema_of(path: str) -> pa.Schema:
        if path in known:
            return known[path]
        with location.filesystem.open_input_file(path) as handle:
            return pq.read_schema(handle)

    with ThreadPoolExecutor(max_workers=8) as pool:
        schemas = list(pool.map(schema_of, paths))
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas else None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def plan_source(
    name: str, source: SourceConfig, location: Location, *, checkpoint: Checkpoint | None,
    now: datetime, fixed_window: Window | None = None, future_tolerance: timedelta = timedelta(hours=1),
) -> SourcePlan:
    """Plan one source. `fixed_window` (a replay or a backfill chunk) skips the window arithmetic.
    Cursors later than now + `future_tolerance` are quarantined, so they do not count as present."""
    lower = fixed_window.lower if fixed_window else (checkpoint.cursor - source.lookback if checkpoint else None)
    since = lower.date() if lower is not None else None
    infos = list_file_infos(location, partition_column=source.partition_column, since=since)
    sizes = {info.path: info.size for info in infos}
    mtimes = {info.path: modified(info) for info in infos}
    with ThreadPoolExecutor(max_workers=8) as pool:
        footers = list(pool.map(lambda info: read_footer(location, info.path, source.cursor, name,
                                                         source.deletes.column if source.deletes else None), infos))
    base_run = checkpoint.run_number if checkpoint else None
    window = fixed_window
    if window is None:
        highs = _present_highs(location, footers, source.cursor, now + future_tolerance)
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


def _present_highs(location: Location, footers: list[_Footer], cursor: str, limit: datetime) -> list[datetime]:
    """Each row group's greatest cursor, from its statistics; where that lies beyond `limit` (a cursor
    in the future, to be quarantined), the greatest value not beyond it, read from the column (rare)."""
    highs = []
    for footer in footers:
        for index, rows, _low, high in footer.groups:
            if high is None or rows == 0:
                continue
            if high > limit:
                import pyarrow.compute as pc  # here: a run with nothing new never pays for it (~20 ms)

                with location.filesystem.open_input_file(footer.path) as handle:
                    values = pq.ParquetFile(handle).read_row_group(index, columns=[cursor])[cursor]
                kept = pc.filter(values, pc.less_equal(values, pa.scalar(limit, type=values.type)))
                high = pc.max(kept).as_py() if len(kept) else None
            if high is not None:
                highs.append(high)
    return highs


def _check_not_ahead(
    name: str, location: Location, checkpoint: Checkpoint, footers: list[_Footer], newest: datetime | None
) -> None:
    """The checkpoint was the newest cursor present when it was set; data older than it now means the
    landing zone lost files or the config points elsewhere. Loading on would silently skip data."""
    unknown_stats = any(g[2] is None for f in footers for g in f.groups)
    if unknown_stats or (footers and newest is not None and newest >= checkpoint.cursor):
        return
    found = "no files at all" if not footers else f"data only up to {newest.isoformat() if newest else '?'}"
    raise BadSourceData(
        f"the checkpoint of source {name!r} ({checkpoint.cursor.isoformat()}, run {checkpoint.run_number}) is "
        f"ahead of the landing zone at {location.uri}: it holds {found} since the lookback. The landing zone "
        f"lost files or the config points at another one. Point sources.{name}.path back at the loaded data; "
        f"if the landing zone was rebuilt on purpose, load it under a new `pipeline` name. Nothing was written"
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


def modified(info: pafs.FileInfo) -> str | None:
    """A listed file's modification time as recorded in a run's input (ISO, UTC)."""
    if info.mtime is None:
        return None
    moment = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


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
        files = [FilePlan(e["path"], tuple(e["row_groups"]), int(e["rows"]), e.get("size"), (), e.get("mtime"))
                 for e in entries]
        if files:
            try:
                infos = location.filesystem.get_file_info([f.path for f in files])
            except OSError as error:
                raise storage_error(error, location.uri, side="source", doing="checking the replayed files in") from error
            kept, changed = [], False  # changed: a file gone or rewritten since the run recorded it
            for file, info in zip(files, infos, strict=True):
                gone = info.type != pafs.FileType.File
                rewritten = not gone and ((file.size is not None and info.size != file.size)
                                          or (file.mtime is not None and modified(info) != file.mtime))
                if (gone or rewritten) and began_writing:
                    raise BadSourceData(
                        f"file {file.path} of source {name!r}, read by run {run_number} before it was interrupted "
                        f"while writing to the sinks, is {'gone' if gone else 'rewritten'} since: a replay reading "
                        "it as it is now would mix its rows with those the run already wrote from the old file. "
                        f"Put the file back as it was and run again; or abandon the run (`loader runs abandon "
                        f"{run_number}`: what it wrote stays) and run `loader verify` to see what differs"
                    )
                changed = changed or gone or rewritten
                if gone:
                    log.warning("file %s of source %r, read by run %d before it failed, is gone: the replay reads "
                                "the other recorded files", file.path, name, run_number)
                elif rewritten:
                    log.warning("file %s of source %r changed since run %d read it (size %s -> %s bytes, modified "
                                "%s -> %s): the replay reads it as it is now, within the run's window", file.path,
                                name, run_number, f"{file.size:,}" if file.size is not None else "?",
                                f"{info.size:,}", file.mtime or "?", modified(info))
                    deletes = config.sources[name].deletes
                    footer = read_footer(location, file.path, config.sources[name].cursor, name,
                                         deletes.column if deletes else None)
                    groups = tuple(g for g in footer.groups if g[1] > 0 and in_window(window, g[2], g[3]))
                    if groups:
                        kept.append(FilePlan(file.path, tuple(g[0] for g in groups), sum(g[1] for g in groups),
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
        highs += [g[3] for g in groups if g[0] in file.row_groups and g[3] is not None and g[3] <= window.upper]
    if not highs:
        return window if window.lower is None else Window(lower=window.lower, upper=window.lower)
    return Window(lower=window.lower, upper=max(max(highs), window.lower) if window.lower else max(highs))
