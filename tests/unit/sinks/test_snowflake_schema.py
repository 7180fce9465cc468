"""Arrow -> Snowflake types and the table DDL the sink runs: exact types (money never FLOAT), quoted
and checked identifiers, new columns added, conflicting ones refused with the fix."""

from __future__ import annotations

import pyarrow as pa
import pytest

from loader.errors import SinkRejected
from loader.sinks.snowflake.schema import ColumnType, column_type, columns_to_add, create_table_sql, ident


@pytest.mark.parametrize(("arrow", "ddl"), [
    (pa.decimal128(15, 2), "NUMBER(15,2)"),
    (pa.int64(), "NUMBER(19,0)"),
    (pa.int32(), "NUMBER(19,0)"),
    (pa.uint64(), "NUMBER(20,0)"),
    (pa.bool_(), "BOOLEAN"),
    (pa.date32(), "DATE"),
    (pa.timestamp("us", tz="UTC"), "TIMESTAMP_TZ(6)"),
    (pa.timestamp("ms"), "TIMESTAMP_NTZ(3)"),
    (pa.string(), "VARCHAR"),
    (pa.large_string(), "VARCHAR"),
    (pa.float64(), "FLOAT"),
])
def test_exact_types(arrow: pa.DataType, ddl: str) -> None:
    assert column_type(pa.field("c", arrow))[0] == ddl


def test_unmapped_type_is_refused_with_the_fix() -> None:
    with pytest.raises(SinkRejected, match="cast it in the transform"):
        column_type(pa.field("blob", pa.binary()))


def test_identifiers_are_checked_and_quoted() -> None:
    assert ident("o_orderkey") == '"O_ORDERKEY"'
    for bad in ('x"; DROP TABLE y; --', "a b", "1abc", ""):
        with pytest.raises(SinkRejected, match="not a plain identifier"):
            ident(bad)


SCHEMA = pa.schema([("id", pa.int64()), ("price", pa.decimal128(15, 2)), ("region", pa.string())])


def test_create_table_clusters_by_region_when_asked() -> None:
    sql = create_table_sql("items", SCHEMA, ("id",), cluster_by="region")
    assert sql == ('CREATE TABLE IF NOT EXISTS "ITEMS" ("ID" NUMBER(19,0), "PRICE" NUMBER(15,2), '
                   '"REGION" VARCHAR, PRIMARY KEY ("ID")) CLUSTER BY ("REGION")')
    assert "CLUSTER BY" not in create_table_sql("items", SCHEMA, ("id",), cluster_by=None)


def test_new_columns_are_added_and_compatible_ones_kept() -> None:
    existing = {"ID": ColumnType("NUMBER", 38, 0), "PRICE": ColumnType("NUMBER", 18, 2)}
    assert (columns_to_add("items", SCHEMA, existing, "DB.S")
            == ['ALTER TABLE "ITEMS" ADD COLUMN "REGION" VARCHAR'])


@pytest.mark.parametrize("have", [ColumnType("TEXT"), ColumnType("NUMBER", 15, 4),
                                  ColumnType("NUMBER", 10, 2), ColumnType("FLOAT")])
def test_conflicting_column_is_refused_naming_both_types(have: ColumnType) -> None:
    with pytest.raises(SinkRejected,
                       match=r"DB\.S\.ITEMS\.PRICE is .* but the source now sends NUMBER\(15,2\)"):
        columns_to_add("items", SCHEMA, {"ID": ColumnType("NUMBER", 19, 0), "PRICE": have}, "DB.S")
