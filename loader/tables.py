"""Whole-table operations on pyarrow Tables, outside the per-row transforms: one string type, the
latest row per key, and the fan-out per region. Both transform engines (CPU and GPU) share them: they
run where the rows are Arrow anyway (after reading, before the sinks)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from loader.errors import BadSourceData

#: Region of a row whose customer / supplier / nation is not in the dimensions. Such rows are kept.
UNKNOWN_REGION = "UNKNOWN"

_STRINGISH = (pa.types.is_large_string, pa.types.is_string_view)


def require_columns(columns: Sequence[str], present: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in present]
    if missing:
        raise BadSourceData(
            f"{what} is missing column(s) {missing} (it has {list(present)}); the landing zone's "
            "files must carry the TPC-H columns: fix the files or the source's path in the config"
        )


def normalize_strings(table: pa.Table) -> pa.Table:
    """Cast top-level string_view and large_string columns to plain string.

    tpchgen and some readers produce string_view, which several pyarrow kernels (take, filter on
    tables) and cuDF's Arrow import reject; one string type also keeps batch schemas identical for
    concatenation and sinks. Returns the same table object when nothing needs casting.
    """
    fields = [
        f.with_type(pa.string()) if any(check(f.type) for check in _STRINGISH) else f for f in table.schema
    ]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    if schema.equals(table.schema):
        return table
    return table.cast(schema)


def dedupe_latest(table: pa.Table, *, key: Sequence[str], cursor: str) -> pa.Table:
    """One row per `key`: the row with the greatest `cursor` wins. Output sorted by `key` ascending.

    Tie-break (same key, same cursor): the row that comes LAST in input order wins. This relies on
    `pc.sort_indices` being a stable sort: after sorting by (key..., cursor) ascending, equal rows keep
    their input order, and the last row of each key run is taken (found by comparing each sorted key
    with its successor, vectorized). Feed batches in a deterministic order (e.g. file path, then row
    order) for a reproducible winner.

    Raises BadSourceData when a key or cursor value is null: such rows cannot be deduplicated or
    checkpointed. String columns are normalized first (take rejects string_view).
    """
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
    table = normalize_strings(table)
    rows = table.num_rows
    if rows <= 1:
        return table
    sort_keys = [(name, "ascending") for name in key] + [(cursor, "ascending")]
    order = pc.sort_indices(table.select(list(dict.fromkeys([*key, cursor]))), sort_keys=sort_keys)
    sorted_keys = table.select(key).take(order)
    is_last: pa.Array | None = None
    for name in key:
        column = sorted_keys.column(name).combine_chunks()
        differs = pc.not_equal(column.slice(0, rows - 1), column.slice(1))
        is_last = differs if is_last is None else pc.or_(is_last, differs)
    assert is_last is not None
    is_last = pa.concat_arrays([is_last, pa.array([True])])
    return table.take(pc.filter(order, is_last))


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
