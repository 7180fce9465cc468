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

Here the merge's rule (`decide`), one try of a batch's commit (`merge`) and the batch's write around it
(`write_batch`); the file-level steps are files.py's, the tombstones table tombstones.py's.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import ValidationException

from loader import failpoints
from loader.config_parts import RetryConfig
from loader.sinks.base import DELETED, DELETED_AT, PartWrite, TableBatch, count_true, region_counts
from loader.sinks.iceberg import catalog as cat
from loader.sinks.iceberg.files import (
    FILE_COLUMN,
    ROW_COLUMN,
    FileRanges,
    Rewrite,
    commit,
    commit_transaction,
    conflict_filter,
    conform,
    delete_files,
    expire,
    lost_race,
    read_touched,
    redone_on_conflict,
    rewrite,
    sorted_keys,
    write_new_files,
)
from loader.sinks.iceberg.tombstones import remember_tombstones
from loader.sinks.schema_check import refuse_type_changes

log = logging.getLogger(__name__)

#: The fewest stored rows a merge reads in one group of files (more where the batch is larger).
GROUP_MIN_ROWS = 250_000


# -------------------------------------------------------------------------------------------- the rule


@dataclass
class Decision:
    """What a batch does to the rows of the files it touches."""

    removed: np.ndarray  # per stored row (in `read_touched`'s order): leaves its file
    additions: pa.Table  # rows to write: inserted, replaced, marked (the write schema's columns)
    rows: int  # live versions written (inserted or replacing an older one)
    regions: dict[str, int]  # those per region
    deleted: int  # keys removed (hard) or marked (soft)
    found: np.ndarray  # per batch row: its key is among the stored rows


def decide(batch_rows: pa.Table, stored: pa.Table, key: tuple[str, ...], cursor: str,
           deletes: str | None, schema: pa.Schema, *, inserts: bool = True) -> Decision:
    """The merge of `batch_rows` (one row per key; `_deleted` where the source has deletes) into the
    `stored` rows of the touched files (with `__file`, `__row`), by the rule of loader/sinks/base.py
    (without `inserts`, the keys stored nowhere among these rows are left out: the caller merges the
    stored rows a group of files at a time and inserts what no group stored):
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
    landed = stored.select([*keys, cursor, *([DELETED_AT] if marks else []), FILE_COLUMN, ROW_COLUMN])
    landed = landed.rename_columns([*keys, "__landed", *(["__marked"] if marks else []), FILE_COLUMN,
                                    ROW_COLUMN])
    landed = landed.append_column("__s", pa.array(np.arange(stored.num_rows, dtype=np.int64)))
    at = slim.schema.field(cursor).type  # compared with the batch's cursor: its type
    landed = landed.cast(pa.schema([
        *(slim.schema.field(k) for k in keys), pa.field("__landed", at),
        *([pa.field("__marked", at)] if marks else []),
        *(f for f in landed.schema if f.name in (FILE_COLUMN, ROW_COLUMN, "__s"))]))
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

    written = pc.or_(inserted, replaced) if inserts else replaced
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
    # In the batch's order (sorted by key) unless marked stored rows joined them.
    result = (additions[0] if len(additions) == 1
              else pa.concat_tables(additions).sort_by([(k, "ascending") for k in keys]))
    return Decision(removed=removed, additions=result, rows=taken.num_rows, regions=region_counts(taken),
                    deleted=count_true(applies), found=is_stored.to_numpy(zero_copy_only=False))


def inserted(batch_rows: pa.Table, found: np.ndarray, schema: pa.Schema) -> pa.Table:
    """The batch's live rows whose key no touched file stores: inserted as they are (a tombstone of a key
    stored nowhere changes nothing). No join: a first load's or new keys' rows are only conformed."""
    keep = ~found
    if DELETED in batch_rows.column_names:
        keep &= ~pc.fill_null(batch_rows[DELETED], False).to_numpy(zero_copy_only=False)
    rows = batch_rows if keep.all() else batch_rows.filter(pa.array(keep))
    return conform(rows, schema)


def merge_files(table: Any, ranges: FileRanges, touched: list[int], data: pa.Table, batch: TableBatch,
                schema: pa.Schema, target_bytes: int) -> tuple[Rewrite, Decision]:
    """The batch merged into the files it touches a group at a time: each group's stored rows read,
    decided against the batch's rows in its files' ranges, its files rewritten; the rows no group
    stored are inserted last, in new files. One group's stored rows are in memory at a time (about as
    many rows as the batch), never the table's, whatever share of it the batch touches."""
    first = batch.key[0]
    values = data[first].to_numpy(zero_copy_only=False)
    found = np.zeros(data.num_rows, dtype=bool)
    done, rest = Rewrite(), []
    rows, deleted, regions = 0, 0, Counter[str]()
    for group in ranges.groups(touched, max(data.num_rows, GROUP_MIN_ROWS)):
        inside = ranges.holding(group, values)
        part = data if inside.all() else data.filter(pa.array(inside))
        stored = read_touched(table, ranges, group, schema)
        decision = decide(part, stored, batch.key, batch.cursor, batch.deletes, schema, inserts=False)
        found[np.flatnonzero(inside)[decision.found]] = True
        group_done = rewrite(table, ranges, group, stored, decision.removed, decision.additions, first,
                             schema, target_bytes, partitioned=True, place_rest=False)
        done.add(group_done)
        if group_done.rest is not None and group_done.rest.num_rows:
            rest.append(group_done.rest)
        rows, deleted = rows + decision.rows, deleted + decision.deleted
        regions.update(decision.regions)
        del stored, decision, group_done, part
    new = inserted(data, found, schema)
    regions.update(region_counts(new))
    done.written += write_new_files(table, pa.concat_tables([*rest, new]) if rest else new, first, schema,
                                    target_bytes, partitioned=True)
    return done, Decision(removed=np.zeros(0, dtype=bool), additions=schema.empty_table(),
                          rows=rows + new.num_rows, regions=dict(regions), deleted=deleted, found=found)


