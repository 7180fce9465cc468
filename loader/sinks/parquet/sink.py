"""Partitioned Parquet: an append-only log of record versions,
`<table>/region=R/date=D/run-<n>-<part>.parquet`.

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

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader import failpoints
from loader.errors import SinkRejected, SinkUnavailable
from loader.sinks.base import (
    DELETED,
    PARTITION_REGION,
    Capabilities,
    PartWrite,
    SinkContext,
    SinkWrite,
    TableBatch,
    count_true,
    folder_problem,
    region_counts,
    summed_regions,
    tombstones,
)
from loader.sinks.encoding import dictionary_columns
from loader.sinks.names import partition_folder, partition_value
from loader.sinks.parquet import dimensions as parquet_dimensions
from loader.sinks.parquet.config import ParquetSinkConfig
from loader.sinks.schema_check import refuse_type_changes, refuse_unwritable_names
from loader.storage import Location, locate, short_error, storage_error
from loader.transform.dimension_changes import DimensionChanges, DimensionSpec

DATE_COLUMN = "__date"
#: The version check's tombstone flag (`_deleted`, nulls as false), apart from the stored column's name.
TOMBSTONE = "__tombstone"


def _folder_region(relative: str) -> str | None:
    """The value of the `region=` folder in a file's path under the table (decoded, as hive readers
    decode it), or None if it lies in none."""
    for part in relative.split("/"):
        value = partition_value(part, "region")
        if value is not None:
            return value
    return None


#: Files written at once: writing is compression and encoding, which release the GIL, one per core.
_WRITERS = max(2, pa.cpu_count())

_TYPE_FIX = ("Cast the column in the transform back to the stored type, or move the table's folder away to "
             "start a new version log")


def run_prefix(run_number: int) -> str:
    return f"run-{run_number:08d}-"


@dataclass(frozen=True)
class ParquetBegun:
    """`begin`'s token: the table's region folders (the parts' version check lists days inside them)."""

    regions: tuple[str, ...]


class ParquetSink:
    name = "parquet"
    # Parts write disjoint files, nothing is committed to a log; a retry of the whole write replays it.
    capabilities: ClassVar[Capabilities] = Capabilities(parts_in_sequence=False, retries_own_steps=False,
                                                        holds="versions", replay_of_landed="rewrites",
                                                        replay_of_interrupted="whole")

    def __init__(self, settings: ParquetSinkConfig, context: SinkContext) -> None:
        self.root_uri = context.path(settings.path)
        self.root = locate(self.root_uri)
        self.retry = settings.retry
        codec = settings.compression
        self.compression = None if codec == "none" else codec

    def table_location(self, table: str) -> Location:
        return self.root.child(table)

    def location(self, table: str) -> str:
        return self.table_location(table).uri

    def check_columns(self, table: str, schema: pa.Schema) -> None:
        """A column name Parquet cannot store as it is, or a changed column type (names differing only in
        case are two columns here)."""
        where = self.table_location(table)
        refuse_unwritable_names(f"Parquet table {where.uri}", schema)
        try:
            stored = self._stored_schema(where, self._region_folders(where))
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="reading the schema of") from error
        if stored is not None:
            refuse_type_changes(f"Parquet table {where.uri}", stored, schema, _TYPE_FIX)

    def begin(self, batch: TableBatch) -> ParquetBegun:
        """Remove what an earlier attempt of the run wrote, refuse a changed column type. Returns the
        table's region folders (the parts' version check lists days inside them)."""
        where = self.table_location(batch.table)
        try:
            if batch.replay:
                self._remove_run(where, batch.run_number)
            regions = self._region_folders(where)
            stored = self._stored_schema(where, regions)
        except OSError as error:  # refused credentials or a missing bucket: terminal; the rest: transient
            raise storage_error(error, where.uri, side="sink", doing="writing Parquet under") from error
        if stored is not None:
            refuse_type_changes(f"Parquet table {where.uri}", stored, batch.data.schema, _TYPE_FIX)
        return ParquetBegun(tuple(regions))

    def write_part(self, batch: TableBatch, begun: ParquetBegun, *, part: int, last: bool) -> PartWrite:
        """The part's new versions, a file per (region, date) named `run-<n>-<part>.parquet`."""
        where = self.table_location(batch.table)
        try:
            data = self._new_versions(where, batch, begun.regions)
            if data.num_rows:
                self._write_partitions(where, batch.run_number, data, batch.cursor, batch.table, part=part)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="writing Parquet under") from error
        # Tombstones are versions like any other (`_deleted` true), the UNKNOWN region's included.
        return PartWrite(data.num_rows, region_counts(data), deleted=count_true(tombstones(batch, data)))

    def finish(self, batch: TableBatch, begun: ParquetBegun, parts: list[PartWrite]) -> SinkWrite:
        """Nothing to commit: each file appeared whole (renamed into place); the checkpoint publishes the
        run."""
        failpoints.hit("parquet.commit", batch.table)
        return SinkWrite(self.name, batch.table, sum(p.rows for p in parts), self.location(batch.table),
                         regions=summed_regions(parts), deleted=sum(p.deleted for p in parts))

    def close(self) -> None:
        """Nothing is kept open between batches."""

    def discard_run(self, table: str, run_number: int) -> None:
        """Delete the run's files, half-written ones included: its versions are written again by the
        run that takes its place."""
        where = self.table_location(table)
        try:
            self._remove_run(where, run_number)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink",
                                doing="removing a cut run's files under") from error

    def read_back(self, table: str, columns: list[str]) -> pa.Table | None:
        """Every version row of the log (hidden in-flight files skipped, as readers skip them), with the
        region its folder names (`PARTITION_REGION`: a reader of the hive folders goes by that)."""
        found = self._data_files(table)
        if found is None:
            return None
        where, paths = found
        with ThreadPoolExecutor(max_workers=4) as pool:
            parts = list(pool.map(lambda path: self._read_file(table, where, path, [*columns, "region"]),
                                  paths))
        return pa.concat_tables(parts, promote_options="permissive") if parts else None

    def scan(self, table: str, columns: list[str]) -> Iterator[pa.Table]:
        """`read_back`'s rows a file at a time."""
        found = self._data_files(table)
        if found is not None:
            where, paths = found
            for path in paths:
                yield self._read_file(table, where, path, [*columns, "region"])

    def _data_files(self, table: str) -> tuple[Location, list[str]] | None:
        """The table's location and its visible data files, or None where it does not exist."""
        where = self.table_location(table)
        try:
            if where.filesystem.get_file_info(where.path).type == pafs.FileType.NotFound:
                return None
            infos = where.filesystem.get_file_info(pafs.FileSelector(where.path, recursive=True))
        except OSError as error:
            raise SinkUnavailable(f"listing {where.uri} failed: {short_error(error)}. Check the warehouse "
                                  "path, then verify again") from error
        return where, sorted(
            i.path for i in infos
            if (i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                    and not i.base_name.startswith((".", "_")))
        )

    @staticmethod
    def _read_file(table: str, where: Location, path: str, wanted: list[str]) -> pa.Table:
        try:
            with where.filesystem.open_input_file(path) as handle:
                file = pq.ParquetFile(handle)
                held = set(file.schema_arrow.names)
                rows = file.read(columns=[c for c in wanted if c in held])
            for name in wanted:  # a column added after this file was written: null here, as readers see it
                if name not in held:
                    rows = rows.append_column(name, pa.nulls(rows.num_rows))
            rows = rows.select(wanted)
            folder = _folder_region(path[len(where.path):])
            return rows.append_column(PARTITION_REGION,
                                      pa.repeat(pa.scalar(folder, pa.string()), rows.num_rows))
        except (OSError, pa.ArrowInvalid, KeyError) as error:
            raise SinkRejected(f"cannot read columns {wanted} of {path} (Parquet sink of {table}): "
                               f"{short_error(error)}. Fix or remove the file") from error

    def probe(self) -> str | None:
        return folder_problem(self.name, self.root_uri)

    def dimension_rows(self, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
        where = self.table_location(spec.table)
        try:
            return parquet_dimensions.current_rows(where, spec, columns)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="reading the dimension log") from error

    def apply_dimension(self, spec: DimensionSpec, changes: DimensionChanges) -> None:
        where = self.table_location(spec.table)
        try:
            parquet_dimensions.append(where, spec, changes, self.compression)
        except OSError as error:
            raise storage_error(error, where.uri, side="sink", doing="writing the dimension log") from error

    @staticmethod
    def _region_folders(where: Location) -> list[str]:
        """The table's `region=` folders (listed once per write: the schema check and the version
        anti-join both need them)."""
        return [
            f.path for f in where.filesystem.get_file_info(
                pafs.FileSelector(where.path, allow_not_found=True))
            if f.type == pafs.FileType.Directory and f.base_name.startswith("region=")
        ]

    @staticmethod
    def _stored_schema(where: Location, regions: list[str]) -> pa.Schema | None:
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

    def _remove_run(self, where: Location, run_number: int) -> None:
        prefixes = (run_prefix(run_number), "." + run_prefix(run_number))
        selector = pafs.FileSelector(where.path, recursive=True, allow_not_found=True)
        for info in where.filesystem.get_file_info(selector):
            if info.base_name.startswith(prefixes):
                where.filesystem.delete_file(info.path)

    def _new_versions(self, where: Location, batch: TableBatch, regions: tuple[str, ...]) -> pa.Table:
        """Drop versions (key, cursor) already in the log: the lookback re-reads them every run, and an
        abandoned run or a backfill may have written them. With deletes a version is (key, cursor,
        tombstone or not): a held live version does not stop a tombstone at its cursor, which wins the tie."""
        data = batch.data
        if data.num_rows == 0:
            return data
        low, high = pc.min(data[batch.cursor]).as_py(), pc.max(data[batch.cursor]).as_py()
        existing = self._existing_versions(where, batch, regions, low, high)
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

    def _existing_versions(self, where: Location, batch: TableBatch, regions: tuple[str, ...], low: datetime,
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

    def _write_partitions(self, where: Location, run_number: int, data: pa.Table, cursor: str, table: str, *,
                          part: int) -> None:
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
                pq.write_table(rows, stream, compression=self.compression, use_dictionary=dictionary)
            where.filesystem.move(hidden, f"{folder}/{name}")

        half = max(1, len(bounds) // 2)
        with ThreadPoolExecutor(max_workers=_WRITERS) as pool:
            list(pool.map(write_one, bounds[:half]))
            failpoints.hit("parquet.write", table)  # some partitions written, not all
            list(pool.map(write_one, bounds[half:]))


if TYPE_CHECKING:  # mypy checks the class against the whole contract, with its own token
    from loader.sinks.base import Sink

    _CONFORMS: type[Sink[ParquetBegun]] = ParquetSink
