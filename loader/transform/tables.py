"""Whole-table operations on pyarrow Tables, outside the per-row transforms: the latest row per key
and the fan-out per region. Both transform engines (CPU and GPU) share them: they
run where the rows are Arrow anyway (after reading, before the sinks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.errors import BadSourceData
from loader.kinds import UNKNOWN_REGION
from loader.landing.sources import normalize_strings

#: TPC-H's declared money type (the landing zone's amounts; the transforms cast inputs to it, checked,
#: so that products never exceed 38 digits).
MONEY = pa.decimal128(15, 2)

def require_columns(columns: Sequence[str], present: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        raise BadSourceData(
            f"{what} is missing column(s) {missing} (it has {list(present)}); the landing zone's "
            "files must carry the TPC-H columns: fix the files or the source's path in the config"
        )


#: A per-row mask of tombstones (upstream deletes): true for a tombstone, false or null for a live row.
Tombstones: TypeAlias = np.ndarray | pa.Array | pa.ChunkedArray


def dedupe_latest(table: pa.Table, *, key: Sequence[str], cursor: str,
                  tombstones: Tombstones | None = None) -> pa.Table:
    """One row per `key`: the row with the greatest `cursor` wins. Output sorted by `key` ascending.

    Tie-break (same key, same cursor): a tombstone (`tombstones` true) beats a live row, the delete
    rule every sink follows (loader/sinks/base.py); among equals the row that comes LAST in input order
    wins, as if the rows were sorted stably by (key..., cursor, tombstone) and the last row of each key
    run taken. Feed batches in a deterministic order (e.g. file path, then row order) for a
    reproducible winner.

    Raises BadSourceData when a key or cursor value is null: such rows cannot be deduplicated or
    checkpointed. String columns are normalized first (take rejects string_view).
    """
    table = normalize_strings(table)
    order = latest_rows(table, key=key, cursor=cursor, tombstones=tombstones)
    return table if order is None else table.take(pa.array(order))


def latest_rows(table: pa.Table, *, key: Sequence[str], cursor: str,
                tombstones: Tombstones | None = None) -> np.ndarray | None:
    """The row numbers `dedupe_latest` takes, in key order, or None when that is the table as it is
    (already in key order, no key repeated): the caller takes them (the in-process executor does so in
    parts, one per transform thread). Checks and breaks ties as dedupe_latest.

    Integer keys (the usual case) are packed into one int64 and sorted alone, unstably (a SIMD sort,
    several times cheaper than a stable sort of (key, cursor)); a batch without repeated keys needs
    nothing more. Only the rows of repeated keys are then ordered by (cursor, input position)."""
    key = list(key)
    if not key:
        raise ValueError("dedupe_latest needs at least one key column")
    require_columns([*key, cursor], table.column_names, "the batch to deduplicate")
    bad = [
        (name, table.column(name).null_count)
        for name in dict.fromkeys([*key, cursor])
        if table.column(name).null_count
    ]
    if bad:
        detail = ", ".join(f"{count} row(s) with a null {name}" for name, count in bad)
        raise BadSourceData(
            f"cannot deduplicate on key {key} and cursor {cursor}: found {detail}; every row needs a "
            "key and a cursor: fix or remove those rows in the landing zone"
        )
    rows = table.num_rows
    if rows <= 1:
        return None
    dead = _tombstone_flags(tombstones, rows)
    packed = _packed_key(table, key)
    if packed is None:
        # keys that do not pack into one int64 (strings, dates, wide ranges): Arrow's stable sort
        names = list(dict.fromkeys([*key, cursor]))
        by = table.select(names).rename_columns([f"c{i}" for i in range(len(names))])
        sort_keys = [(f"c{names.index(name)}", "ascending") for name in [*key, cursor]]
        if dead is not None:  # on a tie of key and cursor the tombstone sorts last, and is taken
            by, sort_keys = by.append_column("tomb", pa.array(dead)), [*sort_keys, ("tomb", "ascending")]
        order = pc.sort_indices(by, sort_keys=sort_keys).to_numpy()
        sorted_keys = table.select(key).take(order)
        differs = None
        for name in key:
            column = sorted_keys.column(name).combine_chunks()
            step = pc.not_equal(column.slice(0, rows - 1), column.slice(1)).to_numpy(zero_copy_only=False)
            differs = step if differs is None else differs | step
        assert differs is not None
        return order[np.append(differs, True)]
    if bool((packed[1:] > packed[:-1]).all()):
        return None
    order = np.argsort(packed)
    sorted_keys = packed[order]
    repeats = sorted_keys[1:] == sorted_keys[:-1]
    if repeats.any():
        order = _latest_last(table, cursor, order, sorted_keys, repeats, dead)
        return order[np.append(~repeats, True)]
    return order


def _tombstone_flags(tombstones: Tombstones | None, rows: int) -> np.ndarray | None:
    """`tombstones` as a numpy bool per row (null: live), or None where no row is a tombstone."""
    if tombstones is None:
        return None
    if isinstance(tombstones, pa.Array | pa.ChunkedArray):
        tombstones = pc.fill_null(tombstones, False).to_numpy(zero_copy_only=False)
    flags = np.asarray(tombstones, dtype=bool)
    if len(flags) != rows:
        raise ValueError(f"dedupe_latest: {len(flags)} tombstone flags for {rows} rows")
    return flags if flags.any() else None


def _packed_key(table: pa.Table, key: Sequence[str]) -> np.ndarray | None:
    """The key columns as one int64 per row ordering like the columns (lexicographically), or None
    when a column is not an integer or their ranges together exceed int64."""
    parts = []
    span = 1
    for name in reversed(key):  # the last column varies fastest
        column = table.column(name)
        if not pa.types.is_integer(column.type):
            return None
        bounds = pc.min_max(column)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        parts.append((column, low, span))
        span *= high - low + 1
        if span > np.iinfo(np.int64).max or low < np.iinfo(np.int64).min or high > np.iinfo(np.int64).max:
            return None
    packed = None
    for column, low, scale in parts:
        values = column.to_numpy().astype(np.int64, copy=False)
        values = values - np.int64(low) if low else values  # python ints checked above: no overflow
        values = values * np.int64(scale) if scale != 1 else values
        packed = values if packed is None else packed + values
    assert packed is not None
    return packed


def _latest_last(table: pa.Table, cursor: str, order: np.ndarray, sorted_keys: np.ndarray,
                 repeats: np.ndarray, dead: np.ndarray | None = None) -> np.ndarray:
    """`order` with the rows of each repeated key put in (cursor, tombstone, input position) order, so
    the last of each key's run is the latest version (on a tie, a tombstone, then the last in input
    order), as a stable sort by (key, cursor, tombstone) would have it. Only the rows of repeated keys
    are sorted."""
    in_run = np.append(repeats, False) | np.insert(repeats, 0, False)
    slots = np.flatnonzero(in_run)
    rows = order[slots]
    tomb = np.zeros(len(rows), dtype=bool) if dead is None else dead[rows]
    cursors = table.column(cursor).take(pa.array(rows))
    within = pc.sort_indices(
        pa.table({"k": sorted_keys[slots], "c": cursors, "t": tomb, "p": rows}),
        sort_keys=[("k", "ascending"), ("c", "ascending"), ("t", "ascending"), ("p", "ascending")],
    ).to_numpy()
    order = order.copy()
    order[slots] = rows[within]  # each key's run keeps its slots (the runs are in key order)
    return order


def split_by_region(table: pa.Table) -> dict[str, pa.Table]:
    """One table per distinct `region` value, keys sorted, input row order kept within each.

    A null region (only possible when attach_region was skipped) is filed, and filled, as UNKNOWN.
    An empty table gives an empty dict.
    """
    require_columns(["region"], table.column_names, "the batch to split by region")
    region = table.column("region")
    if region.null_count:
        region = pc.fill_null(region, UNKNOWN_REGION)
        index = table.schema.get_field_index("region")
        table = table.set_column(index, "region", region)
    values = sorted(v for v in pc.unique(region).to_pylist() if v is not None)
    if len(values) == 1:
        return {values[0]: table}
    return {value: table.filter(pc.equal(region, value)) for value in values}
