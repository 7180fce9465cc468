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
import uuid
from collections.abc import Callable
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
from pyiceberg.io.pyarrow import ArrowScan, parquet_file_to_data_file
from pyiceberg.manifest import ManifestContent
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
    return np.unique(column.to_numpy(zero_copy_only=False))


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
    written: list[str] = field(default_factory=list)


def rewrite(table: Any, ranges: FileRanges, touched: list[int], stored: pa.Table, removed: np.ndarray,
            additions: pa.Table, first_key: str, schema: pa.Schema, target_bytes: int,
            partitioned: bool) -> Rewrite:
    """Write the new files: each touched file that loses a row, rewritten with its other rows and the
    additions of its region inside its key range; the remaining additions in new files per region."""
    result = Rewrite()
    assigned = np.zeros(additions.num_rows, dtype=bool)
    add_keys = additions[first_key].to_numpy(zero_copy_only=False) if additions.num_rows else np.empty(0)
    add_regions = (np.asarray(additions["region"].to_pylist(), dtype=object)
                   if partitioned and additions.num_rows else None)
    files = stored[FILE_COLUMN].to_numpy() if stored.num_rows else np.empty(0, np.int32)
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
        if add_regions is not None:
            take &= add_regions == ranges.regions[index]
        assigned |= take
        rows = pa.concat_tables([survivors, additions.filter(pa.array(take))]) if take.any() else survivors
        result.deleted.append(ranges.tasks[index].file)
        if rows.num_rows:
            result.written += write_files(table, rows.sort_by(first_key), schema, target_bytes,
                                          ranges.regions[index])
    rest = additions.filter(pa.array(~assigned)) if assigned.any() else additions
    if rest.num_rows:
        regions = sorted(set(rest["region"].to_pylist())) if partitioned else [None]
        for region in regions:
            rows = rest if region is None else rest.filter(pc.equal(rest["region"], region))
            result.written += write_files(table, rows, schema, target_bytes, region)
    return result


def write_files(table: Any, rows: pa.Table, schema: pa.Schema, target_bytes: int,
                region: str | None) -> list[str]:
    """`rows` (of one region, sorted by key) as Parquet files of about `target_bytes` each (in memory),
    with the table's field ids (`schema` is `schema_to_pyarrow` of its schema) and our encoding choices."""
    per_row = max(1, rows.nbytes // max(1, rows.num_rows))
    rows_per_file = max(1, target_bytes // per_row)
    folder = f"{table.location().rstrip('/')}/data"
    if region is not None:  # the partition's folder, as pyiceberg names it (the value URL-quoted)
        folder += f"/region={quote(region, safe='')}"
    paths = []
    for start in range(0, rows.num_rows, rows_per_file):
        piece = rows.slice(start, rows_per_file).cast(schema)
        path = f"{folder}/{uuid.uuid4()}.parquet"
        with table.io.new_output(path).create() as out:
            pq.write_table(piece, out, compression="zstd", use_dictionary=dictionary_columns(piece) or False)
        paths.append(path)
    return paths


def delete_files(table: Any, paths: list[str]) -> None:
    """Remove files no commit references (those of a commit that failed): best effort."""
    for path in paths:
        try:
            table.io.delete(path)
        except Exception as error:  # noqa: BLE001 - an orphan file is harmless; the failure is logged
            log.warning("could not remove the unreferenced file %s: %s", path, error)


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
    for path in done.written:
        producer.append_data_file(parquet_file_to_data_file(table.io, tx.table_metadata, path))
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


def lost_race(table: Any, written: list[str], where: str, error: Exception,
              what: str = "the commit lost to a concurrent writer") -> CommitConflict:
    """A commit that did not land (`error`, pyiceberg's) as the `CommitConflict` that has it redone; its
    new files (`written`), nobody's, removed."""
    delete_files(table, written)
    return CommitConflict(f"{where}: {what}: {short_error(error)}. Redone on fresh metadata")


def commit_transaction(tx: Any, table: Any, written: list[str], where: str) -> Any:
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
    """Expire all but the newest `keep` snapshots (never the current one): an increment's planning then
    reads a bounded history. The files only expired snapshots referenced stay (pyiceberg removes none).
    Returns how many were expired."""
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
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
