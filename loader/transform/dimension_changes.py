"""What a dimension load changes in a sink: computed from the incoming rows and the rows the sink holds
now, so every sink is compared with itself (a sink that missed a load, after a crash, catches up; one
that has it finds nothing to do) and a replay of a load writes nothing.

Modes (`dimensions.<name>.mode`):
- scd2: each key keeps its versions. A changed row (its tracked columns' hash differs) closes the
  current version (`valid_to`, `is_current` false) and opens a new one (`valid_from`, `valid_to` null);
  an unchanged row writes nothing; a key absent from a full snapshot is closed (`missing: close`).
- merge: one row per key, upserted when its hash changed; an absent key is deleted (`missing: close`).
- replace: the table is the snapshot (rewritten only when a row differs).

The change time is the snapshot's time (full snapshots) or each row's own cursor (change files). From
change files, several versions of a key in one load are chained in cursor order, a version no newer
than the stored current one is stale (already loaded, or late: skipped and counted), and repeats of
the same values collapse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

VALID_FROM = "valid_from"
VALID_TO = "valid_to"
IS_CURRENT = "is_current"
ROW_HASH = "row_hash"
#: The columns SCD2 adds; merge and replace tables add only the hash.
HISTORY_COLUMNS = (VALID_FROM, VALID_TO, IS_CURRENT, ROW_HASH)
TIME = pa.timestamp("us", tz="UTC")

Mode = Literal["scd2", "merge", "replace"]


@dataclass(frozen=True)
class DimensionSpec:
    """A dimension table as a sink sees it."""

    pipeline: str
    table: str
    key: tuple[str, ...]
    mode: Mode


@dataclass(frozen=True)
class DimensionChanges:
    """`opens`: rows to add, whole (scd2: new versions, with their SCD2 columns; merge: rows to upsert;
    replace: the whole table). `closes`: the compared columns (`compared_columns`) of scd2's current
    versions to close, with their new `valid_to` and `is_current` false; merge: of the rows to delete;
    replace: none. `stale`: change rows no newer than the stored version (skipped)."""

    opens: pa.Table
    closes: pa.Table
    stale: int = 0

    @property
    def empty(self) -> bool:
        return self.opens.num_rows == 0 and self.closes.num_rows == 0


def compared_columns(spec: DimensionSpec, cursor: str | None) -> list[str]:
    """The stored columns `diff` needs of what a sink holds (the rest is never read for a load): the key,
    the hash, scd2's version columns, and for merge from change files the cursor."""
    columns = [*spec.key]
    if spec.mode == "scd2":
        columns += [VALID_FROM, VALID_TO, IS_CURRENT]
    elif spec.mode == "merge" and cursor is not None:
        columns.append(cursor)
    return [*columns, ROW_HASH]


def tracked_columns(columns: Sequence[str], key: Sequence[str], cursor: str | None,
                    track: Sequence[str] | None) -> list[str]:
    if track is not None:
        return list(track)
    return [c for c in columns if c not in key and c != cursor and c not in HISTORY_COLUMNS]


def row_hashes(table: pa.Table, columns: Sequence[str]) -> pa.Array:
    """A hex digest per row of `columns`' values as text (joined by \x1f, a null as \x00, so null
    differs from the empty string): stable across processes and library versions, unlike an engine's
    hash (a changed hash would make every row look changed)."""
    if table.num_rows == 0:
        return pa.array([], pa.string())
    parts = [table[c] if pa.types.is_string(table[c].type) else pc.cast(table[c], pa.string())
             for c in columns]
    if not parts:
        parts = [pa.array([""] * table.num_rows)]
    joined = pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace", null_replacement="\x00")
    digest = hashlib.blake2b
    return pa.array([digest(v, digest_size=12).hexdigest() for v in pc.cast(joined, pa.binary()).to_pylist()],
                    pa.string())


