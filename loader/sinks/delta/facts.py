"""The Delta sink's fact table writes, each step of a part's write (sink.py runs them in order, under the
table's writer lock): the files' key ranges read from the log, the new keys split off to be appended,
the landed versions dropped, the moved keys' old rows deleted, the one scoped merge (its predicate and
clauses), the side table of a hard-deleting table's tombstones, the Parquet settings of the files
written; and the run's app id, which makes its last commit idempotent.

How it works, and why: docs/design.md, "The Delta Lake sink"."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from loader.sinks.base import DELETED, DELETED_AT, TableBatch, count_true, tombstones
from loader.sinks.encoding import dictionary_columns
from loader.storage import locate

log = logging.getLogger(__name__)


def app_id(pipeline: str, table: str, *, backfill_run: int | None = None) -> str:
    return f"{pipeline}/{table}" if backfill_run is None else f"{pipeline}/{table}/backfill-{backfill_run}"


def run_app(batch: TableBatch) -> str:
    """The app id of the batch's run: a backfill chunk has its own."""
    return app_id(batch.pipeline, batch.table,
                  backfill_run=batch.run_number if batch.mode == "backfill" else None)


#: The side table of a hard-deleting table: the tombstones it applied (or was given for keys it never
#: held), key columns and cursor, the newest per key (see the module's docstring).
TOMBSTONES = "_tombstones"
#: The side table is compacted once its folder holds more data files than this (each side commit adds one).
TOMBSTONE_FILES = 8


def _literal(value: Any) -> str:
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def open_table(uri: str, storage_options: dict[str, str] | None) -> Any:
    """The Delta table at `uri`, or None where there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return None


class KeyRanges:
    """The first key column's [min, max] of each data file of a table, from the Delta log only (no data
    file is read), to find the files a batch's keys can touch: O(files) per batch, whatever the rows."""

    def __init__(self, table: Any, first_key: str) -> None:
        actions = pa.table(table.get_add_actions(flatten=True))
        self.count = actions.num_rows
        low, high = f"min.{first_key}", f"max.{first_key}"
        present = self.count > 0 and low in actions.column_names and high in actions.column_names
        # Known: every file has both statistics (a file without them could hold any key).
        self.known = present and actions[low].null_count == 0 and actions[high].null_count == 0
        # Files are named by a unique id; the log's paths are URL-encoded (twice, for some partition
        # values), so files are matched to dataset fragments by their base name.
        self.names = [p.rsplit("/", 1)[-1] for p in actions["path"].to_pylist()]
        self.partitioned = "partition.region" in actions.column_names
        self.regions = actions["partition.region"].to_pylist() if self.partitioned else [None] * self.count
        none = np.empty(0)
        self.lows: np.ndarray = actions[low].to_numpy(zero_copy_only=False) if self.known else none
        self.highs: np.ndarray = actions[high].to_numpy(zero_copy_only=False) if self.known else none

    def touched(self, keys: np.ndarray) -> np.ndarray:
        """Per file: whether a value of `keys` (sorted) lies in its [min, max]. Unknown statistics: all."""
        if not self.known:
            return np.ones(self.count, dtype=bool)
        if len(keys) == 0:
            return np.zeros(self.count, dtype=bool)
        slot = np.searchsorted(keys, self.lows, side="left")
        return (slot < len(keys)) & (keys[np.minimum(slot, len(keys) - 1)] <= self.highs)

    def intervals(self, region: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Merged [start, end] of the files (of one region partition, when given); only when known."""
        if region is None or not self.partitioned:
            return _merged_intervals(self.lows, self.highs)
        mask = np.array([r == region for r in self.regions], dtype=bool)
        return _merged_intervals(self.lows[mask], self.highs[mask])


def _sorted_keys(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.unique(column.to_numpy(zero_copy_only=False))


def _interval_of(keys: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key, the index of the interval ([starts[i], ends[i]], sorted, disjoint) holding it,
    and whether one does."""
    slot = np.searchsorted(starts, keys, side="right") - 1
    if len(starts) == 0:
        return slot, np.zeros(len(keys), dtype=bool)
    return slot, (slot >= 0) & (keys <= ends[np.maximum(slot, 0)])


def merge_predicate(data: pa.Table, key: tuple[str, ...], ranges: KeyRanges) -> str:
    """Join on the key and region, scoped so delta-rs reads only the files the rows can match.

    Per region, the source's keys are grouped by the stored files' merged key intervals and each group
    contributes its own [min, max]: updates spread over old and new history touch a few narrow ranges,
    not one range spanning the table (which would make the merge read every file). At most one clause
    per stored interval. Without file statistics: one [min, max] per region."""
    join = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in (*key, "region"))
    first = key[0]
    scopes = []
    for region in data["region"].unique().to_pylist():
        keys = _sorted_keys(data.filter(pc.equal(data["region"], region))[first])
        groups = [(keys[0], keys[-1])]
        if ranges.known:
            slot, inside = _interval_of(keys, *ranges.intervals(region))
            # keys inside no interval of this region match nothing here (new or moved keys): inserted.
            # Keys are sorted, so each interval's keys are one contiguous run.
            keys, slot = keys[inside], slot[inside]
            cut = np.flatnonzero(np.diff(slot)) + 1
            groups = (list(zip(keys[np.r_[0, cut]], keys[np.r_[cut, len(keys)] - 1], strict=True))
                      if len(keys) else [])
        for low, high in groups:
            scopes.append(f"(t.region = {_literal(region)} AND t.{_quote(first)} BETWEEN "
                          f"{_literal(_py(low))} AND {_literal(_py(high))})")
    return f"{join} AND ({' OR '.join(scopes) or 'FALSE'})"


