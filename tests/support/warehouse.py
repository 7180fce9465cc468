"""What the sinks hold (read by tests/support/readers.py) compared with tests/support/expected.py:
every primary key exactly once, latest version wins, columns right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from tests.support.expected import expected, key_columns
from tests.support.readers import CURSOR, delta_rows, parquet_latest, parquet_versions, snowflake_rows


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


def assert_snowflake_exact(server: dict[str, Any], database: str, landing: Path) -> None:
    for table in ("orders", "lineitem"):
        assert_matches_expected(snowflake_rows(server, database, table, landing), landing, table, sink="snowflake")
