"""Verify's checksums (loader/audit/checksums.py): the same values hash the same however the sinks
hand them over (chunks, slices, dictionary columns, a decimal's declared scale), and different values
differ."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa

from loader.audit.checksums import digest, row_hashes


def hashes(values: pa.Array | pa.ChunkedArray) -> list[int]:
    column = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    return row_hashes(pa.table({"v": column}), ["v"]).tolist()


def test_text_hashes_ignore_how_the_column_is_laid_out() -> None:
    words = [f"comment {i} " * (i % 7) for i in range(3_000)] + [None, "", "ASIA"]
    plain = hashes(pa.array(words))
    assert hashes(pa.array(words, pa.large_string())) == plain
    assert hashes(pa.array(words).dictionary_encode()) == plain
    assert hashes(pa.chunked_array([pa.array(words[:1_000]), pa.array(words[1_000:])])) == plain
    assert hashes(pa.array(words).slice(1_234, 500)) == plain[1_234:1_734]
    assert len(set(plain)) == len(set(words))  # null, "" and every word apart


def test_text_hashes_span_many_pieces_exactly() -> None:
    """More bytes than one vectorised pass takes, and values longer than one: no seam, no difference."""
    from loader.audit import checksums

    words = [f"{i:08d}" for i in range(50_000)] + ["x" * 2_500, "x" * 2_499 + "y"]
    whole = hashes(pa.array(words))
    saved = checksums._BYTES_AT_ONCE
    checksums._BYTES_AT_ONCE = 1_000
    try:
        assert hashes(pa.array(words)) == whole
    finally:
        checksums._BYTES_AT_ONCE = saved
    assert len(set(whole)) == len(words)


def test_decimals_and_floats_differ_by_a_cent_and_read_the_same_from_any_layout() -> None:
    amounts = [Decimal("1.50"), Decimal("-1.50"), Decimal("1.51"), None, Decimal("0.00")]
    two = hashes(pa.array(amounts, pa.decimal128(24, 2)))
    assert hashes(pa.chunked_array([pa.array(amounts[:2], pa.decimal128(24, 2)),
                                    pa.array(amounts[2:], pa.decimal128(24, 2))])) == two
    assert hashes(pa.array(amounts, pa.decimal128(24, 2)).slice(1, 3)) == two[1:4]
    assert len(set(two)) == len(amounts)
    assert (hashes(pa.array([1.5, -0.0, None, float("nan")]))
            == hashes(pa.array([1.5, 0.0, None, float("nan")])))


def test_a_digest_is_the_same_over_any_order_and_split_of_the_rows() -> None:
    rows = pa.table({"k": np.arange(1_000), "region": ["ASIA", "EUROPE"] * 500,
                     "c": [f"x{i % 13}" for i in range(1_000)]})
    whole = digest(rows, ["k", "c"])
    shuffled = rows.take(np.random.default_rng(1).permutation(1_000))
    assert digest(shuffled, ["k", "c"]) == whole and set(whole) == {"ASIA", "EUROPE"}
    changed = rows.set_column(2, "c", pa.array(["y"] + rows["c"].to_pylist()[1:]))
    assert (digest(changed, ["k", "c"])["ASIA"] != whole["ASIA"]
            and digest(changed, ["k", "c"])["EUROPE"] == whole["EUROPE"])
