"""The landing zone's files: listing a source's folder (only the partition folders a window can
reach, never through a link leaving it), each file's identity (size and modification time) and footer
(row groups with their cursor range, columns). Reads footers only, never rows."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader.errors import BadSourceData
from loader.storage import Location, storage_error

GroupStats = tuple[int, int, datetime | None, datetime | None]  # (index, rows, least cursor, greatest cursor)


@dataclass(frozen=True)
class Footer:
    """A file's row groups (index, rows, least and greatest cursor) and columns."""

    path: str
    groups: tuple[tuple[int, int, datetime | None, datetime | None], ...]  # (index, rows, min, max)
    schema: pa.Schema | None = None


_PARTITION = re.compile(r"^([A-Za-z0-9_]+)=(\d{4}-\d{2}-\d{2})$")


def list_files(location: Location, *, partition_column: str, since: date | None) -> list[str]:
    """Parquet files under the source, not listing `partition_column=` folders older than `since`."""
    return [info.path for info in list_file_infos(location, partition_column=partition_column, since=since)]


def list_file_infos(location: Location, *, partition_column: str, since: date | None) -> list[pafs.FileInfo]:
    """As `list_files`, with each file's size and modification time."""
    try:
        info = location.filesystem.get_file_info(location.path)
    except OSError as error:  # refused credentials, missing bucket: terminal; network: transient
        raise storage_error(error, location.uri, side="source",
                            doing="listing the landing zone at") from error
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
                elif (not info.base_name.startswith(("_", "."))
                      and not _older_partition(info.base_name, partition_column, since)):
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
                f"{info.path} in the landing zone is a symbolic link (or lies in a linked folder) to {real}, "
                f"outside {location.uri}: the loader reads only files inside the landing zone. Copy the file "
                "in (or point the source's path at its real folder) and remove the link, then run again; "
                "nothing was loaded"
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


@contextmanager
def opened_parquet(location: Location, path: str, *, what: str) -> Iterator[pq.ParquetFile]:
    """A landing file opened for reading, the errors of whatever reads it in the block told one way:
    an unreadable file is BadSourceData naming it and `what` it belongs to (fix the file); a failing
    store a storage error (transient ones are retried)."""
    try:
        with location.filesystem.open_input_file(path) as handle:
            yield pq.ParquetFile(handle)
    except pa.ArrowInvalid as error:
        raise BadSourceData(f"unreadable Parquet file {path} ({what}): {error}. "
                            "Replace or remove it") from error
    except OSError as error:
        raise storage_error(error, location.uri, side="source", doing=f"reading {path} in") from error


def read_footer(location: Location, path: str, cursor: str, source: str,
                deletes: str | None = None) -> Footer:
    """A file's row groups with their rows and cursor range. `deletes`: the column marking upstream
    deletes (sources.<name>.deletes.column), which every file of the source must have."""
    with opened_parquet(location, path, what=f"source {source!r}") as parquet:
        metadata = parquet.metadata
    names = metadata.schema.names
    if cursor not in names:
        raise BadSourceData(
            f"file {path} of source {source!r} has no cursor column {cursor!r} "
            f"(columns: {', '.join(names)}). "
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
    return Footer(path, tuple(groups), schema)


def files_schema(location: Location, paths: Sequence[str],
                 known: dict[str, pa.Schema] | None = None) -> pa.Schema | None:
    """The columns of these files as the reader combines them (footers not in `known` read, in
    parallel), or None where there are none or they cannot be combined."""
    known = known or {}

    def schema_of(path: str) -> pa.Schema:
        if path in known:
            return known[path]
        with opened_parquet(location, path, what="the landing zone") as parquet:
            return parquet.schema_arrow

    with ThreadPoolExecutor(max_workers=8) as pool:
        schemas = list(pool.map(schema_of, paths))
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas else None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def row_count(location: Location, path: str, *, what: str) -> int:
    """A landing file's rows, from its footer."""
    with opened_parquet(location, path, what=what) as parquet:
        return int(parquet.metadata.num_rows)


def modified(info: pafs.FileInfo) -> str | None:
    """A listed file's modification time as recorded in a run's input (ISO, UTC)."""
    if info.mtime is None:
        return None
    moment = info.mtime if info.mtime.tzinfo else info.mtime.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()
