"""Order-independent checksums of Arrow rows, per region (`loader verify`).

    h(row)   = splitmix64(fold of the row's values v over the columns: h = h * F + v, h0 = 0; F odd)
    checksum = sum of h(row) over the rows, mod 2**64, shown as 16 hex digits

where v is the value as int64 (a timestamp as microseconds since the epoch, UTC; a date as days; a
boolean as 0/1; null as the least int64), a float by its 64 bits (NaN as one value), a decimal by its
unscaled digits, text and bytes by a polynomial hash of their bytes (`_text_hashes`), other types by
their text; a null of those as 2**63. A dictionary column hashes each distinct
value once. The sum streams: rows may come in any order and any number of pieces.
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
    if (pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_integer(kind)
            or pa.types.is_boolean(kind)):
        # null (a live row's `_deleted_at`) as the least int64: no real value is that
        return np.asarray(column.cast(pa.int64()).fill_null(-(2**63)).to_numpy()).view(np.uint64)
    if pa.types.is_decimal(kind) and isinstance(kind, pa.Decimal128Type):
        return _decimal_words(column)
    if pa.types.is_dictionary(kind):  # each distinct value hashed once, then taken by its index
        combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        hashed = np.append(_as_uint64(pa.chunked_array([combined.dictionary])), np.uint64(_NULL))
        index = combined.indices.fill_null(len(hashed) - 1).to_numpy(zero_copy_only=False)
        return hashed[np.asarray(index, dtype=np.int64)]
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        column = column.cast(pa.string())  # a decimal256, a time, ...: by its text
    return _text_hashes(column)


#: The hash of a null that is not a number (text, decimals, floats).
_NULL = 2**63
#: A string's hash is its bytes read as a polynomial in R (mod 2**64): sum of byte[k] * R**k, then mixed
#: with its length. Computed for many strings at once from prefix sums over the bytes they sit in:
#: P[i] = sum of byte[j] * R**j for j < i, so a string at [s, e) is (P[e] - P[s]) * R**-s (R is odd, so
#: it has an inverse mod 2**64). Three passes over the bytes, no Python object per value.
_R = 0x9E3779B97F4A7C15 | 1
#: Bytes hashed at once; the power tables hold as many entries (8 MiB each).
_BYTES_AT_ONCE = 1 << 20
_POWERS: tuple[np.ndarray, np.ndarray] | None = None


def _powers() -> tuple[np.ndarray, np.ndarray]:
    """(R**j, R**-j) for j up to `_BYTES_AT_ONCE` (made once per process)."""
    global _POWERS
    if _POWERS is None or len(_POWERS[0]) <= _BYTES_AT_ONCE:
        size = max(_BYTES_AT_ONCE + 1, 2)
        up = np.full(size, _R, dtype=np.uint64)
        down = np.full(size, pow(_R, -1, 2**64), dtype=np.uint64)
        up[0] = down[0] = 1
        _POWERS = (np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64))
    return _POWERS


def _text_hashes(column: pa.ChunkedArray) -> np.ndarray:
    """Per value, a 64-bit hash of its bytes (see `_R`)."""
    up, down = _powers()
    out = []
    for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
        chunk = chunk.cast(pa.large_binary())
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1],
                                dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = chunk.buffers()[2]
        data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        hashes = np.zeros(len(chunk), dtype=np.uint64)
        first = 0
        while first < len(chunk):  # the rows whose bytes fit in one go (a longer value goes alone, in steps)
            last = min(len(chunk), max(first + 1, int(np.searchsorted(offsets,
                                                                      offsets[first] + _BYTES_AT_ONCE,
                                                                      "right")) - 1))
            if offsets[last] - offsets[first] > _BYTES_AT_ONCE:  # one value longer than a go
                hashes[first] = _long_text(data[offsets[first]:offsets[first + 1]], up, down)
            else:
                start = offsets[first]
                piece = data[start:offsets[last]].astype(np.uint64)
                prefix = np.zeros(len(piece) + 1, dtype=np.uint64)
                np.cumsum(piece * up[:len(piece)], dtype=np.uint64, out=prefix[1:])
                begins, ends = offsets[first:last] - start, offsets[first + 1:last + 1] - start
                hashes[first:last] = (prefix[ends] - prefix[begins]) * down[begins]
            first = last
        hashes = _mix(hashes ^ _mix(lengths.astype(np.uint64)))
        if chunk.null_count:
            hashes[np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.uint64(_NULL)
        out.append(hashes)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def _long_text(data: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.uint64:
    """`_text_hashes`' polynomial of one value longer than `_BYTES_AT_ONCE`, a go at a time."""
    total, shift = np.uint64(0), np.uint64(1)
    step = min(_BYTES_AT_ONCE, len(up) - 1)
    with np.errstate(over="ignore"):  # numpy scalars warn where arrays wrap silently: wrapping is meant
        for at in range(0, len(data), step):
            piece = data[at:at + step].astype(np.uint64)
            total += np.sum(piece * up[:len(piece)], dtype=np.uint64) * shift
            shift *= up[step]
    return total


def _decimal_words(column: pa.ChunkedArray) -> np.ndarray:
    """A decimal by its unscaled digits (its two 64-bit words, mixed): every sink hands a column back
    at the scale it was written with."""
    out = []
    for chunk in (column.chunks if isinstance(column, pa.ChunkedArray) else [column]):
        if len(chunk) == 0:
            continue
        words = np.frombuffer(chunk.buffers()[1],
                              dtype=np.uint64)[2 * chunk.offset:2 * (chunk.offset + len(chunk))]
        hashes = _mix(words[0::2]) ^ words[1::2]
        if chunk.null_count:
            hashes[np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.uint64(_NULL)
        out.append(hashes)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


#: The odd multiplier folding a row's values: h = h * _FOLD + v over the columns, mixed once at the end.
#: A change to any one value changes h (an odd number times a non-zero difference is non-zero mod 2**64).
_FOLD = np.uint64(0xD6E8FEB86659FD93)


def row_hashes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    hashes = np.zeros(table.num_rows, dtype=np.uint64)
    for name in columns:
        hashes *= _FOLD
        hashes += _as_uint64(table[name])
    return _mix(hashes)


def digest(table: pa.Table | None, columns: Sequence[str]) -> Digest:
    """Per region: row count and checksum (see the module docstring) of `columns`."""
    if table is None or table.num_rows == 0:
        return {}
    regions = table["region"].cast(pa.string()).combine_chunks().dictionary_encode()
    codes = np.asarray(regions.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    sums = np.zeros(len(regions.dictionary), dtype=np.uint64)
    np.add.at(sums, codes, row_hashes(table, columns))
    counts = np.bincount(codes, minlength=len(regions.dictionary))
    return {str(name): (int(counts[i]), int(sums[i]))
            for i, name in enumerate(regions.dictionary.to_pylist())}


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


def add_digest(total: Digest, part: Digest) -> None:
    """`part`'s counts and checksums added to `total`'s, per region (the sum streams)."""
    for region, (rows, checksum) in part.items():
        before_rows, before_sum = total.get(region, (0, 0))
        total[region] = (before_rows + rows, (before_sum + checksum) % (1 << 64))
