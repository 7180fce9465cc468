"""What the sinks hold (read by tests/support/readers.py) compared with tests/support/expected.py:
every primary key exactly once, latest version wins, every column equal. Upstream deletes: a key whose
newest landed version is a tombstone is in neither Delta nor Snowflake, and the Parquet log's newest
version of it is its tombstone (`_deleted` true: key, cursor and region, nulls elsewhere).

Every column a sink stores is compared, after one normalization: each column is cast to the expected
type, safely (a value the cast would change is a difference), from the same family of types only
(decimals stay decimal, never float; Snowflake's NUMBER(p,0) stands for an integer column; timestamps
compare as instants, whatever their unit and zone; a dictionary-encoded column as its values). A sink
column the expectation lacks fails, but the loader's own bookkeeping, checked apart (`BOOKKEEPING`).

Customer changes: each fact version is enriched from exactly one customer snapshot, the one its batch
was planned under: pass the kept earlier snapshots as `customers` (tests/support/expected.py,
`keep_customers`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tests.support.expected import CustomerSnapshot, expected, expected_tombstones, key_columns
from tests.support.readers import (
    CURSOR,
    delta_rows,
    iceberg_rows,
    latest_versions,
    read_parquet_log,
    read_snowflake,
)

DELETED = "_deleted"
DATE = "date"
#: Columns a sink stores that are not landing data nor derived from it, and where they are checked.
BOOKKEEPING = {
    DELETED: "the Parquet log's delete marker: false on every live row, true on a tombstone (checked here)",
    DATE: "the Parquet log's `date=` folder: the UTC day of the version's cursor (checked per file here)",
}


def _rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    return [tuple(row[c] for c in columns) for row in table.select(columns).to_pylist()]


def _same_family(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_dictionary(got):  # an encoding, not a type
        got = got.value_type
    if pa.types.is_decimal(want):
        return pa.types.is_decimal(got)
    if pa.types.is_integer(want):
        return pa.types.is_integer(got) or (pa.types.is_decimal(got) and got.scale == 0)
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(got)
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_string_view(got)
    return got == want


def _instants(data: pa.Table) -> pa.Table:
    """Every timestamp column in UTC, as an instant (a naive one is read as UTC, as the loader does)."""
    for i, field in enumerate(data.schema):
        if pa.types.is_timestamp(field.type):
            unit = field.type.unit
            utc = data[i].cast(pa.timestamp(unit)).cast(pa.timestamp(unit, "UTC"))
            data = data.set_column(i, field.name, utc)
    return data


def _normalized(actual: pa.Table, want: pa.Schema, what: str) -> pa.Table:
    """`actual`'s columns of `want`, cast to its types (see the module's doc)."""
    for field in want:
        got = actual.schema.field(field.name).type
        assert _same_family(got, field.type), f"{what}: column {field.name} is {got}, expected {field.type}"
    try:
        return _instants(actual.select(want.names)).cast(_instants(want.empty_table()).schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise AssertionError(f"{what}: a value differs from its expected type: {error}") from None


def _differences(got: pa.Table, want: pa.Table, keys: list[str], what: str) -> str:
    """A readable account of how two same-schema tables differ: keys missing or extra, else the first
    rows whose columns differ."""
    got_keys, want_keys = set(_rows(got, keys)), set(_rows(want, keys))
    if got_keys != want_keys:
        missing, extra = sorted(want_keys - got_keys), sorted(got_keys - want_keys)
        return f"{what}: {len(missing)} key(s) missing {missing[:5]}, {len(extra)} extra {extra[:5]}"
    wrong: dict[int, list[str]] = {}
    for name in want.column_names:
        a, b = got[name], want[name]
        same = pc.or_kleene(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
        for index in pc.indices_nonzero(pc.invert(same)).to_pylist():
            wrong.setdefault(index, []).append(name)
    lines = [f"{what}: {len(wrong)} row(s) differ"]
    for index in sorted(wrong)[:5]:
        row_got, row_want = got.slice(index, 1).to_pylist()[0], want.slice(index, 1).to_pylist()[0]
        differing = {c: (row_got[c], row_want[c]) for c in wrong[index]}
        lines.append(f" key {[row_want[k] for k in keys]}: (got, expected) {differing}")
    return "\n".join(lines)


def _assert_rows(actual: pa.Table, want: pa.Table, keys: list[str], what: str, *,
                 bookkeeping: Sequence[str] = ()) -> None:
    """`actual` holds exactly `want`'s rows, every column equal, and no other column but `bookkeeping`."""
    extra = set(actual.column_names) - set(want.column_names) - set(bookkeeping)
    missing = set(want.column_names) - set(actual.column_names)
    assert not extra and not missing, \
        f"{what}: columns not expected {sorted(extra)}, missing {sorted(missing)}"
    grouped = actual.group_by(keys).aggregate([([], "count_all")])
    assert grouped.num_rows == actual.num_rows, f"{what}: duplicated primary keys"
    got = _normalized(actual, want.schema, what).sort_by([(k, "ascending") for k in keys])
    want = _instants(want).sort_by([(k, "ascending") for k in keys])
    if not got.equals(want):
        raise AssertionError(_differences(got, want, keys, what))