def with_hash(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    return table.append_column(ROW_HASH, row_hashes(table, columns))


def diff(incoming: pa.Table, current: pa.Table | None, spec: DimensionSpec, *, cursor: str | None,
         snapshot_time: datetime | None, missing: Literal["close", "keep"]) -> DimensionChanges:
    """The changes that bring a sink holding `current` (scd2: its current versions; else its rows;
    None: no table yet) up to `incoming` (the landing rows with `row_hash`; one row per key from a
    snapshot, versions from change files with `cursor`)."""
    if spec.mode == "replace":
        return _replace(incoming, current)
    current = _stored_shape(current, incoming, spec)
    if cursor is None:
        assert snapshot_time is not None
        return _from_snapshot(incoming, current, spec, snapshot_time, missing)
    return _from_changes(incoming, current, spec, cursor)


def _stored_shape(current: pa.Table | None, incoming: pa.Table, spec: DimensionSpec) -> pa.Table:
    if current is not None:
        return current
    return stored_schema(incoming.schema, spec.mode).empty_table()


def stored_schema(incoming: pa.Schema, mode: Mode) -> pa.Schema:
    """The sink table's columns: the landing columns, then (scd2) the version columns, then the hash."""
    fields = [f for f in incoming if f.name != ROW_HASH]
    if mode == "scd2":
        fields += [pa.field(VALID_FROM, TIME), pa.field(VALID_TO, TIME), pa.field(IS_CURRENT, pa.bool_())]
    return pa.schema([*fields, pa.field(ROW_HASH, pa.string())])


def _replace(incoming: pa.Table, current: pa.Table | None) -> DimensionChanges:
    empty = incoming.schema.empty_table()
    if current is not None and _same_rows(incoming, current):
        return DimensionChanges(empty, empty)
    return DimensionChanges(incoming, empty)


def _same_rows(incoming: pa.Table, current: pa.Table) -> bool:
    if incoming.num_rows != current.num_rows or ROW_HASH not in current.column_names:
        return False
    return sorted(incoming[ROW_HASH].to_pylist()) == sorted(current[ROW_HASH].to_pylist())


def _key_frame(table: pa.Table, key: Sequence[str], extra: Sequence[str], index: str) -> pd.DataFrame:
    frame = table.select([*key, *extra]).to_pandas(types_mapper=None)
    frame[index] = np.arange(len(frame))
    return frame


NULL_TIME = np.iinfo(np.int64).min  # a missing time among int64 microseconds


def _micros(values: pd.Series) -> np.ndarray:
    """UTC microseconds since the epoch (NULL_TIME where missing), from any timestamp column."""
    stamps = pd.to_datetime(values, utc=True)
    out = np.full(len(stamps), NULL_TIME, dtype=np.int64)
    present = stamps.notna().to_numpy()
    out[present] = (stamps[present].dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64))
    return out


def _time_array(micros: np.ndarray) -> pa.Array:
    return pa.array(micros, pa.int64(), mask=micros == NULL_TIME).cast(TIME)


def _from_snapshot(incoming: pa.Table, current: pa.Table, spec: DimensionSpec, at: datetime,
                   missing: str) -> DimensionChanges:
    key = list(spec.key)
    inc = _key_frame(incoming, key, [ROW_HASH], "_i")
    extra = [ROW_HASH, VALID_FROM] if spec.mode == "scd2" else [ROW_HASH]
    cur = _key_frame(current, key, extra, "_c")
    both = inc.merge(cur, on=key, how="outer", suffixes=("", "_cur"), indicator=True)
    new = both[both["_merge"] == "left_only"]
    changed = both[(both["_merge"] == "both") & (both[ROW_HASH] != both[f"{ROW_HASH}_cur"])]
    gone = both[both["_merge"] == "right_only"] if missing == "close" else both.iloc[0:0]
    opened = np.concatenate([new["_i"].to_numpy(), changed["_i"].to_numpy()]).astype(np.int64)
    if spec.mode == "merge":
        closed = gone["_c"].to_numpy().astype(np.int64)
        return DimensionChanges(incoming.take(opened), current.take(closed))
    moment = _micros(pd.Series([at]))[0]
    # a change time after the version it closes, whatever the snapshot's clock says: a chain never breaks
    change_at = np.maximum(_micros(changed[VALID_FROM]) + 1, moment)
    open_from = np.concatenate([np.full(len(new), moment, dtype=np.int64), change_at])
    opens = _versions(incoming.take(opened), open_from, np.full(len(opened), NULL_TIME, dtype=np.int64))
    closed = np.concatenate([changed["_c"].to_numpy(), gone["_c"].to_numpy()]).astype(np.int64)
    gone_at = np.maximum(_micros(gone[VALID_FROM]) + 1, moment)  # likewise: no version ends before it starts
    close_at = np.concatenate([change_at, gone_at]).astype(np.int64)
    return DimensionChanges(opens, _closed(current.take(closed), close_at))