def with_deleted_at(batch: TableBatch) -> pa.Table:
    """Soft deletes: the rows with a null `_deleted_at` (of the cursor's type), what live rows store."""
    data = batch.data
    if batch.deletes != "soft" or DELETED_AT in data.column_names:
        return data
    return data.append_column(pa.field(DELETED_AT, data.schema.field(batch.cursor).type, nullable=True),
                              pa.nulls(data.num_rows, data.schema.field(batch.cursor).type))


def _merge_clauses(merger: Any, batch: TableBatch) -> Any:
    """The merge of a batch with deletes. Matched clauses apply in order, the first that holds wins.
    Hard: a tombstone deletes a stored version no newer than itself. Soft: it sets `_deleted_at` to its
    cursor (unless marked at that cursor or later already); a newer live version updates the row and
    revives it unless it was deleted at its cursor or later (then the mark stays: the newest version
    decides). Live versions update and insert as without deletes; tombstones are never inserted and
    `_deleted` is never stored."""
    cursor, flag = _quote(batch.cursor), f"s.{_quote(DELETED)}"
    tombstone, live = f"{flag} AND t.{cursor} <= s.{cursor}", f"NOT {flag}"
    newer = f"{live} AND s.{cursor} >= t.{cursor}"
    if batch.deletes == "hard":
        merger = merger.when_matched_delete(predicate=tombstone).when_matched_update_all(
            predicate=newer, except_cols=[DELETED])
    else:
        marked = f"t.{_quote(DELETED_AT)}"
        unmarked = f"({marked} IS NULL OR {marked} < s.{cursor})"
        merger = merger.when_matched_update(
            updates={_quote(DELETED_AT): f"s.{cursor}"}, predicate=f"{tombstone} AND {unmarked}"
        ).when_matched_update_all(
            predicate=f"{newer} AND {unmarked}", except_cols=[DELETED]
        ).when_matched_update_all(
            predicate=newer, except_cols=[DELETED, DELETED_AT])
    return merger.when_not_matched_insert_all(predicate=live, except_cols=[DELETED])


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def split_new_keys(ranges: KeyRanges, data: pa.Table, first_key: str) -> tuple[pa.Table, pa.Table]:
    """Rows whose first key lies outside every data file's [min, max] cannot match any stored
    row, in any region: they are appended. Files are clustered by key, so their ranges are narrow
    and new keys (above, or in gaps) rarely fall inside one. No data file is read, only statistics."""
    if ranges.count == 0:
        return data, data.slice(0, 0)
    if not ranges.known:
        return data.slice(0, 0), data
    _, inside = _interval_of(data[first_key].to_numpy(zero_copy_only=False), *ranges.intervals())
    if not inside.any():  # all new (a load in key order): the rows as they are, no copy
        return data, data.slice(0, 0)
    if inside.all():
        return data.slice(0, 0), data
    mask = pa.array(inside)
    return data.filter(pc.invert(mask)), data.filter(mask)


