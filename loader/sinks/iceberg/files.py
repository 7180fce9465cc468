"""The file-level copy-on-write every table of the Iceberg sink is written with: the fact tables
(facts.py), their tombstones tables (tombstones.py) and the dimension tables (dimensions.py).

- `FileRanges`: each data file's [min, max] of the first key column and its region, from the manifests;
  `read_touched`: the rows of the files whose range holds one of a write's keys.
- `rewrite`: those files rewritten, each on its own, without the rows that leave them and with the new
  rows of their region and key range; the other new rows in new files per region (`write_files`).
- `commit`: one snapshot removing the rewritten files and adding the new ones, with the write's key span
  as its conflict filter; a commit lost to a concurrent writer is a `CommitConflict`, its new files
  removed (`delete_files`), redone on fresh metadata (`redone_on_conflict`).
- `expire`: the snapshots each table keeps after a commit.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg import expressions
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import (
    ArrowScan,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent
from pyiceberg.table import TableProperties
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _ManifestMergeManager, _OverwriteFiles
from pyiceberg.utils.properties import property_as_bool, property_as_int

from loader.config_parts import RetryConfig
from loader.errors import SinkUnavailable
from loader.retry import call_with_retries
from loader.sinks.encoding import dictionary_columns
from loader.storage import short_error

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The columns `read_touched` adds to a stored row: its file (an index into the touched files) and its
#: row number in that file.
FILE_COLUMN, ROW_COLUMN = "__file", "__row"


class CommitConflict(SinkUnavailable):
    """A commit lost to a concurrent writer of the table (its files in the batch's key span, or a file the
    batch rewrites replaced): the merge is redone on fresh metadata."""


# ------------------------------------------------------------------------------------------- key ranges


@dataclass
class FileRanges:
    """Each live data file of a table: its scan task, its region (None: unpartitioned) and its [low, high]
    of the first key column (None where the manifest has no bound: the file may hold any key)."""

    tasks: list[Any] = field(default_factory=list)
    regions: list[str | None] = field(default_factory=list)
    lows: list[Any] = field(default_factory=list)
    highs: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, table: Any, first_key: str) -> FileRanges:
        ranges = cls()
        if table.current_snapshot() is None:
            return ranges
        column = table.schema().find_field(first_key)
        partitioned = len(table.spec().fields) > 0
        for task in table.scan().plan_files():
            data_file = task.file
            low = (data_file.lower_bounds or {}).get(column.field_id)
            high = (data_file.upper_bounds or {}).get(column.field_id)
            ranges.tasks.append(task)
            ranges.regions.append(data_file.partition[0] if partitioned else None)
            ranges.lows.append(None if low is None else from_bytes(column.field_type, low))
            ranges.highs.append(None if high is None else from_bytes(column.field_type, high))
        return ranges

    def touched(self, keys: np.ndarray) -> list[int]:
        """The files whose range holds a value of `keys` (sorted, unique)."""
        return touched_files(self.lows, self.highs, keys)

    def holding(self, files: list[int], values: np.ndarray) -> np.ndarray:
        """Per value of `values` (a batch's first key column, in its order): whether one of `files`'
        ranges holds it."""
        found = np.zeros(len(values), dtype=bool)
        ordered = is_sorted(values)  # a batch arrives sorted by key: a range is then one slice
        for index in files:
            low, high = self.lows[index], self.highs[index]
            if low is None or high is None:
                found[:] = True
                break
            if ordered:
                start, end = np.searchsorted(values, low, "left"), np.searchsorted(values, high, "right")
                found[start:end] = True
            else:
                found |= (values >= low) & (values <= high)
        return found

    def groups(self, files: list[int], max_rows: int) -> list[list[int]]:
        """`files` in consecutive groups of at most `max_rows` rows (the manifests' counts; a larger file
        alone): a merge holds one group's stored rows in memory at a time, never the table's."""
        groups: list[list[int]] = []
        rows = 0
        for index in files:
            count = int(self.tasks[index].file.record_count)
            if groups and rows + count <= max_rows:
                groups[-1].append(index)
                rows += count
            else:
                groups.append([index])
                rows = count
        return groups


def touched_files(lows: list[Any], highs: list[Any], keys: np.ndarray) -> list[int]:
    """Indexes of the [low, high] ranges holding a value of `keys` (sorted, unique); a range without
    bounds (None) holds any key. O(files x log keys): one binary search per file."""
    if len(keys) == 0:
        return []
    found = []
    for index, (low, high) in enumerate(zip(lows, highs, strict=True)):
        if low is None or high is None:
            found.append(index)
            continue
        slot = int(np.searchsorted(keys, low, side="left"))
        if slot < len(keys) and keys[slot] <= high:
            found.append(index)
    return found


def sorted_keys(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The column's distinct values, sorted. A batch arrives sorted by key: then one pass finds them
    (numpy's unique hashes, several times slower on a million keys)."""
    values = column.to_numpy(zero_copy_only=False)
    if not is_sorted(values):
        values = np.sort(values, kind="stable")
    if len(values) < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


def is_sorted(values: np.ndarray) -> bool:
    return len(values) < 2 or bool(np.all(values[1:] >= values[:-1]))


def conflict_filter(first_key: str, keys: np.ndarray) -> Any:
    """The commit's conflict filter: the batch's span of the first key (a concurrent writer's file that
    may hold one of these keys is a conflict); None for no keys."""
    if len(keys) == 0:
        return None
    built: Any = expressions  # its predicates take a column name and a literal (typed more narrowly)
    return built.And(built.GreaterThanOrEqual(first_key, _py(keys[0])),
                     built.LessThanOrEqual(first_key, _py(keys[-1])))


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------- the stored rows


def read_touched(table: Any, ranges: FileRanges, touched: list[int], schema: pa.Schema) -> pa.Table:
    """The rows of the touched files, conformed to `schema`, with their file (index into `touched`) and
    row number in it."""
    scan = ArrowScan(table_metadata=table.metadata, io=table.io, projected_schema=table.schema(),
                     row_filter=AlwaysTrue())
    parts = []
    for position, index in enumerate(touched):
        rows = conform(scan.to_table([ranges.tasks[index]]), schema)
        parts.append(rows.append_column(FILE_COLUMN, pa.array(np.full(rows.num_rows, position, np.int32)))
                     .append_column(ROW_COLUMN, pa.array(np.arange(rows.num_rows, dtype=np.int64))))
    if not parts:
        return schema.empty_table().append_column(FILE_COLUMN, pa.array([], pa.int32())).append_column(
            ROW_COLUMN, pa.array([], pa.int64()))
    return pa.concat_tables(parts)


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with exactly `schema`'s columns, in its order and types (a column it lacks: nulls)."""
    columns = [rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def removed_by_keys(stored: pa.Table, keys_table: pa.Table, key: tuple[str, ...]) -> np.ndarray:
    """Per stored row: whether its key is one of `keys_table`'s."""
    removed = np.zeros(stored.num_rows, dtype=bool)
    if stored.num_rows == 0 or keys_table.num_rows == 0:
        return removed
    keys = list(key)
    index = stored.select(keys).append_column("__s", pa.array(np.arange(stored.num_rows, dtype=np.int64)))
    wanted = keys_table.select(keys).cast(pa.schema([index.schema.field(k) for k in keys]))
    matched = index.join(wanted, keys=keys, join_type="inner")
    removed[matched["__s"].to_numpy()] = True
    return removed


# ---------------------------------------------------------------------------------------- the rewrite


@dataclass
class Rewrite:
    """The files a commit removes (manifest DataFiles) and the new Parquet files it adds (paths)."""

    deleted: list[Any] = field(default_factory=list)
    written: list[Written] = field(default_factory=list)
    rest: pa.Table | None = None  # additions no rewritten file took, where the caller places them

    def add(self, other: Rewrite) -> None:
        self.deleted += other.deleted
        self.written += other.written


def rewrite(table: Any, ranges: FileRanges, touched: list[int], stored: pa.Table, removed: np.ndarray,
            additions: pa.Table, first_key: str, schema: pa.Schema, target_bytes: int,
            partitioned: bool, *, place_rest: bool = True) -> Rewrite:
    """Write the new files: each touched file that loses a row, rewritten with its other rows and the
    additions of its region inside its key range; the remaining additions in new files per region (or,
    without `place_rest`, left in the result's `rest` for the caller to place)."""
    result = Rewrite()
    assigned = np.zeros(additions.num_rows, dtype=bool)
    add_keys = additions[first_key].to_numpy(zero_copy_only=False) if additions.num_rows else np.empty(0)
    in_region: dict[str, np.ndarray] = {}  # per region: which additions are of it (computed when needed)
    files = stored[FILE_COLUMN].to_numpy() if stored.num_rows else np.empty(0, np.int32)
    jobs: list[tuple[pa.Table, str | None]] = []
    data_columns = [f.name for f in schema]
    for position, index in enumerate(touched):
        mine = files == position
        if not removed[mine].any():
            continue  # loses nothing: left as it is
        survivors = stored.filter(pa.array(mine & ~removed)).select(data_columns)
        low, high = ranges.lows[index], ranges.highs[index]
        take = ~assigned
        if low is not None and high is not None and len(add_keys):
            take &= (add_keys >= low) & (add_keys <= high)
        region = ranges.regions[index]
        if partitioned and region is not None and additions.num_rows:
            if region not in in_region:
                in_region[region] = pc.fill_null(pc.equal(additions["region"], region), False).to_numpy(
                    zero_copy_only=False)
            take &= in_region[region]
        assigned |= take
        rows = pa.concat_tables([survivors, additions.filter(pa.array(take))]) if take.any() else survivors
        result.deleted.append(ranges.tasks[index].file)
        if rows.num_rows:
            jobs.append((rows.sort_by(first_key), ranges.regions[index]))
    result.written += write_many(table, jobs, schema, target_bytes)  # the rewritten files, at once
    rest = additions.filter(pa.array(~assigned)) if assigned.any() else additions
    if not place_rest:
        result.rest = rest
    else:
        result.written += write_new_files(table, rest, first_key, schema, target_bytes, partitioned)
    return result


def write_new_files(table: Any, rows: pa.Table, first_key: str, schema: pa.Schema, target_bytes: int,
                    partitioned: bool) -> list[Written]:
    """`rows` that belong to no rewritten file, as new files per region, sorted by the first key (narrow
    key ranges: a later batch reads few of them)."""
    if rows.num_rows == 0:
        return []
    if not is_sorted(rows[first_key].to_numpy(zero_copy_only=False)):
        rows = rows.sort_by(first_key)
    regions = sorted(pc.unique(rows["region"]).to_pylist()) if partitioned else [None]
    jobs = [(rows if region is None or len(regions) == 1 else rows.filter(pc.equal(rows["region"], region)),
             region) for region in regions]
    return write_many(table, jobs, schema, target_bytes)


#: Files written at once: pyarrow encodes a Parquet file on one thread and releases the GIL meanwhile.
WRITERS = max(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class Written:
    """A data file written for a commit: its path, and the footer and size its manifest entry is made
    from (no second read of the file)."""

    path: str
    footer: Any  # pyarrow.parquet.FileMetaData
    size: int


def write_files(table: Any, rows: pa.Table, schema: pa.Schema, target_bytes: int,
                region: str | None) -> list[Written]:
    """`rows` (of one region, sorted by key) as Parquet files of about `target_bytes` each (in memory),
    with the table's field ids (`schema` is `schema_to_pyarrow` of its schema) and our encoding choices."""
    return write_many(table, [(rows, region)], schema, target_bytes)


def write_many(table: Any, jobs: list[tuple[pa.Table, str | None]], schema: pa.Schema,
               target_bytes: int) -> list[Written]:
    """Each job's rows (of one region, sorted by key) as files of about `target_bytes` each, `WRITERS` at
    a time. Where one fails, the others' files are removed before the error goes on."""
    pieces = []
    for rows, region in jobs:
        if rows.num_rows == 0:
            continue
        per_row = max(1, rows.nbytes // rows.num_rows)
        rows_per_file = max(1, target_bytes // per_row)
        folder = f"{table.location().rstrip('/')}/data"
        if region is not None:  # the partition's folder, as pyiceberg names it (the value URL-quoted)
            folder += f"/region={quote(region, safe='')}"
        dictionary = dictionary_columns(rows) or False  # judged once a job: sampling has a cost
        pieces += [(rows.slice(start, rows_per_file), folder, dictionary)
                   for start in range(0, rows.num_rows, rows_per_file)]

    def write(piece: tuple[pa.Table, str, Any]) -> Written:
        rows, folder, dictionary = piece
        path = f"{folder}/{uuid.uuid4()}.parquet"
        with table.io.new_output(path).create() as out:
            with pq.ParquetWriter(out, schema, compression="zstd", use_dictionary=dictionary) as writer:
                writer.write_table(rows.cast(schema))
            size = out.tell()
        return Written(path, writer.writer.metadata, size)

    if len(pieces) <= 1:
        return [write(piece) for piece in pieces]
    with ThreadPoolExecutor(min(WRITERS, len(pieces))) as pool:
        futures = [pool.submit(write, piece) for piece in pieces]
        wait(futures)
    done = [f.result() for f in futures if f.exception() is None]
    failed = next((f.exception() for f in futures if f.exception() is not None), None)
    if failed is not None:
        delete_files(table, done)
        raise failed
    return done


def delete_files(table: Any, written: list[Written]) -> None:
    """Remove files no commit references (those of a commit that failed): best effort."""
    for file in written:
        try:
            table.io.delete(file.path)
        except Exception as error:  # noqa: BLE001 - an orphan file is harmless; the failure is logged
            log.warning("could not remove the unreferenced file %s: %s", file.path, error)


def manifest_entry(metadata: Any, written: Written) -> Any:
    """The manifest entry of a file the loader wrote, from its footer: its column bounds and counts
    (what a later merge finds its key range by), and its partition (the region column's one value), as
    `parquet_file_to_data_file` makes it, without reading the file again."""
    schema = metadata.schema()
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=written.footer, stats_columns=compute_statistics_plan(schema, metadata.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(schema))
    return DataFile.from_args(
        content=DataFileContent.DATA, file_path=written.path, file_format=FileFormat.PARQUET,
        partition=statistics.partition(metadata.spec(), schema), file_size_in_bytes=written.size,
        sort_order_id=None, spec_id=metadata.default_spec_id, equality_ids=None, key_metadata=None,
        **statistics.to_serialized_dict())


# ----------------------------------------------------------------------------------------- the commit


def commit(tx: Any, table: Any, done: Rewrite, summary: dict[str, str], conflict: Any) -> None:
    """One snapshot in `tx`: the rewritten files removed, the new ones added; with `conflict` (the key
    span) as the conflict filter. Appends only (nothing removed): a merge-append, whose manifests merge."""
    if not done.deleted and not done.written:
        return
    update = tx.update_snapshot(snapshot_properties=summary)
    producer = merging_overwrite(tx, table, summary) if done.deleted else update.merge_append()
    if conflict is not None and done.deleted:
        producer.delete_by_predicate(conflict)
    for data_file in done.deleted:
        producer.delete_data_file(data_file)
    for written in done.written:
        producer.append_data_file(manifest_entry(tx.table_metadata, written))
    producer.commit()


def merging_overwrite(tx: Any, table: Any, summary: dict[str, str]) -> Any:
    """An overwrite producer that merges small manifests as a merge-append does (pyiceberg's overwrite
    only adds one per commit; Java's merges in both): planning then reads a bounded number of manifests
    however many merges the table had."""

    class MergingOverwrite(_OverwriteFiles):
        def _process_manifests(self, manifests: list[Any]) -> list[Any]:
            props, known = tx.table_metadata.properties, TableProperties
            manager: Any = _ManifestMergeManager(
                target_size_bytes=int(property_as_int(props, known.MANIFEST_TARGET_SIZE_BYTES,
                                                      known.MANIFEST_TARGET_SIZE_BYTES_DEFAULT) or 0),
                min_count_to_merge=int(property_as_int(props, known.MANIFEST_MIN_MERGE_COUNT,
                                                       known.MANIFEST_MIN_MERGE_COUNT_DEFAULT) or 0),
                merge_enabled=property_as_bool(props, TableProperties.MANIFEST_MERGE_ENABLED,
                                               TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT),
                snapshot_producer=self)
            data = [m for m in manifests if m.content == ManifestContent.DATA]
            deletes = [m for m in manifests if m.content == ManifestContent.DELETES]
            merged: list[Any] = manager.merge_manifests(data)
            return merged + deletes

    return MergingOverwrite(operation=Operation.OVERWRITE, transaction=tx, io=table.io, branch=MAIN_BRANCH,
                            snapshot_properties=summary)


#: pyiceberg's errors of a commit known not to have landed: a concurrent writer's came first.
LOST_RACE = (CommitFailedException, ValidationException)


def lost_race(table: Any, written: list[Written], where: str, error: Exception,
              what: str = "the commit lost to a concurrent writer") -> CommitConflict:
    """A commit that did not land (`error`, pyiceberg's) as the `CommitConflict` that has it redone; its
    new files (`written`), nobody's, removed."""
    delete_files(table, written)
    return CommitConflict(f"{where}: {what}: {short_error(error)}. Redone on fresh metadata")


def commit_transaction(tx: Any, table: Any, written: list[Written], where: str) -> Any:
    """`tx` committed: the table as it then is. One lost to a concurrent writer raises `CommitConflict`,
    its new files (`written`) removed."""
    try:
        return tx.commit_transaction()
    except LOST_RACE as error:  # known not to have landed
        raise lost_race(table, written, where, error) from error


def redone_on_conflict(step: str, retry: RetryConfig, attempt: Callable[[], T]) -> T:
    """`attempt` (one try of a commit, on the table's current metadata) tried again with the `retry`
    policy while it loses to a concurrent writer (`CommitConflict`); no other fault is retried here."""
    return call_with_retries(step, retry, attempt, retry_if=lambda error: isinstance(error, CommitConflict))


# ----------------------------------------------------------------------------------------- the history


def expire_snapshots(table: Any, keep: int) -> int:
    """Once the table holds more than twice `keep` snapshots, expire all but the newest `keep` (never
    the current one): an increment's planning reads a bounded history, and the expiry, a catalog commit
    of its own, comes once every `keep` commits rather than after each. The files only expired
    snapshots referenced stay (pyiceberg removes none). Returns how many were expired."""
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    if len(snapshots) <= 2 * keep:
        return 0
    current = table.current_snapshot()
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    old = [s.snapshot_id for s in snapshots[:-keep]
           if s.snapshot_id not in protected and (current is None or s.snapshot_id != current.snapshot_id)]
    if old:
        table.maintenance.expire_snapshots().by_ids(old).commit()
    return len(old)


def expire(table: Any, name: str, keep: int) -> None:
    """Keep `keep` snapshots (best effort: a failure here loses nothing, the next commit expires them)."""
    try:
        expired = expire_snapshots(table, keep)
    except Exception as error:  # noqa: BLE001 - a concurrent commit; logged, retried next commit
        log.warning("%s -> iceberg: expiring old snapshots failed (%s); the next commit tries again",
                    name, short_error(error))
        return
    if expired:
        log.debug("%s -> iceberg: %d old snapshot(s) expired", name, expired)
