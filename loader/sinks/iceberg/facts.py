"""Fact table writes in the Iceberg sink: file-scoped copy-on-write, one snapshot a batch.

A batch's rows (sorted by key) are merged as Delta's are, by the rule of loader/sinks/base.py (per key
the newest cursor wins, a stale version changes nothing, a tombstone wins a tie), but at the grain of
Iceberg's data files:

1. `FileRanges`: each data file's [min, max] of the first key column and its region, from the manifests
   (`plan_files`, bounds decoded with `from_bytes`): no data file is read to find what a batch touches.
2. The files whose range holds one of the batch's keys (any region: a key may have moved) are read
   whole; `decide` joins the batch with their rows on the key: what is inserted, replaced, deleted
   (hard) or marked (soft, `_deleted_at`), and which stored rows leave their file.
3. `rewrite`: each file that loses a row is rewritten on its own (its other rows, plus the batch's rows
   of its region inside its key range); the batch's other rows go to new files per region. Files that
   lose nothing are left alone, so a merge costs the files it changes, not the table, and file ranges
   stay narrow (one combined rewrite would merge them into one range spanning the table).
4. `commit`: one transaction: the schema evolved (new columns, nullable), the run's marker property set,
   and one overwrite snapshot removing the rewritten files and adding the new ones, with the batch's key
   span as its conflict filter (serializable isolation: a concurrent writer's files in that span make
   the commit fail, and the sink redoes the merge on fresh metadata).

Hard deletes remove the row, so the tombstone is remembered apart: the companion table
`<table>__tombstones` (key columns and cursor, the newest tombstone per key, unpartitioned) is updated
first, in its own commit, idempotent by the same rule; a live version no newer than its key's remembered
tombstone is dropped before the merge, and a newer one makes the table forget it (`remember_tombstones`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.sinks.base import DELETED, DELETED_AT, count_true
from loader.sinks.encoding import dictionary_columns

log = logging.getLogger(__name__)

#: Suffix of the companion table remembering a hard-deleting table's tombstones.
TOMBSTONES_SUFFIX = "__tombstones"
#: The companion table is compacted into one file once it holds more data files than this.
TOMBSTONE_FILES = 8
_FILE, _ROW = "__file", "__row"


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
        from pyiceberg.conversions import from_bytes

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
    from pyiceberg import expressions

    if len(keys) == 0:
        return None
    built: Any = expressions  # its predicates take a column name and a literal (typed more narrowly)
    return built.And(built.GreaterThanOrEqual(first_key, _py(keys[0])),
                     built.LessThanOrEqual(first_key, _py(keys[-1])))


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------------ the merge


@dataclass
class Decision:
    """What a batch does to the rows of the files it touches."""

    removed: np.ndarray  # per stored row (in `read_touched`'s order): leaves its file
    additions: pa.Table  # rows to write: inserted, replaced, marked (the write schema's columns)
    rows: int  # live versions written (inserted or replacing an older one)
    regions: dict[str, int]  # those per region
    deleted: int  # keys removed (hard) or marked (soft)


def read_touched(table: Any, ranges: FileRanges, touched: list[int], schema: pa.Schema) -> pa.Table:
    """The rows of the touched files, conformed to `schema`, with their file (index into `touched`) and
    row number in it."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    scan = ArrowScan(table_metadata=table.metadata, io=table.io, projected_schema=table.schema(),
                     row_filter=AlwaysTrue())
    parts = []
    for position, index in enumerate(touched):
        rows = conform(scan.to_table([ranges.tasks[index]]), schema)
        parts.append(rows.append_column(_FILE, pa.array(np.full(rows.num_rows, position, np.int32)))
                     .append_column(_ROW, pa.array(np.arange(rows.num_rows, dtype=np.int64))))
    if not parts:
        return schema.empty_table().append_column(_FILE, pa.array([], pa.int32())).append_column(
            _ROW, pa.array([], pa.int64()))
    return pa.concat_tables(parts)


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with exactly `schema`'s columns, in its order and types (a column it lacks: nulls)."""
    columns = [rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def decide(batch_rows: pa.Table, stored: pa.Table, key: tuple[str, ...], cursor: str,
           deletes: str | None, schema: pa.Schema) -> Decision:
    """The merge of `batch_rows` (one row per key; `_deleted` where the source has deletes) into the
    `stored` rows of the touched files (with `__file`, `__row`), by the rule of loader/sinks/base.py:
    - a live version newer than the stored one replaces it (soft: the row stays marked where it was
      deleted at this version's cursor or later, else it is revived); one no newer changes nothing;
    - a key not stored is inserted (a tombstone of it changes nothing);
    - a tombstone at or after the stored version's cursor removes the row (hard) or marks it with its
      cursor (soft, unless marked at that cursor or later already); the row's region is the stored one;
    - a stored row whose key arrives newer in another region leaves its file (the key lives once)."""
    keys = list(key)
    with_flags = deletes is not None and DELETED in batch_rows.column_names
    flags = (pc.fill_null(batch_rows[DELETED], False) if with_flags
             else pa.array(np.zeros(batch_rows.num_rows, dtype=bool)))
    marks = deletes == "soft" and DELETED_AT in stored.column_names
    slim = batch_rows.select([*keys, cursor]).append_column("__tomb", flags).append_column(
        "__b", pa.array(np.arange(batch_rows.num_rows, dtype=np.int64)))
    landed = stored.select([*keys, cursor, *([DELETED_AT] if marks else []), _FILE, _ROW])
    landed = landed.rename_columns([*keys, "__landed", *(["__marked"] if marks else []), _FILE, _ROW])
    landed = landed.append_column("__s", pa.array(np.arange(stored.num_rows, dtype=np.int64)))
    at = slim.schema.field(cursor).type  # compared with the batch's cursor: its type
    landed = landed.cast(pa.schema([
        *(slim.schema.field(k) for k in keys), pa.field("__landed", at),
        *([pa.field("__marked", at)] if marks else []),
        *(f for f in landed.schema if f.name in (_FILE, _ROW, "__s"))]))
    joined = slim.join(landed, keys=keys, join_type="left outer").sort_by("__b")
    is_stored = pc.is_valid(joined["__landed"])
    tomb = joined["__tomb"]
    live = pc.invert(tomb)
    newer = pc.fill_null(pc.greater(joined[cursor], joined["__landed"]), False)
    inserted = pc.and_(live, pc.invert(is_stored))
    replaced = pc.and_(pc.and_(live, is_stored), newer)
    applies = pc.and_(pc.and_(tomb, is_stored),
                      pc.fill_null(pc.less_equal(joined["__landed"], joined[cursor]), False))
    if marks:  # soft: unless the row is marked at the tombstone's cursor or later already
        applies = pc.and_(applies, pc.fill_null(pc.less(joined["__marked"], joined[cursor]), True))
    removed = np.zeros(stored.num_rows, dtype=bool)
    leaving = pc.or_(replaced, applies)
    removed[joined.filter(leaving)["__s"].to_numpy()] = True

    written = pc.or_(inserted, replaced)
    taken = batch_rows.take(joined.filter(written)["__b"])
    versions = conform(taken, schema)
    if marks and count_true(replaced):  # soft: a replaced row keeps a mark at its cursor or later
        kept_mark = pc.if_else(pc.fill_null(pc.greater_equal(joined["__marked"], joined[cursor]), False),
                               joined["__marked"], pa.nulls(joined.num_rows, joined["__marked"].type))
        mark = kept_mark.filter(written).cast(schema.field(DELETED_AT).type)
        versions = versions.set_column(schema.get_field_index(DELETED_AT), schema.field(DELETED_AT), mark)
    additions = [versions]
    if deletes == "soft" and count_true(applies):  # the stored rows, marked at the tombstone's cursor
        chosen = joined.filter(applies)
        marked = conform(stored.take(chosen["__s"]), schema)
        at = chosen[cursor].cast(schema.field(DELETED_AT).type)
        additions.append(marked.set_column(schema.get_field_index(DELETED_AT), schema.field(DELETED_AT), at))
    result = pa.concat_tables(additions).sort_by([(k, "ascending") for k in keys])
    counted = batch_rows.take(joined.filter(written)["__b"])
    return Decision(removed=removed, additions=result, rows=counted.num_rows, regions=_regions(counted),
                    deleted=count_true(applies))


def _regions(data: pa.Table) -> dict[str, int]:
    if data.num_rows == 0:
        return {}
    counts = data.group_by("region").aggregate([("region", "count")])
    return dict(zip(counts["region"].to_pylist(), counts["region_count"].to_pylist(), strict=True))


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
    files = stored[_FILE].to_numpy() if stored.num_rows else np.empty(0, np.int32)
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
    import pyarrow.parquet as pq

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


def commit(tx: Any, table: Any, done: Rewrite, summary: dict[str, str], conflict: Any) -> None:
    """One snapshot in `tx`: the rewritten files removed, the new ones added; with `conflict` (the key
    span) as the conflict filter. Appends only (nothing removed): a merge-append, whose manifests merge."""
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

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
    from pyiceberg.manifest import ManifestContent
    from pyiceberg.table import TableProperties
    from pyiceberg.table.refs import MAIN_BRANCH
    from pyiceberg.table.snapshots import Operation
    from pyiceberg.table.update.snapshot import _ManifestMergeManager, _OverwriteFiles
    from pyiceberg.utils.properties import property_as_bool, property_as_int

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


# ------------------------------------------------------------------------------------------ tombstones


@dataclass
class Remembered:
    """What the tombstones table says of a batch: the rows to keep (late live versions dropped), and the
    side table's changes (keys whose entry goes, entries to add)."""

    kept: pa.Table
    forget: pa.Table  # key columns of the entries removed (revived keys, and tombstones moved newer)
    remember: pa.Table  # key columns and cursor of the entries added
    dropped: int


def sort_out_tombstones(data: pa.Table, remembered: pa.Table, key: tuple[str, ...],
                        cursor: str) -> Remembered:
    """Hard deletes, against the remembered tombstones (`remembered`: key columns and `__tomb`, the
    remembered cursor): a live version no newer than its key's tombstone is dropped (the key stays
    deleted); a newer one revives the key (its entry forgotten); a tombstone not remembered, or newer than
    the remembered one, is remembered."""
    keys = list(key)
    mask = pc.fill_null(data[DELETED], False)
    slim = data.select([*keys, cursor]).append_column(DELETED, mask).append_column(
        "__row", pa.array(np.arange(data.num_rows, dtype=np.int64)))
    remembered = remembered.cast(pa.schema([*(data.schema.field(k) for k in keys),
                                            pa.field("__tomb", data.schema.field(cursor).type)]))
    joined = slim.join(remembered, keys=keys, join_type="left outer").sort_by("__row")
    known = pc.is_valid(joined["__tomb"])
    is_tomb = joined[DELETED]
    newer = pc.fill_null(pc.greater(joined[cursor], joined["__tomb"]), False)
    late = pc.and_(pc.and_(pc.invert(is_tomb), known), pc.invert(newer))
    revived = pc.and_(pc.invert(is_tomb), newer)
    remember = pc.and_(is_tomb, pc.or_(pc.invert(known), newer))
    forget = joined.filter(pc.or_(revived, pc.and_(remember, known))).select(keys)
    entries = joined.filter(remember).select([*keys, cursor])
    kept = data.filter(pc.invert(late)) if count_true(late) else data
    return Remembered(kept=kept, forget=forget, remember=entries, dropped=count_true(late))


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
