"""Reading what the sinks wrote, with plain pyarrow/deltalake/DuckDB, and comparing it to
tests/expected.py: every primary key exactly once, latest version wins, columns right."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from tests.expected import expected, key_columns

CURSOR = {"orders": "o_updated_at", "lineitem": "l_updated_at"}


def delta_rows(warehouse: Path, table: str) -> pa.Table:
    data = pa.table(DeltaTable(str(warehouse / "delta" / table)).to_pyarrow_table())
    return data.sort_by([(k, "ascending") for k in key_columns(table)])


def parquet_versions(warehouse: Path, table: str) -> pa.Table:
    """Every version row in the Parquet sink, with its hive partition values."""
    pattern = warehouse / "parquet" / table / "**" / "*.parquet"
    return duckdb.sql(f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true)").fetch_arrow_table()


def parquet_latest(warehouse: Path, table: str) -> pa.Table:
    keys = ", ".join(key_columns(table))
    pattern = warehouse / "parquet" / table / "**" / "*.parquet"
    sql = f"""SELECT * EXCLUDE (date) FROM read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)
              QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {CURSOR[table]} DESC) = 1 ORDER BY {keys}"""
    return duckdb.sql(sql).fetch_arrow_table()


def _rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    return [tuple(row[c] for c in columns) for row in table.select(columns).to_pylist()]


def assert_matches_expected(actual: pa.Table, landing: Path, table: str, *, sink: str) -> None:
    want = expected(table, landing)
    keys = key_columns(table)
    got_keys = _rows(actual, keys)
    assert len(got_keys) == len(set(got_keys)), f"{sink}/{table}: duplicated primary keys"
    assert actual.num_rows == want.num_rows, f"{sink}/{table}: {actual.num_rows} rows, expected {want.num_rows}"
    columns = want.column_names
    got, exp = _rows(actual, columns), _rows(want, columns)
    for g, e in zip(got, exp, strict=True):
        assert g == e, f"{sink}/{table}: row differs\n got      {dict(zip(columns, g, strict=True))}\n expected {dict(zip(columns, e, strict=True))}"


def assert_warehouse_exact(warehouse: Path, landing: Path, tables: tuple[str, ...] = ("orders", "lineitem")) -> None:
    """Both sinks hold exactly the latest version of every key; Parquet holds no version twice."""
    for table in tables:
        assert_matches_expected(delta_rows(warehouse, table), landing, table, sink="delta")
        assert_matches_expected(parquet_latest(warehouse, table), landing, table, sink="parquet")
        versions = _rows(parquet_versions(warehouse, table), [*key_columns(table), CURSOR[table]])
        assert len(versions) == len(set(versions)), f"parquet/{table}: a (key, cursor) version was written twice"
