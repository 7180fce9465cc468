"""What the sinks hold (read by tests/support/readers.py) compared with tests/support/expected.py:
every primary key exactly once, latest version wins, columns right. Upstream deletes: a key whose
newest landed version is a tombstone is in neither Delta nor Snowflake, and the Parquet log's newest
version of it is its tombstone (`_deleted` true).

Customer changes: a fact row is enriched (region, nation, masked name and phone, segment) from the
customer snapshot its run read, and stays so until a later version of it is loaded. Where the customer
snapshot changed between runs, pass the earlier snapshots' files as `customers`: an orders row (or
tombstone) may then match the computation from one of them instead of the landing zone's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tests.support.expected import expected, expected_tombstones, key_columns
from tests.support.readers import CURSOR, delta_rows, parquet_latest, parquet_versions, snowflake_rows


def _rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    return [tuple(row[c] for c in columns) for row in table.select(columns).to_pylist()]


def assert_matches_expected(actual: pa.Table, landing: Path, table: str, *, sink: str,
                            customers: Sequence[Path] = ()) -> None:
    want = expected(table, landing)
    keys = key_columns(table)
    got_keys = _rows(actual, keys)
    assert len(got_keys) == len(set(got_keys)), f"{sink}/{table}: duplicated primary keys"
    assert actual.num_rows == want.num_rows, f"{sink}/{table}: {actual.num_rows} rows, expected {want.num_rows}"
    columns = want.column_names
    got, exp = _rows(actual, columns), _rows(want, columns)
    # The same keys in the same order whatever the customer snapshot: row i of each is the same key.
    earlier = [_rows(expected(table, landing, c), columns) for c in customers] if table == "orders" else []
    for i, (g, e) in enumerate(zip(got, exp, strict=True)):
        assert g == e or any(rows[i] == g for rows in earlier), \
            f"{sink}/{table}: row differs\n got      {dict(zip(columns, g, strict=True))}\n expected {dict(zip(columns, e, strict=True))}"


DELETED = "_deleted"


def _tombstone_rows(latest: pa.Table, table: str) -> list[tuple]:
    """Of the Parquet log's newest versions, the tombstones' key, cursor and region, in key order."""
    if DELETED not in latest.column_names:
        return []
    return _rows(latest.filter(latest[DELETED]), [*key_columns(table), CURSOR[table], "region"])


def _live(latest: pa.Table) -> pa.Table:
    """The Parquet log's newest versions that are not tombstones (all of them where none can be)."""
    if DELETED not in latest.column_names:
        return latest
    assert latest[DELETED].null_count == 0, "parquet: a version with a null _deleted"
    return latest.filter(pc.invert(latest[DELETED]))


def assert_warehouse_exact(warehouse: Path, landing: Path, tables: tuple[str, ...] = ("orders", "lineitem"), *,
                           customers: Sequence[Path] = ()) -> None:
    """Both sinks hold exactly the latest live version of every key; Parquet holds no version twice,
    and its newest version of each tombstoned key is that tombstone. `customers`: the files of earlier
    customer snapshots a run enriched facts from (see the module's doc)."""
    for table in tables:
        assert_matches_expected(delta_rows(warehouse, table), landing, table, sink="delta", customers=customers)
        latest = parquet_latest(warehouse, table)
        assert_matches_expected(_live(latest), landing, table, sink="parquet", customers=customers)
        columns = [*key_columns(table), CURSOR[table], "region"]
        want = _rows(expected_tombstones(table, landing), columns)
        earlier = [_rows(expected_tombstones(table, landing, c), columns) for c in customers] if table == "orders" else []
        got = _tombstone_rows(latest, table)
        assert len(got) == len(want) and all(g == w or any(rows[i] == g for rows in earlier)
                                             for i, (g, w) in enumerate(zip(got, want, strict=True))), \
            f"parquet/{table}: the tombstones differ"
        versions = _rows(parquet_versions(warehouse, table), [*key_columns(table), CURSOR[table]])
        assert len(versions) == len(set(versions)), f"parquet/{table}: a (key, cursor) version was written twice"


def assert_snowflake_exact(server: dict[str, Any], database: str, landing: Path, *,
                           customers: Sequence[Path] = ()) -> None:
    for table in ("orders", "lineitem"):
        assert_matches_expected(snowflake_rows(server, database, table, landing), landing, table, sink="snowflake",
                                customers=customers)


def assert_deletes_applied(warehouse: Path, landing: Path, *, snowflake: tuple[dict[str, Any], str] | None = None
                           ) -> dict[str, int]:
    """The deletes really happened: the landing zone holds keys of each fact table whose newest version
    is a tombstone, none of them is in Delta (nor in Snowflake: `(server, database)`), and the Parquet
    log's newest version of each is its tombstone. The tombstoned keys per table."""
    counts = {}
    for table in ("orders", "lineitem"):
        keys = key_columns(table)
        dead = set(_rows(expected_tombstones(table, landing), keys))
        assert dead, f"{table}: the landing zone holds no tombstone"
        held = {"delta": delta_rows(warehouse, table)}
        if snowflake:
            held["snowflake"] = snowflake_rows(*snowflake, table, landing)
        for sink, rows in held.items():
            assert not dead & set(_rows(rows, keys)), f"{sink}/{table}: a tombstoned key is still there"
        latest = parquet_latest(warehouse, table)
        assert {row[:len(keys)] for row in _tombstone_rows(latest, table)} == dead, f"parquet/{table}: tombstones"
        counts[table] = len(dead)
    return counts
