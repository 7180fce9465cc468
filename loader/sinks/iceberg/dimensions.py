"""Dimension tables in the Iceberg sink: one unpartitioned table each, changed by one snapshot per load.

Each load rewrites only the data files whose key range holds one of its keys (the file-scoped
copy-on-write of the facts, loader/sinks/iceberg/files.py):
- scd2: the stored current versions the load closes (matched on key and valid_from) are written again
  with their `valid_to` and `is_current` false, the new versions added, in one snapshot: readers see the
  old versions or the new ones, never a key without its current version.
- merge: the stored rows of the load's keys (upserted or deleted) leave their files, the upserted rows
  are added.
- replace: every data file removed and the snapshot's rows added (time travel keeps the old one).
A crash before the commit leaves the table as it was; the replay compares again and writes the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg import expressions

from loader import failpoints
from loader.sinks.iceberg import catalog as cat
from loader.sinks.iceberg import files
from loader.sinks.iceberg.read_back import plain_types
from loader.sinks.schema_check import refuse_type_changes
from loader.transform.dimension_changes import (
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    DimensionChanges,
    DimensionSpec,
)


def current_rows(table: Any, spec: DimensionSpec, columns: Sequence[str] | None) -> pa.Table | None:
    """`columns` of the rows a load compares with (scd2: the current versions, filtered in the scan)."""
    if table is None:
        return None
    built: Any = expressions  # its predicates take a column name and a literal (typed more narrowly)
    selected = ("*",) if columns is None else tuple(columns)
    scan = (table.scan(selected_fields=selected, row_filter=built.EqualTo(IS_CURRENT, True))
            if spec.mode == "scd2" else table.scan(selected_fields=selected))
    rows = plain_types(scan.to_arrow())
    return rows if columns is None else rows.select(list(columns))


def closed_versions(stored: pa.Table, closes: pa.Table, key: tuple[str, ...]) -> tuple[np.ndarray, pa.Table]:
    """scd2: per stored row, whether the load closes it (its key and valid_from among `closes`', and still
    current), and those rows' new `valid_to` in stored order."""
    removed = np.zeros(stored.num_rows, dtype=bool)
    if stored.num_rows == 0 or closes.num_rows == 0:
        return removed, pa.table({VALID_TO: pa.array([], stored.schema.field(VALID_TO).type)})
    on = [*key, VALID_FROM]
    index = stored.select(on).append_column("__s", pa.array(np.arange(stored.num_rows, dtype=np.int64)))
    index = index.filter(pc.fill_null(stored[IS_CURRENT], False))
    wanted = closes.select(on).append_column("__to", closes[VALID_TO]).cast(pa.schema(
        [*(index.schema.field(c) for c in on), pa.field("__to", stored.schema.field(VALID_TO).type)]))
    matched = index.join(wanted, keys=on, join_type="inner").sort_by("__s")
    removed[matched["__s"].to_numpy()] = True
    return removed, pa.table({VALID_TO: matched["__to"]})


def changed_files(table: Any, spec: DimensionSpec, changes: DimensionChanges, schema: pa.Schema,
                  target_bytes: int) -> files.Rewrite:
    """The files of one load: those it rewrites (key ranges holding its keys) and the new ones."""
    opens = files.conform(changes.opens, schema)
    if spec.mode == "replace" or table.current_snapshot() is None:
        ranges = files.FileRanges.of(table, spec.key[0])
        done = files.Rewrite(deleted=[task.file for task in ranges.tasks] if spec.mode == "replace" else [])
        if opens.num_rows:
            done.written = files.write_files(table, opens, schema, target_bytes, None)
        return done
    first = spec.key[0]
    keys = files.sorted_keys(pa.chunked_array([*changes.opens[first].chunks, *changes.closes[first].chunks],
                                              type=changes.opens.schema.field(first).type))
    ranges = files.FileRanges.of(table, first)
    touched = ranges.touched(keys)
    stored = files.read_touched(table, ranges, touched, schema)
    if spec.mode == "merge":
        gone = pa.concat_tables([changes.opens.select(list(spec.key)),
                                 changes.closes.select(list(spec.key)).cast(changes.opens.select(
                                     list(spec.key)).schema)])
        removed = files.removed_by_keys(stored, gone, spec.key)
        additions = opens
    else:
        removed, ends = closed_versions(stored, changes.closes, spec.key)
        closed = files.conform(stored.filter(pa.array(removed)), schema)
        closed = closed.set_column(schema.get_field_index(VALID_TO), schema.field(VALID_TO),
                                   ends[VALID_TO].cast(schema.field(VALID_TO).type))
        closed = closed.set_column(schema.get_field_index(IS_CURRENT), schema.field(IS_CURRENT),
                                   pa.array(np.zeros(closed.num_rows, dtype=bool)))
        additions = pa.concat_tables([closed, opens]).sort_by([(k, "ascending") for k in spec.key])
    return files.rewrite(table, ranges, touched, stored, removed, additions, first, schema, target_bytes,
                         partitioned=False)


def apply_load(tables: cat.Tables, spec: DimensionSpec, changes: DimensionChanges) -> None:
    """One load's changes to dimension `spec.table` (made on first use, after refusing another layout or a
    changed column type), then the snapshots it keeps."""
    where = tables.where(spec.table)
    table = tables.load(spec.table)
    if table is None:
        schema = changes.opens.schema if changes.opens.num_rows else changes.closes.schema
        table = tables.create(spec.table, schema, partitioned=False, key=spec.key)
    cat.refuse_other_layout(table, where, partitioned=False, key=spec.key)
    if changes.opens.num_rows:
        refuse_type_changes(where, cat.stored_arrow_schema(table), cat.storable(changes.opens.schema),
                            cat.TYPE_FIX)
    summary = {cat.SUMMARY_PIPELINE: spec.pipeline, cat.SUMMARY_TABLE: spec.table,
               "loader.dimension": spec.mode}
    committed = apply(table, spec, changes, summary, tables.target_bytes)
    files.expire(committed, spec.table, tables.keep_snapshots)


def apply(table: Any, spec: DimensionSpec, changes: DimensionChanges, summary: dict[str, str],
          target_bytes: int) -> Any:
    """One load's changes in one transaction (new columns added first, nullable); returns the table."""
    incoming = changes.opens.schema if changes.opens.num_rows or not changes.closes.num_rows else None
    tx = table.transaction()
    done = files.Rewrite()
    try:
        schema = cat.with_new_columns(tx, table, incoming)
        done = changed_files(table, spec, changes, schema, target_bytes)
        failpoints.hit("iceberg.dimension", spec.table)
        files.commit(tx, table, done, summary, None)
    except BaseException:
        files.delete_files(table, done.written)  # nothing committed: the new files are nobody's
        raise
    return tx.commit_transaction()