def _from_changes(incoming: pa.Table, current: pa.Table, spec: DimensionSpec,
                  cursor: str) -> DimensionChanges:
    key = list(spec.key)
    inc = _key_frame(incoming, key, [ROW_HASH, cursor], "_i")
    stored_time = VALID_FROM if spec.mode == "scd2" else cursor
    cur = _key_frame(current, key, [ROW_HASH, stored_time], "_c").rename(
        columns={ROW_HASH: "_hash_cur", stored_time: "_time_cur"})
    rows = inc.merge(cur, on=key, how="left").sort_values([*key, cursor], kind="stable")
    at, stored = _micros(rows[cursor]), _micros(rows["_time_cur"])
    fresh = (stored == NULL_TIME) | (at > stored)
    stale = int((~fresh).sum())
    rows = rows[fresh]
    if spec.mode == "merge":  # the newest version per key, written if its values differ from the stored row
        newest = rows[~rows.duplicated(key, keep="last")]
        newest = newest[newest[ROW_HASH] != newest["_hash_cur"]]
        return DimensionChanges(incoming.take(newest["_i"].to_numpy().astype(np.int64)),
                                current.schema.empty_table(), stale)
    previous = rows.groupby(key, sort=False, dropna=False)[ROW_HASH].shift(1)
    previous = previous.where(previous.notna(), rows["_hash_cur"])
    rows = rows[rows[ROW_HASH] != previous]  # a repeat of the values before it is no new version
    starts = _micros(rows[cursor])
    last = ~rows.duplicated(key, keep="last").to_numpy()
    ends = np.where(last, NULL_TIME, np.roll(starts, -1)) if len(rows) else starts
    opens = _versions(incoming.take(rows["_i"].to_numpy().astype(np.int64)), starts, ends)
    first = ~rows.duplicated(key, keep="first").to_numpy() & rows["_c"].notna().to_numpy()
    closes = _closed(current.take(rows["_c"].to_numpy()[first].astype(np.int64)), starts[first])
    return DimensionChanges(opens, closes, stale)


def _versions(rows: pa.Table, valid_from: np.ndarray, valid_to: np.ndarray) -> pa.Table:
    """`rows` with their SCD2 columns (the hash is already there, last)."""
    hashes = rows[ROW_HASH]
    rows = rows.drop_columns([ROW_HASH])
    to = _time_array(valid_to)
    rows = rows.append_column(VALID_FROM, _time_array(valid_from))
    rows = rows.append_column(VALID_TO, to)
    rows = rows.append_column(IS_CURRENT, pc.is_null(to))
    return rows.append_column(ROW_HASH, hashes)


def _closed(rows: pa.Table, valid_to: np.ndarray) -> pa.Table:
    rows = rows.set_column(rows.schema.get_field_index(VALID_TO), VALID_TO, _time_array(valid_to))
    return rows.set_column(rows.schema.get_field_index(IS_CURRENT), IS_CURRENT,
                           pa.array(np.zeros(rows.num_rows, dtype=bool)))

