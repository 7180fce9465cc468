"""Order-independent checksums of Arrow rows, per region (`loader verify`).

    h(row)   = fold of the row's values v over the columns: h = splitmix64(h XOR v), h0 = 0
    checksum = sum of h(row) over the rows, mod 2**64, shown as 16 hex digits

where v is the value as int64 (a timestamp as microseconds since the epoch, UTC; a date as days; a
boolean as 0/1; null as the least int64), a float by its 64 bits (NaN as one value), a decimal by its
digits at its scale; other types use pandas' stable `hash_array` of their text. A sum is kept by
streaming: rows may come in any order and any number of pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from loader.sinks.base import region_counts

Digest = dict[str, tuple[int, int]]  # region -> (rows, checksum)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64 arithmetic wraps)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_uint64(column: pa.ChunkedArray) -> np.ndarray:
    kind = column.type
    if pa.types.is_timestamp(kind):  # the same instant hashes the same whatever the unit
        column = column.cast(pa.timestamp("us", tz=kind.tz), safe=False)
    elif pa.types.is_date(kind):
        column = column.cast(pa.date32()).cast(pa.int32())
    elif pa.types.is_boolean(kind):
        column = column.cast(pa.int8())
    if pa.types.is_floating(kind):  # by its bits; -0.0 as 0.0, every NaN as one
        values = np.asarray(column.cast(pa.float64()).fill_null(np.nan).to_numpy(), dtype=np.float64) + 0.0
        bits = values.view(np.uint64).copy()
        bits[np.isnan(values)] = np.uint64(0x7FF8000000000000)
        bits[np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.uint64(2**63)
        return bits
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        # null (a live row's `_deleted_at`) as the least int64: no real value is that
        return np.asarray(column.cast(pa.int64()).fill_null(-(2**63)).to_numpy()).view(np.uint64)
    import pandas as pd

    # Each distinct value hashed once (a region column holds five), then taken by its dictionary index.
    encoded = column.cast(pa.string()).combine_chunks().dictionary_encode()
    distinct = np.asarray(encoded.dictionary.to_pylist() + [None], dtype=object)
    hashed = np.asarray(pd.util.hash_array(distinct), dtype=np.uint64)
    index = np.asarray(encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return hashed[index]


def row_hashes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    hashes = np.zeros(table.num_rows, dtype=np.uint64)
    for name in columns:
        hashes = _mix(hashes ^ _as_uint64(table[name]))
    return hashes


def digest(table: pa.Table | None, columns: Sequence[str]) -> Digest:
    """Per region: row count and checksum (see the module docstring) of `columns`."""
    if table is None or table.num_rows == 0:
        return {}
    regions = table["region"].cast(pa.string()).combine_chunks().dictionary_encode()
    codes = np.asarray(regions.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    sums = np.zeros(len(regions.dictionary), dtype=np.uint64)
    np.add.at(sums, codes, row_hashes(table, columns))
    counts = np.bincount(codes, minlength=len(regions.dictionary))
    return {str(name): (int(counts[i]), int(sums[i])) for i, name in enumerate(regions.dictionary.to_pylist())}


def duplicates(table: pa.Table | None, columns: Sequence[str]) -> dict[str, int]:
    """Per region: rows beyond the first of each distinct `columns` value. Found by the rows' 64-bit
    hashes (a sort, not a group-by of every row), then confirmed exactly on the few rows whose hash
    repeats: a hash collision never counts."""
    if table is None or table.num_rows == 0:
        return {}
    narrow = table.select(["region", *columns])
    hashes = row_hashes(narrow, ["region", *columns])
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    found = {region: 0 for region in region_counts(narrow.select(["region"]))}
    if len(repeated):
        suspects = narrow.filter(pa.array(np.isin(hashes, repeated)))
        distinct = region_counts(suspects.group_by(["region", *columns]).aggregate([]))
        for region, rows in region_counts(suspects).items():
            found[region] = rows - distinct.get(region, 0)
    return found
