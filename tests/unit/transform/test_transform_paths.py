"""The fast paths of the dedupe and of the region rules give what the plain definitions give."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from loader.transform.facts import (
    apply_region_rules,
    attach_region,
    enrich_lineitem,
    enrich_orders,
    fact_chain,
    on_table,
)
from loader.transform.frames import PandasFrames
from loader.transform.lookups import Lookups
from loader.transform.region_rules import DEFAULT_REGION_RULES, RegionRule
from loader.transform.tables import dedupe_latest, latest_rows
from tests.unit.transform.test_transforms import dims, lineitem, orders  # noqa: F401 - dims is a fixture

# ------------------------------------------------------------------------------------------- dedupe


def _by_definition(table: pa.Table, key: list[str], cursor: str) -> pa.Table:
    """Stable sort by (key..., cursor), last row of each key."""
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in [*key, cursor]]).to_pylist()
    rows = table.take(order).to_pylist()
    kept = [i for i, row in enumerate(rows)
            if i + 1 == len(rows) or any(row[k] != rows[i + 1][k] for k in key)]
    return table.take([order[i] for i in kept])


def _versions(n: int, seed: int, key_type: pa.DataType) -> pa.Table:
    rng = np.random.default_rng(seed)
    first = rng.integers(-3, 40, n)
    keys = (pa.array([f"k{v:03d}" for v in first]) if pa.types.is_string(key_type)
            else pa.array(first).cast(key_type))
    return pa.table({
        "a": keys,
        "b": pa.array(rng.integers(1, 4, n), pa.int32()),
        "at": pa.array(rng.integers(0, 4, n) * 1_000_000, pa.timestamp("us", tz="UTC")),  # many ties
        "row": pa.array(np.arange(n)),
    })


@pytest.mark.parametrize("key_type", [pa.int64(), pa.int16(), pa.string()])
@pytest.mark.parametrize("key", [["a"], ["a", "b"], ["b", "a"]])
@pytest.mark.parametrize("seed", range(5))
def test_dedupe_latest_is_the_stable_sort_definition(
    key_type: pa.DataType, key: list[str], seed: int
) -> None:
    table = _versions(300, seed, key_type)
    expected = _by_definition(table, key, "at")
    assert dedupe_latest(table, key=key, cursor="at").equals(expected)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=70))
    assert dedupe_latest(chunked, key=key, cursor="at").equals(expected)


@pytest.mark.parametrize("key_type", [pa.int64(), pa.string()])
@pytest.mark.parametrize("key", [["a"], ["a", "b"]])
@pytest.mark.parametrize("seed", range(5))
def test_a_tombstone_wins_a_tie_of_key_and_cursor(key_type: pa.DataType, key: list[str], seed: int) -> None:
    """The delete rule of every sink (loader/sinks/base.py): on a tie of key and cursor the tombstone is
    the newest version, whatever the input order; among rows alike, the last in input order. By
    definition: a stable sort by (key..., cursor, tombstone), the last row of each key."""
    table = _versions(300, seed, key_type)
    dead = np.random.default_rng(seed + 100).random(table.num_rows) < 0.3
    flagged = table.append_column("dead", pa.array(dead))
    # (cursor, tombstone) as one sort column: the cursor doubled, plus one for a tombstone
    both = pc.add(pc.multiply(flagged["at"].cast(pa.int64()), 2), pc.cast(flagged["dead"], pa.int64()))
    expected = _by_definition(flagged.append_column("at_dead", both), key, "at_dead").drop_columns("at_dead")
    with_nulls = pa.array([True if d else None for d in dead], pa.bool_())  # null: a live row
    for mask in (dead, pa.array(dead), pa.chunked_array([dead[:70], dead[70:]]), with_nulls):
        assert dedupe_latest(flagged, key=key, cursor="at", tombstones=mask).equals(expected), mask
    assert expected["dead"].to_pylist().count(True) > 0


def test_dedupe_latest_keys_too_wide_to_pack_together() -> None:
    big = 2**62
    table = pa.table({"a": pa.array([big, -big, big, 0], pa.int64()), "b": pa.array([5, 1, 5, 2], pa.int64()),
                      "at": pa.array([2, 1, 3, 1], pa.int64())})
    out = dedupe_latest(table, key=["a", "b"], cursor="at")
    assert out.to_pydict() == {"a": [-big, 0, big], "b": [1, 2, 5], "at": [1, 1, 3]}


def test_dedupe_latest_unsigned_keys_beyond_int64() -> None:
    table = pa.table({"a": pa.array([2**64 - 1, 1, 2**64 - 1], pa.uint64()),
                      "at": pa.array([1, 1, 2], pa.int64())})
    out = dedupe_latest(table, key=["a"], cursor="at")
    assert out.to_pydict() == {"a": [1, 2**64 - 1], "at": [1, 2]}


def test_a_batch_in_key_order_without_repeats_is_left_as_it_is() -> None:
    table = pa.table({"a": pa.array([1, 2, 5], pa.int64()), "at": pa.array([3, 1, 2], pa.int64())})
    assert latest_rows(table, key=["a"], cursor="at") is None
    assert dedupe_latest(table, key=["a"], cursor="at") is table
    unsorted = table.take([2, 0, 1])
    assert latest_rows(unsorted, key=["a"], cursor="at").tolist() == [1, 2, 0]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- region rules


RULES = {
    **DEFAULT_REGION_RULES,
    # masks a looked-up column (c_phone, nation), a column of the fact rows (o_clerk / l_comment), and
    # names a column no kind has
    "AMERICA": RegionRule("USD", D("1"), D("0"), ("c_phone", "nation", "o_clerk", "l_comment", "nowhere")),
}


@pytest.mark.parametrize("rules", [RULES, DEFAULT_REGION_RULES, {}])
def test_region_and_rules_together_equal_the_two_transforms_in_turn(rules: dict[str, RegionRule],
                                                                    dims: Lookups) -> None:  # noqa: F811
    b = PandasFrames()
    cases = [("orders", orders([f"{i * 37000}.{i:02d}" for i in range(12)]), enrich_orders, "o_totalprice"),
             ("lineitem", lineitem(12), enrich_lineitem, "charge")]
    for kind, table, enrich, amount in cases:
        def chain(df, b, kind=kind):
            return fact_chain(df, b, kind=kind, dims=dims, rules=rules)

        def in_turn(df, b, kind=kind, enrich=enrich, amount=amount):
            df = attach_region(enrich(df, b), b, kind=kind, dims=dims)
            return apply_region_rules(df, b, kind=kind, rules=rules, amount_column=amount)

        together = on_table(chain, table, b)
        assert together.equals(on_table(in_turn, table, b)), kind
        if rules is RULES and kind == "orders":  # the fact rows' own column is masked too
            clerks = pc.filter(together["o_clerk"], pc.equal(together["region"], "AMERICA")).to_pylist()
            assert clerks and all(c == "***********0001" for c in clerks), clerks


def test_a_rule_for_unknown_applies_to_rows_without_a_dimension_row(dims: Lookups) -> None:  # noqa: F811
    rules = {**DEFAULT_REGION_RULES, "UNKNOWN": RegionRule("XXX", D("2"), D("0"), ("c_name",))}
    out = on_table(lambda df, b: fact_chain(df, b, kind="orders", dims=dims, rules=rules), orders())
    assert out.column("region").to_pylist() == ["EUROPE", "AMERICA", "UNKNOWN", "UNKNOWN"]
    assert out.column("currency").to_pylist() == ["EUR", "USD", "XXX", "XXX"]
    assert out.column("c_name").to_pylist() == ["**************0001", "Customer#000000002", "Ann", None]


def test_labels_of_null_and_negative_values() -> None:
    table = orders([None, "-0.01", "0.00", "49999.99"],
                   o_orderdate=pa.array([dt.date(2024, 1, 1)] * 4, pa.date32()))
    out = on_table(enrich_orders, table)
    assert out.column("revenue_tier").to_pylist() == [None, None, "Small", "Small"]


def test_prepared_dimensions_pack_into_bytes_and_back_unchanged() -> None:
    """What the state store keeps of a dimension version for replays elsewhere (lookup_cache.pack)."""
    from loader.transform.lookup_cache import lookup_regions, pack, unpack

    prepared = Lookups.from_tables(
        pa.table({"c_custkey": [2, 1], "c_name": ["b", "a"], "c_phone": ["2", "1"],
                  "c_acctbal": pa.array(["1.50", "20000.00"]).cast(pa.decimal128(15, 2)),
                  "c_nationkey": [1, 0]}),
        pa.table({"s_suppkey": [5], "s_nationkey": [1]}),
        pa.table({"n_nationkey": [0, 1], "n_name": ["X", "Y"], "n_regionkey": [0, 1]}),
        pa.table({"r_regionkey": [0, 1], "r_name": ["AFRICA", "ASIA"]}))
    back = unpack(pack(prepared))
    for part in ("customers", "suppliers", "nations"):
        assert getattr(back, part).equals(getattr(prepared, part)), part
    assert len(lookup_regions(prepared)) < 2_000
