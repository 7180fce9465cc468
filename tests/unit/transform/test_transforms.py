"""Unit tests of loader.transform.facts: small hand-built frames, exact expected values."""

from __future__ import annotations

import datetime as dt
import pickle
from decimal import Decimal as D

import pandas as pd
import pyarrow as pa
import pytest

from loader.errors import BadSourceData, ConfigError
from loader.landing.sources import normalize_strings
from loader.transform.facts import (
    apply_region_rules,
    attach_region,
    enrich_lineitem,
    enrich_orders,
    on_table,
    output_schema,
    transform_fact,
)
from loader.transform.frames import PandasFrames
from loader.transform.lookups import Lookups
from loader.transform.region_rules import DEFAULT_REGION_RULES, RegionRule
from loader.transform.tables import dedupe_latest, split_by_region

MONEY = pa.decimal128(15, 2)
TS = pa.timestamp("us", tz="UTC")


def money(*values: str | None) -> pa.Array:
    return pa.array([None if v is None else D(v) for v in values], MONEY)


def ts(*hours: int) -> pa.Array:
    return pa.array([dt.datetime(2024, 1, 1, h, tzinfo=dt.UTC) for h in hours], TS)


def orders(n_prices: list[str | None] | None = None, **overrides: object) -> pa.Table:
    """TPC-H orders rows; strings arrive as string_view / large_string like tpchgen's."""
    prices = n_prices if n_prices is not None else ["1000.00", "2000.00", "3000.00", "4000.00"]
    n = len(prices)
    columns: dict[str, object] = {
        "o_orderkey": pa.array(range(1, n + 1), pa.int64()),
        "o_custkey": pa.array([1, 2, 3, 99] * (n // 4) + [1] * (n % 4), pa.int64()),
        "o_orderstatus": pa.array(["O"] * n, pa.string_view()),
        "o_totalprice": money(*prices),
        "o_orderdate": pa.array([dt.date(2024, 1, 1)] * n, pa.date32()),
        "o_orderpriority": pa.array(["5-LOW"] * n, pa.large_string()),
        "o_clerk": pa.array(["Clerk#000000001"] * n, pa.string_view()),
        "o_shippriority": pa.array([0] * n, pa.int32()),
        "o_comment": pa.array(["c"] * n, pa.string_view()),
        "o_updated_at": ts(*([1] * n)),
    }
    columns.update(overrides)
    return pa.table(columns)


def lineitem(n: int = 4, **overrides: object) -> pa.Table:
    columns: dict[str, object] = {
        "l_orderkey": pa.array([1] * n, pa.int64()),
        "l_partkey": pa.array([1] * n, pa.int64()),
        "l_suppkey": pa.array([1, 2, 3, 99] * (n // 4) + [1] * (n % 4), pa.int64()),
        "l_linenumber": pa.array(range(1, n + 1), pa.int32()),
        "l_quantity": money(*["1.00"] * n),
        "l_extendedprice": money(*["100.00"] * n),
        "l_discount": money(*["0.00"] * n),
        "l_tax": money(*["0.00"] * n),
        "l_returnflag": pa.array(["N"] * n, pa.string_view()),
        "l_linestatus": pa.array(["O"] * n, pa.string_view()),
        "l_shipdate": pa.array([dt.date(2024, 1, 1)] * n, pa.date32()),
        "l_commitdate": pa.array([dt.date(2024, 1, 2)] * n, pa.date32()),
        "l_receiptdate": pa.array([dt.date(2024, 1, 3)] * n, pa.date32()),
        "l_shipinstruct": pa.array(["NONE"] * n, pa.string_view()),
        "l_shipmode": pa.array(["AIR"] * n, pa.string_view()),
        "l_comment": pa.array(["c"] * n, pa.string_view()),
        "l_updated_at": ts(*([1] * n)),
    }
    columns.update(overrides)
    return pa.table(columns)


@pytest.fixture(scope="module")
def dims() -> Lookups:
    """customer 1 in GERMANY/EUROPE, 2 in ARGENTINA/AMERICA, 3 in nation 42 (not in nation); 99 absent.
    supplier 1 in EUROPE, 2 in AMERICA, 3 in ATLANTIS (region 9 absent); 99 absent."""
    customer = pa.table(
        {
            "c_custkey": pa.array([1, 2, 3], pa.int64()),
            "c_name": pa.array(["Customer#000000001", "Customer#000000002", "Ann"], pa.string_view()),
            "c_phone": pa.array(["25-989-741-2988", "11-719-748-3364", "12"], pa.string_view()),
            "c_acctbal": money("5000.00", "5000.01", "10000.01"),
            "c_nationkey": pa.array([7, 1, 42], pa.int64()),
            "c_mktsegment": pa.array(["BUILDING"] * 3, pa.string_view()),
        }
    )
    supplier = pa.table(
        {"s_suppkey": pa.array([1, 2, 3], pa.int64()), "s_nationkey": pa.array([7, 1, 5], pa.int64())}
    )
    nation = pa.table(
        {
            "n_nationkey": pa.array([1, 7, 5], pa.int64()),
            "n_name": pa.array(["ARGENTINA", "GERMANY", "ATLANTIS"], pa.large_string()),
            "n_regionkey": pa.array([1, 3, 9], pa.int64()),
        }
    )
    region = pa.table(
        {
            "r_regionkey": pa.array([0, 1, 3], pa.int64()),
            "r_name": pa.array(["AFRICA", "AMERICA", "EUROPE"], pa.string_view()),
        }
    )
    return Lookups.from_tables(customer, supplier, nation, region)


# ------------------------------------------------------------------------------------------- strings


def test_normalize_strings_casts_view_and_large_only() -> None:
    table = pa.table(
        {
            "a": pa.array(["x"], pa.string_view()),
            "b": pa.array(["y"], pa.large_string()),
            "c": pa.array(["z"], pa.string()),
            "d": pa.array([1], pa.int64()),
        }
    )
    out = normalize_strings(table)
    assert out.schema == pa.schema(
        [("a", pa.string()), ("b", pa.string()), ("c", pa.string()), ("d", pa.int64())]
    )
    assert out.to_pylist() == [{"a": "x", "b": "y", "c": "z", "d": 1}]
    assert normalize_strings(out) is out


# ------------------------------------------------------------------------------------------- orders


def test_enrich_orders_revenue_tier_boundaries_and_flags() -> None:
    prices = [
        "0.00",
        "49999.99",
        "50000.00",
        "149999.99",
        "150000.00",
        "200000.00",
        "200000.01",
        "299999.99",
        "300000.00",
        "-0.01",
        None,
    ]
    table = orders(prices)
    out = on_table(enrich_orders, normalize_strings(table))
    assert out.column("revenue_tier").to_pylist() == [
        "Small",
        "Small",
        "Medium",
        "Medium",
        "Large",
        "Large",
        "Large",
        "Large",
        "Enterprise",
        None,
        None,
    ]
    assert out.column("is_large_order").to_pylist() == [
        False,
        False,
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        False,
        None,
    ]
    assert out.column("o_totalprice").type == MONEY  # money untouched, still decimal


def test_enrich_orders_dates_and_urgency() -> None:
    table = orders(
        ["1.00"] * 5,
        o_orderdate=pa.array(
            [dt.date(1992, 1, 1), dt.date(1995, 3, 31), dt.date(1996, 4, 1), dt.date(1998, 12, 31), None],
            pa.date32(),
        ),
        o_orderpriority=pa.array(["1-URGENT", "2-HIGH", "3-MEDIUM", "5-LOW", None], pa.string_view()),
    )
    out = on_table(enrich_orders, table)
    assert out.schema.field("order_year").type == pa.int16()
    assert out.schema.field("order_quarter").type == pa.int8()
    assert out.schema.field("order_month").type == pa.int8()
    assert out.column("order_year").to_pylist() == [1992, 1995, 1996, 1998, None]
    assert out.column("order_quarter").to_pylist() == [1, 1, 2, 4, None]
    assert out.column("order_month").to_pylist() == [1, 3, 4, 12, None]
    assert out.column("is_urgent").to_pylist() == [True, True, False, False, None]


def test_enrich_orders_refuses_float_money() -> None:
    table = orders(["1.00"], o_totalprice=pa.array([1.0], pa.float64()))
    with pytest.raises(BadSourceData, match="o_totalprice.*decimal"):
        on_table(enrich_orders, table)


def test_enrich_orders_missing_column() -> None:
    with pytest.raises(BadSourceData, match="o_orderdate"):
        on_table(enrich_orders, orders().drop_columns(["o_orderdate"]))


# ----------------------------------------------------------------------------------------- lineitem


def test_enrich_lineitem_exact_decimals() -> None:
    table = lineitem(
        3,
        l_extendedprice=money("1000.10", "1234567890123.45", "0.01"),
        l_discount=money("0.05", "0.07", "0.10"),
        l_tax=money("0.08", "0.08", "0.00"),
    )
    out = on_table(enrich_lineitem, table)
    assert out.schema.field("discounted_price").type == pa.decimal128(18, 4)
    assert out.schema.field("charge").type == pa.decimal128(22, 6)
    assert out.column("discounted_price").to_pylist() == [
        D("950.0950"),
        D("1148148137814.8085"),
        D("0.0090"),
    ]
    assert out.column("charge").to_pylist() == [
        D("1026.102600"),
        D("1239999988839.993180"),
        D("0.009000"),
    ]


def test_enrich_lineitem_volume_category_boundaries_and_delay() -> None:
    quantities = ["0.00", "9.99", "10.00", "49.99", "50.00", "99.99", "100.00", "1000.00", None]
    n = len(quantities)
    table = lineitem(
        n,
        l_quantity=money(*quantities),
        l_shipdate=pa.array([dt.date(2024, 2, 27)] * (n - 1) + [None], pa.date32()),
        l_receiptdate=pa.array(
            [dt.date(2024, 3, 1), dt.date(2024, 2, 27), dt.date(2024, 2, 26)]
            + [dt.date(2025, 2, 27)] * (n - 3),
            pa.date32(),
        ),
    )
    out = on_table(enrich_lineitem, table)
    assert out.column("volume_category").to_pylist() == [
        "Low",
        "Low",
        "Medium",
        "Medium",
        "High",
        "High",
        "Bulk",
        "Bulk",
        None,
    ]
    assert out.schema.field("ship_delay_days").type == pa.int32()
    # 2024 is a leap year: Feb 27 -> Mar 1 is 3 days
    assert out.column("ship_delay_days").to_pylist() == [3, 0, -1, 366, 366, 366, 366, 366, None]


def test_enrich_lineitem_null_money_gives_null() -> None:
    out = on_table(enrich_lineitem, lineitem(1, l_discount=money(None)))
    assert out.column("discounted_price").to_pylist() == [None]
    assert out.column("charge").to_pylist() == [None]


def test_enrich_lineitem_out_of_range_is_bad_source_data() -> None:
    wide = pa.array([D("1" + "0" * 20)], pa.decimal128(25, 2))
    with pytest.raises(BadSourceData, match="l_extendedprice"):
        on_table(enrich_lineitem, lineitem(1, l_extendedprice=wide))


# ------------------------------------------------------------------------------------------- dedupe


def test_dedupe_latest_greatest_cursor_wins_sorted_by_key() -> None:
    table = pa.table(
        {
            "k": pa.array([3, 1, 2, 1, 3, 1], pa.int64()),
            "v": pa.array(["3a", "1a", "2a", "1b", "3b", "1c"], pa.string_view()),
            "at": ts(5, 2, 1, 9, 4, 3),
        }
    )
    out = dedupe_latest(table, key=["k"], cursor="at")
    assert out.column("k").to_pylist() == [1, 2, 3]
    assert out.column("v").to_pylist() == ["1b", "2a", "3a"]
    assert out.schema.field("v").type == pa.string()


def test_dedupe_latest_tie_keeps_last_occurrence_in_input_order() -> None:
    table = pa.table(
        {
            "k": pa.array([1, 1, 1, 2, 2], pa.int64()),
            "v": ["first", "second", "older", "x", "y"],
            "at": ts(5, 5, 4, 1, 1),
        }
    )
    out = dedupe_latest(table, key=["k"], cursor="at")
    assert out.to_pydict()["v"] == ["second", "y"]
    # the same rows split over chunks give the same answer
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=2))
    assert dedupe_latest(chunked, key=["k"], cursor="at").equals(out)


def test_dedupe_latest_composite_key() -> None:
    table = pa.table(
        {
            "l_orderkey": pa.array([2, 1, 1, 1, 2], pa.int64()),
            "l_linenumber": pa.array([1, 2, 1, 2, 1], pa.int32()),
            "v": ["2/1 old", "1/2 new", "1/1", "1/2 old", "2/1 new"],
            "l_updated_at": ts(1, 8, 1, 7, 2),
        }
    )
    out = dedupe_latest(table, key=["l_orderkey", "l_linenumber"], cursor="l_updated_at")
    assert out.to_pydict()["v"] == ["1/1", "1/2 new", "2/1 new"]


def test_dedupe_latest_null_key_or_cursor_is_bad_source_data() -> None:
    table = pa.table(
        {"k": pa.array([1, None, None, 4], pa.int64()), "at": pa.array([None, 1, 2, 3], pa.int64())}
    )
    with pytest.raises(BadSourceData) as info:
        dedupe_latest(table, key=["k"], cursor="at")
    message = str(info.value)
    assert "2 row(s) with a null k" in message
    assert "1 row(s) with a null at" in message
    assert "fix or remove those rows in the landing zone" in message
    # the error crosses Ray workers
    assert str(pickle.loads(pickle.dumps(info.value))) == message


def test_dedupe_latest_empty_and_single() -> None:
    empty = lineitem(0)
    out = dedupe_latest(empty, key=["l_orderkey", "l_linenumber"], cursor="l_updated_at")
    assert out.num_rows == 0
    assert out.schema == normalize_strings(empty).schema
    zero_chunks = empty.schema.empty_table()
    assert dedupe_latest(zero_chunks, key=["l_orderkey"], cursor="l_updated_at").num_rows == 0
    one = lineitem(1)
    assert dedupe_latest(one, key=["l_orderkey"], cursor="l_updated_at").num_rows == 1


# --------------------------------------------------------------------------------------- dimensions


def test_dimensions_segment_and_pickle(dims: Lookups) -> None:
    assert dims.customers.column("customer_segment").to_pylist() == ["standard", "premium", "enterprise"]
    assert dims.customers.schema.field("c_name").type == pa.string()
    copy = pickle.loads(pickle.dumps(dims))
    assert copy.customers.equals(dims.customers)
    assert copy.suppliers.equals(dims.suppliers)
    assert copy.nations.equals(dims.nations)


def test_dimensions_segment_boundaries() -> None:
    customer = pa.table(
        {
            "c_custkey": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "c_name": ["a"] * 6,
            "c_phone": ["p"] * 6,
            "c_acctbal": money("-999.99", "5000.00", "5000.01", "10000.00", "10000.01", None),
            "c_nationkey": pa.array([0] * 6, pa.int64()),
        }
    )
    empty = Lookups.empty()
    dims = Lookups.from_tables(
        customer,
        empty.suppliers.select(["s_suppkey", "s_nationkey"]),
        pa.table(
            {
                "n_nationkey": pa.array([], pa.int64()),
                "n_name": pa.array([], pa.string()),
                "n_regionkey": pa.array([], pa.int64()),
            }
        ),
        pa.table({"r_regionkey": pa.array([], pa.int64()), "r_name": pa.array([], pa.string())}),
    )
    assert dims.customers.column("customer_segment").to_pylist() == [
        "standard",
        "standard",
        "premium",
        "premium",
        "enterprise",
        None,
    ]


def test_dimensions_duplicate_key_is_bad_source_data(dims: Lookups) -> None:
    supplier = pa.table(
        {"s_suppkey": pa.array([1, 1], pa.int64()), "s_nationkey": pa.array([1, 7], pa.int64())}
    )
    nation = pa.table({"n_nationkey": [1], "n_name": ["X"], "n_regionkey": [1]})
    region = pa.table({"r_regionkey": [1], "r_name": ["AMERICA"]})
    with pytest.raises(BadSourceData, match="supplier has 1 duplicate s_suppkey"):
        Lookups.from_tables(dims.customers, supplier, nation, region)


def test_dimensions_unsorted_input_is_sorted_and_duplicates_found_anywhere(dims: Lookups) -> None:
    """A batch finds its keys by binary search, so the prepared tables are sorted by key whatever the
    file's order; a repeated key far apart in an unsorted file is still refused."""
    nation = pa.table({"n_nationkey": [1], "n_name": ["X"], "n_regionkey": [1]})
    region = pa.table({"r_regionkey": [1], "r_name": ["AMERICA"]})
    supplier = pa.table({"s_suppkey": pa.array([30, 10, 20], pa.int64()),
                         "s_nationkey": pa.array([1, 1, 1], pa.int64())})
    prepared = Lookups.from_tables(dims.customers, supplier, nation, region)
    assert prepared.suppliers.column("s_suppkey").to_pylist() == [10, 20, 30]
    repeated = pa.table({"s_suppkey": pa.array([30, 10, 20, 10], pa.int64()),
                         "s_nationkey": pa.array([1] * 4, pa.int64())})
    with pytest.raises(BadSourceData, match="supplier has 1 duplicate s_suppkey"):
        Lookups.from_tables(dims.customers, repeated, nation, region)


def test_dimensions_lookup_of_a_batch_holds_only_its_keys(dims: Lookups) -> None:
    """The lookup a batch builds holds the rows its keys reference (nulls, misses and repeats aside),
    and maps every key as the whole table's lookup does."""
    frames = PandasFrames()
    keys = pa.array([3, None, 99, 1, 3], pa.int64())
    lookup = dims.lookups(frames, "orders", keys)
    assert sorted(lookup.index.tolist()) == [1, 3]
    whole = {row["c_custkey"]: row for row in dims.customers.to_pylist()}  # the whole table's rows
    for key in (1, 3):
        got = [None if value is pd.NA else value for value in lookup.loc[key].tolist()]
        assert got == [whole[key][c] for c in lookup.columns]
    assert dims.lookups(frames, "orders", pa.array([], pa.int64())).empty


def test_attach_region_orders_keeps_order_and_unknown_rows(dims: Lookups) -> None:
    table = orders(
        ["1.00"] * 6, o_custkey=pa.array([3, 2, 99, 1, None, 2], pa.int64()), o_orderkey=pa.array(range(6))
    )
    out = on_table(attach_region, normalize_strings(table), kind="orders", dims=dims)
    assert out.column("o_orderkey").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert out.column("region").to_pylist() == [
        "UNKNOWN",
        "AMERICA",
        "UNKNOWN",
        "EUROPE",
        "UNKNOWN",
        "AMERICA",
    ]
    assert out.column("nation").to_pylist() == [None, "ARGENTINA", None, "GERMANY", None, "ARGENTINA"]
    assert out.column("c_name").to_pylist() == [
        "Ann",
        "Customer#000000002",
        None,
        "Customer#000000001",
        None,
        "Customer#000000002",
    ]
    assert out.column("c_phone").to_pylist()[1] == "11-719-748-3364"
    assert out.column("customer_segment").to_pylist() == [
        "enterprise",
        "premium",
        None,
        "standard",
        None,
        "premium",
    ]


def test_attach_region_lineitem_via_supplier(dims: Lookups) -> None:
    out = on_table(attach_region, normalize_strings(lineitem(4)), kind="lineitem", dims=dims)
    # suppliers 1, 2, 3 (nation whose region is missing), 99 (absent)
    assert out.column("nation").to_pylist() == ["GERMANY", "ARGENTINA", "ATLANTIS", None]
    assert out.column("region").to_pylist() == ["EUROPE", "AMERICA", "UNKNOWN", "UNKNOWN"]
    assert "c_name" not in out.column_names


# ------------------------------------------------------------------------------------- region rules


def test_region_rule_validation() -> None:
    rule = RegionRule("ZAR", "18.25", 0, ["c_name"])  # type: ignore[arg-type]
    assert rule.fx_rate == D("18.25") and rule.vat_rate == D("0") and rule.mask_columns == ("c_name",)
    with pytest.raises(ConfigError, match="float"):
        RegionRule("ZAR", 18.25, D("0"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decimal places"):
        RegionRule("ZAR", D("1.0000001"), D("0"))
    with pytest.raises(ConfigError, match="fraction"):
        RegionRule("EUR", D("1"), D("20"))
    with pytest.raises(ConfigError, match="> 0"):
        RegionRule("EUR", D("0"), D("0"))
    assert set(DEFAULT_REGION_RULES) == {"AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"}
    assert DEFAULT_REGION_RULES["AMERICA"] == RegionRule("USD", D("1"), D("0"))
    assert DEFAULT_REGION_RULES["EUROPE"].mask_columns == ("c_name", "c_phone")
    assert DEFAULT_REGION_RULES["EUROPE"].vat_rate == D("0.20")


RULES = {
    "EUROPE": RegionRule("EUR", D("0.5"), D("0.2"), ("c_name", "c_phone", "not_a_column")),
    "ASIA": RegionRule("JPY", D("151.5"), D("0.1")),
    "AMERICA": RegionRule("USD", D("1"), D("0")),
}


def test_apply_region_rules_values_rounding_and_masking() -> None:
    table = pa.table(
        {
            "region": ["EUROPE", "EUROPE", "ASIA", "AMERICA", "UNKNOWN", "EUROPE"],
            "o_totalprice": money("0.05", "0.15", "99999999999.99", "123.45", "10.00", None),
            "c_name": [
                "Customer#000000001",
                "Zoë Müller",
                "Customer#000000003",
                "Customer#000000004",
                "x",
                None,
            ],
            "c_phone": ["25-989-741-2988", "1234", "11-111-111-1111", "11-111-111-1112", "y", "12345"],
        }
    )
    out = on_table(apply_region_rules, table, kind="orders", rules=RULES, amount_column="o_totalprice")
    assert out.column("currency").to_pylist() == ["EUR", "EUR", "JPY", "USD", None, "EUR"]
    assert out.schema.field("fx_rate").type == pa.decimal128(18, 6)
    assert out.schema.field("vat_rate").type == pa.decimal128(6, 4)
    assert out.schema.field("amount_local").type == pa.decimal128(24, 2)
    assert out.column("fx_rate").to_pylist() == [D("0.5"), D("0.5"), D("151.5"), D("1"), None, D("0.5")]
    assert out.column("vat_rate").to_pylist() == [D("0.2"), D("0.2"), D("0.1"), D("0"), None, D("0.2")]
    # 0.025 -> 0.02 and 0.075 -> 0.08 (half to even); 15149999999998.485 -> ...48 (no float anywhere)
    assert out.column("amount_local").to_pylist() == [
        D("0.02"),
        D("0.08"),
        D("15149999999998.48"),
        D("123.45"),
        None,
        None,
    ]
    # EUROPE rows only; last 4 characters kept; same length in characters; null stays null
    assert out.column("c_name").to_pylist() == [
        "**************0001",
        "******ller",
        "Customer#000000003",
        "Customer#000000004",
        "x",
        None,
    ]
    assert out.column("c_phone").to_pylist() == [
        "***********2988",
        "1234",
        "11-111-111-1111",
        "11-111-111-1112",
        "y",
        "*2345",
    ]
    assert out.column_names[:4] == ["region", "o_totalprice", "c_name", "c_phone"]


def test_apply_region_rules_wide_amount_uses_exact_wide_product() -> None:
    # decimal128(38,2) * fx needs more than 38 digits: computed in decimal256, still exact
    table = pa.table(
        {
            "region": ["ASIA", "AMERICA"],
            "charge": pa.array([D("1000000000000.005"), D("1.005")], pa.decimal128(38, 3)),
        }
    )
    out = on_table(apply_region_rules, table, kind="lineitem", rules=RULES, amount_column="charge")
    # 151500000000000.757500 -> .76 ; 1.005 -> 1.00 (half to even)
    assert out.column("amount_local").to_pylist() == [D("151500000000000.76"), D("1.00")]


def test_apply_region_rules_without_rules_or_mask_columns() -> None:
    table = pa.table({"region": ["EUROPE"], "charge": pa.array([D("1.000000")], pa.decimal128(22, 6))})
    out = on_table(apply_region_rules, table, kind="lineitem", rules={}, amount_column="charge")
    assert out.to_pylist() == [
        {
            "region": "EUROPE",
            "charge": D("1.000000"),
            "currency": None,
            "fx_rate": None,
            "vat_rate": None,
            "amount_local": None,
        }
    ]
    # lineitem has no c_name/c_phone: the EUROPE mask is ignored, not an error
    out = on_table(apply_region_rules, table, kind="lineitem", rules=DEFAULT_REGION_RULES,
                   amount_column="charge")
    assert out.column("amount_local").to_pylist() == [D("0.92")]


def test_apply_region_rules_refuses_masking_a_non_string_column() -> None:
    table = pa.table({"region": ["EUROPE"], "o_totalprice": money("1.00"), "o_custkey": [1]})
    rules = {"EUROPE": RegionRule("EUR", D("1"), D("0"), ("o_custkey",))}
    with pytest.raises(ConfigError, match="o_custkey"):
        on_table(apply_region_rules, table, kind="orders", rules=rules, amount_column="o_totalprice")


# ------------------------------------------------------------------------------------ split and fact


def test_split_by_region() -> None:
    table = pa.table({"region": ["ASIA", "EUROPE", "ASIA", None], "v": [1, 2, 3, 4]})
    parts = split_by_region(table)
    assert list(parts) == ["ASIA", "EUROPE", "UNKNOWN"]
    assert parts["ASIA"].to_pydict() == {"region": ["ASIA", "ASIA"], "v": [1, 3]}
    assert parts["EUROPE"].column("v").to_pylist() == [2]
    assert parts["UNKNOWN"].to_pydict() == {"region": ["UNKNOWN"], "v": [4]}
    assert split_by_region(table.slice(0, 0)) == {}


def test_transform_fact_orders_end_to_end(dims: Lookups) -> None:
    out = transform_fact(
        orders(["49999.99", "50000.00", "200000.01", "300000.00"]),
        kind="orders",
        dims=dims,
        rules=DEFAULT_REGION_RULES,
    )
    assert out.schema == output_schema("orders", orders().schema)
    rows = out.select(
        ["o_custkey", "revenue_tier", "region", "currency", "amount_local", "c_name"]
    ).to_pylist()
    assert rows == [
        # customer 1: EUROPE, masked, 49999.99 * 0.92 = 45999.9908 -> 45999.99
        {
            "o_custkey": 1,
            "revenue_tier": "Small",
            "region": "EUROPE",
            "currency": "EUR",
            "amount_local": D("45999.99"),
            "c_name": "**************0001",
        },
        {
            "o_custkey": 2,
            "revenue_tier": "Medium",
            "region": "AMERICA",
            "currency": "USD",
            "amount_local": D("50000.00"),
            "c_name": "Customer#000000002",
        },
        {
            "o_custkey": 3,
            "revenue_tier": "Large",
            "region": "UNKNOWN",
            "currency": None,
            "amount_local": None,
            "c_name": "Ann",
        },
        {
            "o_custkey": 99,
            "revenue_tier": "Enterprise",
            "region": "UNKNOWN",
            "currency": None,
            "amount_local": None,
            "c_name": None,
        },
    ]


def test_transform_fact_lineitem_end_to_end(dims: Lookups) -> None:
    table = lineitem(
        2,
        l_extendedprice=money("1000.10", "1000.10"),
        l_discount=money("0.05", "0.05"),
        l_tax=money("0.08", "0.08"),
        l_suppkey=pa.array([1, 2], pa.int64()),
    )
    out = transform_fact(table, kind="lineitem", dims=dims, rules=DEFAULT_REGION_RULES)
    assert out.schema == output_schema("lineitem", lineitem().schema)
    assert out.column("charge").to_pylist() == [D("1026.102600")] * 2
    assert out.column("region").to_pylist() == ["EUROPE", "AMERICA"]
    # 1026.1026 * 0.92 = 944.014392 -> 944.01 ; USD unchanged, rounded to cents
    assert out.column("amount_local").to_pylist() == [D("944.01"), D("1026.10")]


@pytest.mark.parametrize("kind", ["orders", "lineitem"])
def test_transform_fact_is_row_local(kind: str, dims: Lookups) -> None:
    table = orders([f"{i * 37000}.{i:02d}" for i in range(12)]) if kind == "orders" else lineitem(12)
    whole = transform_fact(table, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES)  # type: ignore[arg-type]
    halves = [
        transform_fact(part, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES)  # type: ignore[arg-type]
        for part in (table.slice(0, 5), table.slice(5))
    ]
    assert pa.concat_tables(halves).equals(whole)


@pytest.mark.parametrize("kind", ["orders", "lineitem"])
@pytest.mark.parametrize("zero_chunks", [False, True])
def test_empty_tables_keep_the_output_schema(kind: str, zero_chunks: bool, dims: Lookups) -> None:
    source = orders() if kind == "orders" else lineitem()
    empty = source.schema.empty_table() if zero_chunks else source.slice(0, 0)
    expected = output_schema(kind, source.schema)  # type: ignore[arg-type]
    out = transform_fact(empty, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES)  # type: ignore[arg-type]
    assert out.num_rows == 0
    assert out.schema == expected
    full = transform_fact(source, kind=kind, dims=dims, rules=DEFAULT_REGION_RULES)  # type: ignore[arg-type]
    assert full.schema == expected
    assert split_by_region(out) == {}
    cursor = "o_updated_at" if kind == "orders" else "l_updated_at"
    assert dedupe_latest(empty, key=[source.column_names[0]], cursor=cursor).num_rows == 0


def test_output_schema_types() -> None:
    schema = output_schema("lineitem", lineitem().schema)
    assert schema.field("l_comment").type == pa.string()
    assert schema.field("discounted_price").type == pa.decimal128(18, 4)
    assert schema.field("charge").type == pa.decimal128(22, 6)
    assert schema.field("volume_category").type == pa.string()
    assert schema.field("ship_delay_days").type == pa.int32()
    assert schema.names[-6:] == ["nation", "region", "currency", "fx_rate", "vat_rate", "amount_local"]
