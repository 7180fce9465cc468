"""Hard deletes in the Iceberg sink: the companion table `<table>__tombstones` remembers each key's newest
tombstone (key columns and cursor, unpartitioned), since the merge removes the deleted row itself.

Before a hard-deleting batch merges (facts.py), the companion is updated in a commit of its own,
idempotent by the rule of loader/sinks/base.py: the batch's tombstones remembered, the keys a newer live
version revives forgotten; the batch's live versions no newer than their key's remembered tombstone are
dropped. It is written with the same file-scoped copy-on-write (files.py) and compacted into one file
once it holds more than `TOMBSTONE_FILES` (each of its commits adds one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow

from loader.config_parts import RetryConfig
from loader.sinks.base import DELETED, TableBatch, count_true
from loader.sinks.iceberg import catalog as cat
from loader.sinks.iceberg.files import (
    LOST_RACE,
    FileRanges,
    Rewrite,
    commit,
    conflict_filter,
    conform,
    delete_files,
    expire,
    lost_race,
    read_touched,
    redone_on_conflict,
    removed_by_keys,
    rewrite,
    sorted_keys,
    write_files,
)

log = logging.getLogger(__name__)

#: Suffix of the companion table remembering a hard-deleting table's tombstones.
TOMBSTONES_SUFFIX = "__tombstones"
#: The companion table is compacted into one file once it holds more data files than this.
TOMBSTONE_FILES = 8


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


def remember_tombstones(tables: cat.Tables, batch: TableBatch, data: pa.Table,
                        retry: RetryConfig) -> pa.Table:
    """Hard deletes: `data` without its live rows no newer than their key's remembered tombstone; the
    companion table `<table>__tombstones` updated first (the batch's tombstones remembered, revived
    keys forgotten) in one commit of its own, idempotent, or none where nothing changes. Reads only
    the companion's files whose key range holds one of the batch's keys."""
    name = batch.table + TOMBSTONES_SUFFIX
    keys, first = list(batch.key), batch.key[0]
    fields = pa.schema([data.schema.field(k) for k in keys] + [data.schema.field(batch.cursor)])
    side = tables.load(name)
    wanted = sorted_keys(data[first])
    if side is None:
        remembered = pa.table({**{k: data[k].slice(0, 0) for k in keys},
                               "__tomb": data[batch.cursor].slice(0, 0)})
        ranges, touched, stored = FileRanges(), [], None
    else:
        schema = schema_to_pyarrow(side.schema())
        ranges = FileRanges.of(side, first)
        touched = ranges.touched(wanted)
        stored = read_touched(side, ranges, touched, schema)
        remembered = stored.select([*keys, batch.cursor]).rename_columns([*keys, "__tomb"])
    sorted_out = sort_out_tombstones(data, remembered, batch.key, batch.cursor)
    if sorted_out.forget.num_rows or sorted_out.remember.num_rows:
        def commit_side() -> None:
            _commit(tables, batch, name, fields, sorted_out, wanted)

        redone_on_conflict(f"{name} -> iceberg commit", retry, commit_side)
        log.info("%s -> iceberg: %s tombstone(s) remembered, %s entr(ies) forgotten", batch.table,
                 f"{sorted_out.remember.num_rows:,}", f"{sorted_out.forget.num_rows:,}")
    del ranges, touched, stored
    if sorted_out.dropped:
        log.info("%s -> iceberg: %s live row(s) no newer than their key's delete dropped", batch.table,
                 f"{sorted_out.dropped:,}")
    return sorted_out.kept


def _commit(tables: cat.Tables, batch: TableBatch, name: str, fields: pa.Schema, sorted_out: Remembered,
            wanted: Any) -> None:
    """One try of the companion's commit, on its current metadata (made on first use)."""
    side = tables.load(name)
    if side is None:
        side = tables.create(name, fields, partitioned=False, key=batch.key)
    schema = schema_to_pyarrow(side.schema())
    first = batch.key[0]
    ranges = FileRanges.of(side, first)
    touched = ranges.touched(wanted)
    stored = read_touched(side, ranges, touched, schema)
    removed = removed_by_keys(stored, sorted_out.forget, batch.key)
    additions = conform(sorted_out.remember, schema)
    tx = side.transaction()
    done = Rewrite()
    try:
        done = rewrite(side, ranges, touched, stored, removed, additions, first, schema, tables.target_bytes,
                       partitioned=False)
        summary = cat.summary_of(batch.pipeline, batch.table, batch.run_number, cat.batch_marker(batch))
        commit(tx, side, done, summary, conflict_filter(first, wanted))
        committed = tx.commit_transaction()
    except LOST_RACE as error:
        raise lost_race(side, done.written, tables.where(name), error) from error
    except BaseException:
        delete_files(side, done.written)
        raise
    if len(ranges.tasks) - len(done.deleted) + len(done.written) > TOMBSTONE_FILES:
        committed = _compact(committed, schema, batch.key, tables.target_bytes)
    expire(committed, name, tables.keep_snapshots)


def _compact(side: Any, schema: pa.Schema, key: tuple[str, ...], target_bytes: int) -> Any:
    """The companion table's files rewritten into one (each of its commits adds one); no row changes,
    so a crash at any point leaves it right."""
    ranges = FileRanges.of(side, key[0])
    rows = conform(side.scan().to_arrow(), schema).sort_by([(k, "ascending") for k in key])
    tx = side.transaction()
    done = Rewrite(deleted=[task.file for task in ranges.tasks])
    try:
        if rows.num_rows:
            one_file = max(target_bytes, rows.nbytes + 1)
            done.written = write_files(side, rows, schema, one_file, None)
        commit(tx, side, done, {"loader.compaction": "tombstones"}, None)
        return tx.commit_transaction()
    except BaseException:
        delete_files(side, done.written)
        raise