def assert_matches_expected(actual: pa.Table, landing: Path, table: str, *, sink: str,
                            customers: Sequence[CustomerSnapshot] = (), want: pa.Table | None = None,
                            bookkeeping: Sequence[str] = ()) -> None:
    """`actual` (a sink's live rows) is exactly the expected table: every key once, every column, and
    besides only the `bookkeeping` columns the sink keeps (of `BOOKKEEPING`; `_deleted` false on every
    row). `want`: the expected table, when the caller computed it already."""
    assert set(bookkeeping) <= set(BOOKKEEPING), bookkeeping
    want = expected(table, landing, customers) if want is None else want
    if DELETED in bookkeeping:
        assert DELETED in actual.column_names, f"{sink}/{table}: no {DELETED} column"
        assert not pc.any(pc.fill_null(actual[DELETED], True)).as_py(), \
            f"{sink}/{table}: a live row not marked live"
    _assert_rows(actual, want, key_columns(table), f"{sink}/{table}", bookkeeping=bookkeeping)


def _partitions_agree(folder: Path, table: str) -> Any:
    """A check of each file of the Parquet log `folder` (`read_parquet_log`): its rows' region is its
    `region=` folder's, and their cursor's UTC day its `date=` folder's."""
    def check(path: Path, data: pa.Table) -> None:
        folders = dict(part.partition("=")[::2] for part in path.relative_to(folder).parent.parts)
        where = f"parquet/{table}: {path}"
        assert set(folders) == {"region", DATE}, f"{where}: not under region=/date= folders"
        assert pc.all(pc.equal(data["region"], folders["region"])).as_py() is True, \
            f"{where}: a row of another region"
        cursor = data[CURSOR[table]]
        days = _instants(pa.table({"c": cursor}))["c"].cast(pa.date32())
        assert pc.all(pc.equal(days.cast(pa.string()), folders[DATE])).as_py() is True, \
            f"{where}: a version whose cursor is not on the folder's day"
    return check


def _assert_tombstones(latest: pa.Table, landing: Path, table: str, live: pa.Schema,
                       customers: Sequence[CustomerSnapshot]) -> None:
    """The Parquet log's newest versions that are tombstones: key, cursor and region those of
    `expected_tombstones`, every other column of the live rows (`live`) null."""
    keys = key_columns(table)
    want = expected_tombstones(table, landing, customers)
    dead = latest.filter(pc.fill_null(latest[DELETED], False)) if DELETED in latest.column_names \
        else latest.schema.empty_table()
    _assert_rows(dead.select(want.column_names), want, keys, f"parquet/{table} tombstones")
    stored = [name for name in live.names if name not in want.column_names]
    filled = [name for name in stored if dead[name].null_count != dead.num_rows]
    assert not filled, f"parquet/{table}: tombstones with values in {filled} (only key, cursor and region)"