# ------------------------------------------------------------------------------------------- the write


def write_batch(tables: cat.Tables, batch: TableBatch, data: pa.Table, retry: RetryConfig) -> PartWrite:
    """The batch's rows (every part's, sorted by key) merged in one commit carrying the run's marker, tried
    again on fresh metadata while it loses to a concurrent writer. Hard deletes update the tombstones
    table first; soft deletes store `_deleted_at`."""
    data = with_deleted_at(batch, data)
    if batch.deletes == "hard" and data.num_rows:
        data = remember_tombstones(tables, batch, data, retry)
    return redone_on_conflict(f"{batch.table} -> iceberg commit", retry, lambda: merge(tables, batch, data))


def merge(tables: cat.Tables, batch: TableBatch, data: pa.Table) -> PartWrite:
    """One try of the batch's commit, on the table's current metadata: the touched files found, read,
    decided and rewritten, then one transaction (schema, marker, snapshot). A lost race raises
    `CommitConflict` (its files removed); the retry computes it all again."""
    where = tables.where(batch.table)
    marker = cat.batch_marker(batch)
    live = data.drop_columns([DELETED]) if DELETED in data.column_names else data
    table = tables.load(batch.table)
    if table is None:  # the first part of the table's first run creates it
        table = tables.create(batch.table, live.schema, partitioned=True, key=batch.key)
    cat.refuse_other_layout(table, where, partitioned=True, key=batch.key)
    if cat.landed(table.properties, cat.summaries(table), marker, batch.run_number, replay=True,
                  where=where):
        return PartWrite(0)  # landed meanwhile (a concurrent attempt of this run won the race)
    refuse_type_changes(where, cat.stored_arrow_schema(table), cat.storable(live.schema), cat.TYPE_FIX)
    tx = table.transaction()
    done = Rewrite()
    try:
        schema = cat.with_new_columns(tx, table, live.schema)
        first = batch.key[0]
        keys = sorted_keys(data[first])
        ranges = FileRanges.of(table, first)
        touched = ranges.touched(keys)
        done, decision = merge_files(table, ranges, touched, data, batch, schema, tables.target_bytes)
        failpoints.hit("iceberg.write", batch.table)
        tx.set_properties({cat.marker_property(marker): str(batch.run_number)})
        summary = cat.summary_of(batch.pipeline, batch.table, batch.run_number, marker)
        commit(tx, table, done, summary, conflict_filter(first, keys))
    except ValidationException as error:
        raise lost_race(table, done.written, where, error,
                        "a concurrent commit touched this batch's keys") from error
    except BaseException:
        delete_files(table, done.written)  # nothing committed: the new files are nobody's
        raise
    committed = commit_transaction(tx, table, done.written, where)
    log.info("%s -> iceberg: %s row(s) written, %s deleted, %s of %s file(s) read, %s rewritten, %s new "
             "file(s)", batch.table, f"{decision.rows:,}", f"{decision.deleted:,}", len(touched),
             len(ranges.tasks), len(done.deleted), len(done.written))
    expire(committed, batch.table, tables.keep_snapshots)
    return PartWrite(decision.rows, decision.regions, deleted=decision.deleted)


def with_deleted_at(batch: TableBatch, data: pa.Table) -> pa.Table:
    """Soft deletes: the rows with a null `_deleted_at` (of the cursor's type), what live rows store."""
    if batch.deletes != "soft" or DELETED_AT in data.column_names:
        return data
    kind = data.schema.field(batch.cursor).type
    return data.append_column(pa.field(DELETED_AT, kind, nullable=True), pa.nulls(data.num_rows, kind))
