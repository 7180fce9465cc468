"""Dimension tables in the Parquet sink: an append-only log, like the facts' (Parquet files are never
rewritten in place).

`<table>/load-<loaded at, µs>-<id>.parquet`, one file per load that changed something, each row with
`_loaded_at` (the load's time). The table is read back as:
- scd2: per (key, valid_from), the row with the greatest `_loaded_at` (a closing record, written when
  a version is closed, carries its `valid_to` and `is_current` false and supersedes the opening one);
- merge: per key, the row with the greatest `_loaded_at`, unless that row is a deletion (`_deleted`);
- replace: the newest file alone (older files are removed once it is in place).
A file appears whole (written under a hidden name, then renamed); a crash before the rename leaves
nothing, and the replay's comparison with what the log holds writes what is missing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loader import failpoints
from loader.errors import SinkRejected
from loader.sinks.base import DELETED
from loader.storage import Location, short_error
from loader.transform.dimension_changes import (
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    DimensionChanges,
    DimensionSpec,
)

LOADED_AT = "_loaded_at"


def files(where: Location) -> list[str]:
    """The log's files, oldest first (names sort by load time)."""
    selector = pafs.FileSelector(where.path, allow_not_found=True)
    return sorted(
        f.path for f in where.filesystem.get_file_info(selector)
        if (f.type == pafs.FileType.File and f.base_name.startswith("load-")
                and f.base_name.endswith(".parquet"))
    )


def read_log(where: Location, spec: DimensionSpec, columns: Sequence[str] | None = None) -> pa.Table | None:
    """Every row of the log (replace: of the newest file), with `_loaded_at` (and merge's `_deleted`);
    `columns` of them, all when None. None if there is none."""
    paths = files(where)
    if not paths:
        return None
    if spec.mode == "replace":
        paths = paths[-1:]
    wanted = None
    if columns is not None:
        wanted = [*columns, LOADED_AT, *([DELETED] if spec.mode == "merge" else [])]
    parts = []
    for path in paths:
        try:
            with where.filesystem.open_input_file(path) as handle:
                parts.append(pq.read_table(handle, columns=wanted))
        except (OSError, pa.ArrowInvalid) as error:
            raise SinkRejected(f"cannot read {path} (Parquet dimension {spec.table}): {short_error(error)}. "
                               "Fix or remove the file") from error
    return pa.concat_tables(parts, promote_options="permissive")


def table_rows(log: pa.Table, spec: DimensionSpec) -> pa.Table:
    """The dimension table the log holds (all versions for scd2), without the log's own columns."""
    if spec.mode == "replace":
        return log.drop_columns([LOADED_AT])
    group = [*spec.key, VALID_FROM] if spec.mode == "scd2" else list(spec.key)
    numbered = log.append_column("__row", pa.array(np.arange(log.num_rows, dtype=np.int64)))
    newest = numbered.group_by(group, use_threads=False).aggregate([(LOADED_AT, "max")])
    joined = numbered.select([*group, LOADED_AT, "__row"]).join(
        newest.rename_columns([*group, LOADED_AT]), keys=[*group, LOADED_AT], join_type="inner")
    rows = log.take(np.sort(joined["__row"].to_numpy()))
    if spec.mode == "merge" and DELETED in rows.column_names:
        rows = rows.filter(pc.invert(pc.fill_null(rows[DELETED], False))).drop_columns([DELETED])
    return rows.drop_columns([LOADED_AT])


def current_rows(where: Location, spec: DimensionSpec,
                 columns: Sequence[str] | None = None) -> pa.Table | None:
    """`columns` (all when None) of the rows a load compares with (scd2: the current versions)."""
    log = read_log(where, spec, columns)
    if log is None:
        return None
    rows = table_rows(log, spec)
    if spec.mode == "scd2":
        rows = rows.filter(rows[IS_CURRENT])
    return rows


def _whole_closes(where: Location, spec: DimensionSpec, closes: pa.Table) -> pa.Table:
    """The closed versions as whole rows (a closing record repeats the version's values, so that the
    newest record per (key, valid_from) is the version): read from the log, with the new `valid_to`."""
    log = read_log(where, spec)
    assert log is not None  # a load closes only versions the log holds
    held = table_rows(log, spec).drop_columns([VALID_TO, IS_CURRENT])
    match = [*spec.key, VALID_FROM]
    whole = held.join(closes.select([*match, VALID_TO, IS_CURRENT]), keys=match, join_type="inner")
    return whole.select(held.schema.names[: held.schema.get_field_index(VALID_FROM) + 1]
                        + [VALID_TO, IS_CURRENT]
                        + held.schema.names[held.schema.get_field_index(VALID_FROM) + 1:])


def append(where: Location, spec: DimensionSpec, changes: DimensionChanges, compression: str | None) -> None:
    """One file holding the load's rows; for replace, then the older files removed."""
    older = files(where)
    _remove_hidden(where)
    if spec.mode == "replace":
        rows = changes.opens
    elif spec.mode == "merge":
        # a deletion record (`_deleted`: the key left a newer snapshot) holds the compared columns,
        # the rest null
        rows = pa.concat_tables([_flagged(changes.opens, False), _flagged(changes.closes, True)],
                                promote_options="default")
    else:
        closes = (_whole_closes(where, spec, changes.closes) if changes.closes.num_rows
                  else changes.opens.slice(0, 0))
        rows = pa.concat_tables([closes.cast(changes.opens.schema), changes.opens])
    loaded_at = time.time_ns() // 1000
    if older:  # a later name than every file there, whatever this machine's clock says
        last = int(older[-1].rsplit("/", 1)[-1].split("-")[1])
        loaded_at = max(loaded_at, last + 1)
    rows = rows.append_column(LOADED_AT, pa.array(np.full(rows.num_rows, loaded_at), pa.int64()).cast(
        pa.timestamp("us", tz="UTC")))
    name = f"load-{loaded_at:020d}-{uuid.uuid4().hex[:8]}.parquet"
    where.filesystem.create_dir(where.path, recursive=True)
    hidden = f"{where.path}/.{name}"
    with where.filesystem.open_output_stream(hidden) as stream:
        pq.write_table(rows, stream, compression=compression)
    failpoints.hit("parquet.dimension", spec.table)
    where.filesystem.move(hidden, f"{where.path}/{name}")
    if spec.mode == "replace":
        for path in older:
            where.filesystem.delete_file(path)


def _flagged(rows: pa.Table, deleted: bool) -> pa.Table:
    return rows.append_column(DELETED, pa.array(np.full(rows.num_rows, deleted)))


def _remove_hidden(where: Location) -> None:
    """Files an interrupted load left under their hidden name (never read)."""
    selector = pafs.FileSelector(where.path, allow_not_found=True)
    for info in where.filesystem.get_file_info(selector):
        if info.base_name.startswith(".load-"):
            where.filesystem.delete_file(info.path)