def assert_warehouse_exact(warehouse: Path, landing: Path, tables: tuple[str, ...] = ("orders", "lineitem"),
                           *, customers: Sequence[CustomerSnapshot] = (), iceberg: bool = False) -> None:
    """Delta (and Iceberg, when `iceberg`: the sink at its defaults) and Parquet hold exactly the latest
    live version of every key, every column; Parquet holds no version twice, each file in its region's and
    its cursor day's folder, and its newest version of each tombstoned key is that tombstone. `customers`:
    the kept earlier customer snapshots (see the module's doc)."""
    for table in tables:
        want = expected(table, landing, customers)
        keys = key_columns(table)
        assert_matches_expected(delta_rows(warehouse, table), landing, table, sink="delta", want=want)
        if iceberg:
            assert_matches_expected(iceberg_rows(warehouse, table), landing, table, sink="iceberg", want=want)
        log = warehouse / "parquet" / table
        versions = read_parquet_log(log, check=_partitions_agree(log, table))
        latest = latest_versions(versions.drop_columns([DATE]), keys, CURSOR[table])
        live = latest.filter(pc.invert(latest[DELETED])) if DELETED in latest.column_names else latest
        assert_matches_expected(live, landing, table, sink="parquet", want=want,
                                bookkeeping=[DELETED] if DELETED in latest.column_names else [])
        _assert_tombstones(latest, landing, table, want.schema, customers)
        # a version: (key, cursor, tombstone or not): a tombstone at a live version's cursor is one more
        ident = [*keys, CURSOR[table], *([DELETED] if DELETED in versions.column_names else [])]
        counted = versions.group_by(ident).aggregate([([], "count_all")])
        assert counted.num_rows == versions.num_rows, f"parquet/{table}: a version was written twice"


def snowflake_table(server: dict[str, Any], database: str, table: str) -> pa.Table:
    """Every row of a Snowflake target table as stored (column names lower-cased), sorted by key."""
    data = read_snowflake(server, database, table)
    assert data is not None, f"snowflake/{table}: the table is empty"
    return data.sort_by([(k, "ascending") for k in key_columns(table)])


def assert_snowflake_exact(server: dict[str, Any], database: str, landing: Path, *,
                           customers: Sequence[CustomerSnapshot] = ()) -> None:
    """Snowflake's target tables hold exactly the latest live version of every key, every column."""
    for table in ("orders", "lineitem"):
        assert_matches_expected(snowflake_table(server, database, table), landing, table, sink="snowflake",
                                customers=customers)


def assert_deletes_applied(warehouse: Path, landing: Path, *,
                           snowflake: tuple[dict[str, Any], str] | None = None,
                           iceberg: bool = False) -> dict[str, int]:
    """The deletes really happened: the landing zone holds keys of each fact table whose newest version
    is a tombstone, none of them is in Delta (nor in Snowflake: `(server, database)`, nor in Iceberg when
    `iceberg`), and the Parquet log's newest version of each is its tombstone. The tombstoned keys per
    table."""
    counts = {}
    for table in ("orders", "lineitem"):
        keys = key_columns(table)
        dead = set(_rows(expected_tombstones(table, landing), keys))
        assert dead, f"{table}: the landing zone holds no tombstone"
        held = {"delta": delta_rows(warehouse, table)}
        if snowflake:
            held["snowflake"] = snowflake_table(*snowflake, table)
        if iceberg:
            held["iceberg"] = iceberg_rows(warehouse, table)
        for sink, rows in held.items():
            assert not dead & set(_rows(rows, keys)), f"{sink}/{table}: a tombstoned key is still there"
        latest = latest_versions(read_parquet_log(warehouse / "parquet" / table).drop_columns([DATE]), keys,
                                 CURSOR[table])
        marked = latest.filter(pc.fill_null(latest[DELETED], False))
        assert set(_rows(marked, keys)) == dead, f"parquet/{table}: tombstones"
        counts[table] = len(dead)
    return counts