def drop_landed_versions(
    table: Any, ranges: KeyRanges, rows: pa.Table, batch: TableBatch
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Splits rows whose key may be stored (inside a file's key range) by what is stored:
    - absent: no stored row has the key: appended, no merge needed (a batch cut inside a day of
      keys that do not follow the cursor lands its new keys within the previous batch's ranges);
    - newer: the key is stored with an older version: merged;
    - rows whose key already holds this version or a newer one would change nothing in the merge
      but make it rewrite their files (the lookback re-reads the newest rows every run): dropped.
    Also returns (key, region) of stored rows whose key now arrives newer in another region (its
    customer moved): the old row must go, or the key would live in two partitions.
    Reads the key, region and cursor columns of only the files whose key range holds one of the
    rows' keys (by the log's statistics): O(files touched), not O(table), wherever in history the
    keys fall.
    Tombstones (a batch with deletes): one whose key is stored with a version no newer than its own
    (and, soft, not marked at its cursor or later) is kept, with the stored row's region, so the
    merge's region scope finds the row whatever region the tombstone carried; the others change
    nothing: dropped (those of keys not stored are returned in `absent`, where the caller drops
    them). A tombstone never counts as a key that moved."""
    empty = pa.table({**{k: rows[k].slice(0, 0) for k in batch.key},
                      "region": rows["region"].slice(0, 0)})
    if rows.num_rows == 0:
        return rows, rows, empty
    first_name = batch.key[0]
    deleted = tombstones(batch, rows)
    keys = _sorted_keys(rows[first_name])
    wanted = {name for name, hit in zip(ranges.names, ranges.touched(keys), strict=True) if hit}
    dataset = table.to_pyarrow_dataset()
    # Soft deletes: when the stored row is marked deleted (never read otherwise).
    marks = [DELETED_AT] if (deleted is not None and batch.deletes == "soft"
                             and DELETED_AT in dataset.schema.names) else []
    fragments = [f for f in dataset.get_fragments() if f.path.rsplit("/", 1)[-1] in wanted]
    landed = ds.FileSystemDataset(
        fragments, schema=dataset.schema, format=dataset.format, filesystem=dataset.filesystem
    ).to_table(columns=[*batch.key, "region", batch.cursor, *marks],
               filter=pc.field(first_name).isin(pa.array(keys, rows.schema.field(first_name).type)))
    if landed.num_rows == 0:
        return rows, rows.slice(0, 0), empty
    landed = landed.rename_columns(
        [*batch.key, "__region", "__landed", *("__marked" for _ in marks)]
    ).cast(pa.schema(
        [rows.schema.field(k) for k in batch.key]
        + [pa.field("__region", rows["region"].type), pa.field("__landed", rows[batch.cursor].type)]
        + [pa.field("__marked", rows[batch.cursor].type) for _ in marks]
    ))
    # Joined on the key columns and a row number only; the whole rows are taken once, in key order
    # (a join of whole rows, then filters and sorts, held several copies of the batch at once).
    slim = rows.select(
        [*batch.key, batch.cursor, "region", *([DELETED] if deleted is not None else [])]
    ).append_column(
        "__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    joined = slim.join(landed, keys=list(batch.key), join_type="left outer").sort_by(
        [(k, "ascending") for k in batch.key])
    stored = pc.is_valid(joined["__landed"])
    newer = pc.and_kleene(stored, pc.greater(joined[batch.cursor], joined["__landed"]))
    moving = newer
    if deleted is not None:  # a tombstone applies where the stored version is no newer than it
        tomb = pc.fill_null(joined[DELETED], False)
        applies = pc.and_kleene(stored, pc.less_equal(joined["__landed"], joined[batch.cursor]))
        if marks:  # soft: and the row is not marked deleted at the tombstone's cursor or later already
            applies = pc.and_kleene(applies,
                                    pc.or_kleene(pc.is_null(joined["__marked"]),
                                                 pc.less(joined["__marked"], joined[batch.cursor])))
        newer = pc.if_else(tomb, applies, newer)
        moving = pc.and_kleene(newer, pc.invert(tomb))
    moved = joined.filter(pc.and_kleene(moving, pc.not_equal(joined["__region"], joined["region"])))
    moved = moved.select([*batch.key, "__region"]).rename_columns([*batch.key, "region"])
    none_stored = not pc.any(stored).as_py()
    absent = (rows if none_stored  # no copy if all
              else rows.take(joined.filter(pc.invert(stored))["__row"]))
    chosen = joined.filter(newer)
    kept = rows.take(chosen["__row"])
    if deleted is not None and kept.num_rows:  # tombstones take the stored row's region
        region = pc.if_else(pc.fill_null(chosen[DELETED], False), chosen["__region"], kept["region"])
        kept = kept.set_column(kept.schema.get_field_index("region"), kept.schema.field("region"), region)
    return absent, kept, moved


def delete_moved(table: Any, moved: pa.Table, key: tuple[str, ...]) -> None:
    """Delete the old rows of keys that moved region (their own commit, idempotent: a replay finds
    the keys gone and inserts their new rows)."""
    clauses = []
    for region in moved["region"].unique().to_pylist():
        keys = moved.filter(pc.equal(moved["region"], region)).select(list(key)).to_pylist()
        match = " OR ".join("(" + " AND ".join(f"{_quote(k)} = {_literal(v[k])}" for k in key) + ")"
                            for v in keys)
        clauses.append(f"(region = {_literal(region)} AND ({match}))")
    table.delete(" OR ".join(clauses))


def add_deleted_at(table: Any, batch: TableBatch) -> None:
    """Soft deletes on a table made before them: add the nullable `_deleted_at` column (its own
    commit, once; every row stored so far is live)."""
    from deltalake import Schema

    if DELETED_AT in table.schema().to_arrow().names:
        return
    field = pa.field(DELETED_AT, batch.data.schema.field(batch.cursor).type, nullable=True)
    table.alter.add_columns(Schema.from_arrow(pa.schema([field])).fields)


def merge_rows(table: Any, rows: pa.Table, batch: TableBatch, ranges: KeyRanges,
               commit_properties: Any) -> int:
    """Merge `rows` (the part's keys that may be stored) in one commit, scoped to the files they can
    match, carrying `commit_properties` where it is the run's last. Returns the rows it deleted (hard
    deletes) or marked deleted (soft)."""
    deleted = 0
    merger = table.merge(
        rows, predicate=merge_predicate(rows, batch.key, ranges), source_alias="s", target_alias="t",
        commit_properties=commit_properties, merge_schema=True,
    )
    if batch.deletes is None:
        metrics = merger.when_matched_update_all(
            predicate=f"s.{_quote(batch.cursor)} >= t.{_quote(batch.cursor)}"
        ).when_not_matched_insert_all().execute()
    else:
        metrics = _merge_clauses(merger, batch).execute()
        marked = tombstones(batch, rows)
        # Hard: the rows the merge deleted; soft: every tombstone left here marks its row
        # (the landed versions were read just now, under the run's lease).
        deleted = (int(metrics.get("num_target_rows_deleted", 0)) if batch.deletes == "hard"
                   else count_true(marked))
    # What the merge cost: files it read and rewrote (a wide scope shows here first).
    removed = int(metrics.get("num_target_rows_deleted", 0) or 0)
    log.info("%s -> delta: merged %s updated row(s)%s, %s file(s) read, %s skipped by "
             "statistics, %s rewritten, %s row(s) copied, in %.2fs", batch.table,
             f"{metrics.get('num_target_rows_updated', 0):,}",
             f", {removed:,} deleted" if removed else "", metrics.get("num_target_files_scanned"),
             metrics.get("num_target_files_skipped_during_scan"),
             metrics.get("num_target_files_removed"),
             f"{metrics.get('num_target_rows_copied', 0):,}",
             metrics.get("execution_time_ms", 0) / 1000)
    return deleted


def remember_tombstones(batch: TableBatch, data: pa.Table, *, side_uri: str,
                        current: Callable[[str], Any], storage_options: dict[str, str] | None) -> pa.Table:
    """Hard deletes: `data` without its live rows no newer than their key's remembered tombstone;
    the side table (at `side_uri`; `current` gives the sink's up-to-date handle of it, or None) updated
    first (the part's tombstones remembered, revived keys forgotten), in one idempotent commit, or none
    where nothing changes. Reads only the side rows of `data`'s keys."""
    from deltalake import write_deltalake

    mask = tombstones(batch, data)
    if mask is None or data.num_rows == 0:
        return data
    keys, cursor = list(batch.key), batch.cursor
    side = current(side_uri)  # only this table's writer (under its lock) touches the side table
    fields = [data.schema.field(k) for k in keys] + [data.schema.field(cursor)]
    slim = data.select([*keys, cursor]).append_column(DELETED, mask).append_column(
        "__row", pa.array(np.arange(data.num_rows, dtype=np.int64)))
    if side is None:
        remembered = pa.table({**{k: data[k].slice(0, 0) for k in keys},
                               "__tomb": data[cursor].slice(0, 0)})
    else:
        first = keys[0]
        wanted = pa.array(_sorted_keys(data[first]), data.schema.field(first).type)
        remembered = side.to_pyarrow_dataset().to_table(columns=[*keys, cursor],
                                                        filter=pc.field(first).isin(wanted))
        remembered = remembered.rename_columns([*keys, "__tomb"]).cast(
            pa.schema([*fields[:-1], pa.field("__tomb", fields[-1].type)]))
    joined = slim.join(remembered, keys=keys, join_type="left outer")
    known = pc.is_valid(joined["__tomb"])
    is_tomb = joined[DELETED]
    newer = pc.and_kleene(known, pc.greater(joined[cursor], joined["__tomb"]))
    late = pc.and_kleene(pc.and_kleene(pc.invert(is_tomb), known), pc.invert(newer))  # live, <= tombstone
    revived = pc.and_kleene(pc.invert(is_tomb), newer)
    remember = pc.and_kleene(is_tomb, pc.or_kleene(pc.invert(known), newer))
    changes = joined.filter(pc.or_kleene(revived, remember)).sort_by([(k, "ascending") for k in keys])
    if changes.num_rows:
        changes = changes.select([*keys, cursor, DELETED])
        if not pc.any(pc.or_kleene(revived, pc.and_kleene(remember, known))).as_py():
            # only keys not remembered yet: appended, no side file read
            write_deltalake(side_uri, changes.drop_columns([DELETED]).cast(pa.schema(fields)),
                            mode="append", storage_options=storage_options)
        else:
            _merge_tombstones(side, changes, batch)
        log.info("%s -> delta: %s tombstone(s) remembered, %s revived key(s) forgotten", batch.table,
                 f"{count_true(remember):,}", f"{count_true(revived):,}")
        _compact_tombstones(side_uri, batch.table, storage_options)
    dropped = count_true(late)
    if not dropped:
        return data
    log.info("%s -> delta: %s live row(s) no newer than their key's delete dropped", batch.table,
             f"{dropped:,}")
    keep = np.ones(data.num_rows, dtype=bool)
    keep[joined.filter(late)["__row"].to_numpy()] = False
    return data.filter(pa.array(keep))


def _compact_tombstones(side_uri: str, table: str, storage_options: dict[str, str] | None) -> None:
    """Past TOMBSTONE_FILES data files in the side table's folder (one listing: live files, and those
    merges and compactions replaced), its small files rewritten into one and the replaced ones
    deleted. Called inside the table's writer lock. Neither changes a row, so a crash at any point
    leaves the side table right; files a crash left behind go at the next compaction."""
    from pyarrow import fs as pafs

    folder = locate(side_uri)
    listed = folder.filesystem.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    if sum(1 for f in listed if f.base_name.endswith(".parquet")) <= TOMBSTONE_FILES:
        return
    side = open_table(side_uri, storage_options)
    metrics = side.optimize.compact()
    # Lite vacuum: only the files the log removed (compacted, or rewritten by merges), never a
    # concurrent writer's uncommitted ones; at once, since the side table is read only by this
    # table's writer, under the lock, at its newest version.
    deleted = side.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
    log.info("%s -> delta: tombstone table compacted, %s file(s) into %s, %s old file(s) deleted", table,
             metrics.get("numFilesRemoved"), metrics.get("numFilesAdded"), len(deleted))


def _merge_tombstones(side: Any, changes: pa.Table, batch: TableBatch) -> None:
    """One commit to the side table: tombstones inserted or moved to a newer cursor, the entries of
    revived keys (a live version newer than the tombstone) removed; scoped to the changes' key range."""
    keys, cursor, flag = list(batch.key), _quote(batch.cursor), f"s.{_quote(DELETED)}"
    first = keys[0]
    low, high = pc.min(changes[first]).as_py(), pc.max(changes[first]).as_py()
    join = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
    predicate = f"{join} AND t.{_quote(first)} BETWEEN {_literal(low)} AND {_literal(high)}"
    newer = f"s.{cursor} > t.{cursor}"
    inserted = {_quote(c): f"s.{_quote(c)}" for c in [*keys, batch.cursor]}
    side.merge(changes, predicate=predicate, source_alias="s", target_alias="t").when_matched_delete(
        predicate=f"NOT {flag} AND {newer}"
    ).when_matched_update(
        updates={cursor: f"s.{cursor}"}, predicate=f"{flag} AND {newer}"
    ).when_not_matched_insert(
        updates=inserted, predicate=flag
    ).execute()


def writer_properties(data: pa.Table) -> Any:
    """delta-rs's Parquet settings for `data`: a dictionary only for the columns that repeat their
    values (loader/sinks/encoding.py), and snappy, the codec delta-rs uses without settings (a
    `WriterProperties` without a codec writes uncompressed files)."""
    from deltalake import ColumnProperties, WriterProperties

    dictionary = set(dictionary_columns(data))
    return WriterProperties(compression="SNAPPY", column_properties={
        name: ColumnProperties(dictionary_enabled=name in dictionary) for name in data.column_names})


def _merged_intervals(lows: np.ndarray, highs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, non-overlapping [start, end] covering the given intervals."""
    order = np.argsort(lows, kind="stable")
    starts: list = []
    ends: list = []
    for lo, hi in zip(lows[order], highs[order], strict=True):
        if starts and lo <= ends[-1]:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return np.array(starts), np.array(ends)
