"""The Parquet sink's fact table writes: an append-only log of record versions,
`<table>/region=R/date=D/run-<n>-<part>.parquet`; its region folders, its stored schema, a run's files
removed, the versions a part adds, and their files written.

`date` is the UTC day of the record's cursor, so the newest version of a key is the one with the
greatest cursor across files (the Delta table holds only the latest). Idempotence:
- file names carry the run number; a replay first deletes that run's files, then writes them again;
- a file is written under a hidden name and renamed, so readers never see half a file;
- a version (key, cursor) that an earlier run already wrote (the lookback re-reads it, or a backfill
  overlaps) is skipped by an anti-join against the files of the days the overlap can touch.
Upstream deletes (a source with `deletes`): a tombstone is one more version, written with its
`_deleted` column true (live versions false); the latest version per key says whether the key lives.
A tombstone wins a tie (loader/sinks/base.py), so a version is (key, cursor, `_deleted`): a tombstone at
the cursor of a live version the log holds is written beside it (and is the newer of the two), while a
tombstone, or a live version, the log holds already is not written again. Readers take the tombstone
on a tie (`dedupe_latest` with its `tombstones` mask; in SQL `ORDER BY cursor DESC, _deleted DESC`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader import failpoints
from loader.sinks.base import DELETED, TableBatch, tombstones
from loader.sinks.encoding import dictionary_columns
from loader.sinks.names import partition_folder
from loader.storage import Location

DATE_COLUMN = "__date"
#: The version check's tombstone flag (`_deleted`, nulls as false), apart from the stored column's name.
TOMBSTONE = "__tombstone"

#: Files written at once: writing is compression and encoding, which release the GIL, one per core.
_WRITERS = max(2, pa.cpu_count())


def run_prefix(run_number: int) -> str:
    return f"run-{run_number:08d}-"


def region_folders(where: Location) -> list[str]:
    """The table's `region=` folders (listed once per write: the schema check and the version
    anti-join both need them)."""
    return [
        f.path for f in where.filesystem.get_file_info(
            pafs.FileSelector(where.path, allow_not_found=True))
        if f.type == pafs.FileType.Directory and f.base_name.startswith("region=")
    ]


def stored_schema(where: Location, regions: list[str]) -> pa.Schema | None:
    """The schema of the log's newest file (one region's newest date folder, one footer read), or
    None for a new table: every file of the log has the same column types, this keeps it so."""
    fs = where.filesystem
    for region in regions:
        days = sorted((d for d in fs.get_file_info(pafs.FileSelector(region))
                       if d.type == pafs.FileType.Directory),
                      key=lambda d: d.base_name, reverse=True)
        for day in days:
            for file in fs.get_file_info(pafs.FileSelector(day.path)):
                if file.base_name.endswith(".parquet") and not file.base_name.startswith("."):
                    with fs.open_input_file(file.path) as handle:
                        return pq.read_schema(handle)
    return None


def remove_run(where: Location, run_number: int) -> None:
    prefixes = (run_prefix(run_number), "." + run_prefix(run_number))
    selector = pafs.FileSelector(where.path, recursive=True, allow_not_found=True)
    for info in where.filesystem.get_file_info(selector):
        if info.base_name.startswith(prefixes):
            where.filesystem.delete_file(info.path)


def new_versions(where: Location, batch: TableBatch, regions: tuple[str, ...]) -> pa.Table:
    """Drop versions (key, cursor) already in the log: the lookback re-reads them every run, and an
    abandoned run or a backfill may have written them. With deletes a version is (key, cursor,
    tombstone or not): a held live version does not stop a tombstone at its cursor, which wins the tie."""
    data = batch.data
    if data.num_rows == 0:
        return data
    low, high = pc.min(data[batch.cursor]).as_py(), pc.max(data[batch.cursor]).as_py()
    existing = _existing_versions(where, batch, regions, low, high)
    if existing.num_rows == 0:
        return data
    columns = [*batch.key, batch.cursor]
    versions = data.select(columns)
    mask = tombstones(batch, data)
    if mask is not None:  # `_existing_versions` read the stored flag as TOMBSTONE
        versions, columns = versions.append_column(TOMBSTONE, mask), [*columns, TOMBSTONE]
    marked = existing.select(columns).append_column("__seen",
                                                    pa.array(np.ones(existing.num_rows, dtype=bool)))
    # Joined on the version's columns and a row number only; the new rows are taken once, in key order.
    slim = versions.append_column("__row", pa.array(np.arange(data.num_rows, dtype=np.int64)))
    joined = slim.join(marked, keys=columns, join_type="left outer")
    fresh = joined.filter(pc.is_null(joined["__seen"]))
    if fresh.num_rows == data.num_rows:  # none held: the rows as they are, no copy
        return data
    return data.take(fresh.sort_by([(k, "ascending") for k in batch.key])["__row"])


def _existing_versions(where: Location, batch: TableBatch, regions: tuple[str, ...], low: datetime,
                       high: datetime) -> pa.Table:
    """(key, cursor) of the other runs' files in the batch's date partitions: only those can hold
    one of its versions, since `date` is the version's cursor day. Lists only those folders. With
    deletes, also whether each is a tombstone (column TOMBSTONE; false in files written before the
    source had deletes, which have no `_deleted` column)."""
    columns = [*batch.key, batch.cursor]
    days = [(low + timedelta(days=i)).date().isoformat()
            for i in range((high.date() - low.date()).days + 1)]
    own = run_prefix(batch.run_number)
    paths = []
    for region in regions:
        for day in days:
            selector = pafs.FileSelector(f"{region}/date={day}", allow_not_found=True)
            paths += [
                f.path for f in where.filesystem.get_file_info(selector)
                if f.base_name.endswith(".parquet") and not f.base_name.startswith((own, "."))
            ]
    # Only the batch's key range can match: with the run in key-range parts (Ray), each part reads
    # its own slice of these files (row groups pruned by statistics), not all of them again.
    # And only its cursor range: a version matches on (key, cursor), so the files of the run's earlier
    # batches (cursors below this one's window) are pruned by their row-group statistics unread.
    first = batch.key[0]
    bounds = pc.min_max(batch.data[first])
    in_range = [(first, ">=", bounds["min"].as_py()), (first, "<=", bounds["max"].as_py()),
                (batch.cursor, ">=", low), (batch.cursor, "<=", high)]
    flagged = batch.deletes is not None
    schema = batch.data.select(columns).schema
    if flagged:
        schema = schema.append(pa.field(TOMBSTONE, pa.bool_()))
    parts = []
    for path in paths:
        with where.filesystem.open_input_file(path) as handle:
            held = flagged and DELETED in pq.ParquetFile(handle).schema_arrow.names
            wanted = [*columns, DELETED] if held else columns
            part = pq.read_table(handle, columns=wanted, filters=in_range)
        if flagged:
            dead = pc.fill_null(part[DELETED], False) if held else pa.array(np.zeros(part.num_rows, bool))
            part = part.select(columns).append_column(TOMBSTONE, dead)
        parts.append(part.cast(schema))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts)


def write_partitions(where: Location, run_number: int, data: pa.Table, cursor: str, table: str, *,
                     part: int, compression: str | None) -> None:
    """One file per (region, date), written in parallel, each taking its rows (in key order: the
    sort is stable) from the table. A take from a table of several chunks gathers every chunk again
    each time, so such a table is made one chunk first (the executors hand over one chunk: no copy)."""
    unit = data[cursor].type.unit if pa.types.is_timestamp(data[cursor].type) else "us"
    days = pc.cast(pc.cast(data[cursor], pa.timestamp(unit)), pa.date32())  # the cursor's UTC day
    keys = pa.table({"region": data["region"], DATE_COLUMN: days})
    order = pc.sort_indices(keys, sort_keys=[("region", "ascending"), (DATE_COLUMN, "ascending")])
    keys = keys.take(order)
    regions = keys["region"].combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    day_numbers = keys[DATE_COLUMN].combine_chunks().cast(pa.int32()).to_numpy(zero_copy_only=False)
    changes = np.flatnonzero((regions[1:] != regions[:-1]) | (day_numbers[1:] != day_numbers[:-1])) + 1
    starts = [0, *changes.tolist()]
    bounds = list(zip(starts, [*starts[1:], data.num_rows], strict=True))
    if any(column.num_chunks > 1 for column in data.columns):
        data = data.combine_chunks()
    dictionary = dictionary_columns(data)

    def write_one(bound: tuple[int, int]) -> None:
        begin, end = bound
        rows = data.take(order.slice(begin, end - begin))
        region, day = keys["region"][begin].as_py(), keys[DATE_COLUMN][begin].as_py().isoformat()
        folder = f"{where.path}/{partition_folder('region', region)}/date={day}"  # the value escaped
        name = f"{run_prefix(run_number)}{part}.parquet"
        where.filesystem.create_dir(folder, recursive=True)
        hidden = f"{folder}/.{name}"
        with where.filesystem.open_output_stream(hidden) as stream:
            pq.write_table(rows, stream, compression=compression, use_dictionary=dictionary)
        where.filesystem.move(hidden, f"{folder}/{name}")

    half = max(1, len(bounds) // 2)
    with ThreadPoolExecutor(max_workers=_WRITERS) as pool:
        list(pool.map(write_one, bounds[:half]))
        failpoints.hit("parquet.write", table)  # some partitions written, not all
        list(pool.map(write_one, bounds[half:]))
