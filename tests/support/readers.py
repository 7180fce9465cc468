"""One reader per sink of what it holds, for every test that checks a sink (the conformance harness,
the end-to-end tests, the kill matrix...): written with the sinks' own libraries (pyarrow for Parquet,
deltalake for Delta, the Snowflake connector) and none of the loader's sink code, so a bug there
cannot hide itself.

- Parquet, a log of versions `<table>/region=R/date=D/<file>.parquet`: `read_parquet_log` reads every
  visible file of a table (never a half-written one under its hidden name) with pyarrow, file by file;
  `latest_versions` keeps the newest version of each key.
- Delta: `read_delta`, the table's current snapshot.
- Snowflake (the emulator, over the real connector): `read_snowflake`, the table with its column
  names lower-cased.
- Iceberg: `read_iceberg`, the table's current snapshot, scanned by pyiceberg through the SQL catalog
  (the catalog file the sink was configured with).

`parquet_versions`, `parquet_latest`, `delta_rows` and `snowflake_rows` read the warehouse tables
(orders, lineitem) of a project, sorted by key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tests.support.expected import expected, key_columns

CURSOR = {"orders": "o_updated_at", "lineitem": "l_updated_at"}


def _sorted_by(data: pa.Table, keys: Sequence[str]) -> pa.Table:
    return data.sort_by([(k, "ascending") for k in keys])


def latest_versions(data: pa.Table, keys: Sequence[str], cursor: str) -> pa.Table:
    """The newest version (greatest cursor) of every key in a log of versions, sorted by key. Where the
    log has the `_deleted` flag, a tombstone beats a live version at its cursor (the sinks' delete rule)."""
    tie = [("_deleted", "descending")] if "_deleted" in data.column_names else []
    newest = data.sort_by([*((k, "ascending") for k in keys), (cursor, "descending"), *tie])
    if newest.num_rows < 2:
        return newest
    same = None
    for key in keys:
        column = newest[key]
        equal = pc.equal(column.slice(1), column.slice(0, newest.num_rows - 1))
        same = equal if same is None else pc.and_(same, equal)
    first = pa.concat_arrays([pa.array([True]), *pc.invert(same).chunks])
    return newest.filter(first)


# ---------------------------------------------------------------------------------------------- Parquet


def parquet_files(folder: Path) -> list[Path]:
    """The data files of one table of the Parquet sink (`folder` is `<sink>/<table>`), sorted. A file
    under its hidden name is being written: readers never see it."""
    return sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))


def _partition_value(text: str) -> Any:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def read_parquet_file(path: Path, folder: Path) -> pa.Table:
    """One file's rows, with the values of its hive partition folders (`key=value` between `folder`
    and the file) as columns where the file does not hold them itself."""
    data = pq.ParquetFile(path).read()
    for part in path.relative_to(folder).parent.parts:
        name, sep, text = part.partition("=")
        if sep and name not in data.column_names:
            value = _partition_value(text)
            data = data.append_column(name, pa.array([value] * data.num_rows, type=pa.scalar(value).type))
    return data


def read_parquet_log(folder: Path, *, schema: pa.Schema | None = None,
                     check: Callable[[Path, pa.Table], None] | None = None) -> pa.Table:
    """Every version row of one table of the Parquet sink (`folder` is `<sink>/<table>`), file after
    file. `check(path, rows)` sees each file as it is stored; with `schema`, each file's rows are
    selected and cast to it (and no file at all is an empty table of it). Files that differ in their
    columns are unified by name."""
    parts = []
    for path in parquet_files(folder):
        data = read_parquet_file(path, folder)
        if check is not None:
            check(path, data)
        parts.append(data if schema is None else data.select(schema.names).cast(schema))
    if not parts:
        assert schema is not None, f"parquet: no data file under {folder}"
        return schema.empty_table()
    return pa.concat_tables(parts, promote_options="permissive")


def parquet_versions(warehouse: Path, table: str) -> pa.Table:
    """Every version row in the Parquet sink, with its hive partition values."""
    return read_parquet_log(warehouse / "parquet" / table)


def parquet_latest(warehouse: Path, table: str) -> pa.Table:
    """The newest version of every key in the Parquet sink (without the `date` partition), by key."""
    versions = parquet_versions(warehouse, table)
    if "date" in versions.column_names:
        versions = versions.drop_columns(["date"])
    return latest_versions(versions, key_columns(table), CURSOR[table])


# ------------------------------------------------------------------------------------------------ Delta


def read_delta(uri: str | Path) -> pa.Table | None:
    """The Delta table's current snapshot; None where there is no table yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return pa.table(DeltaTable(str(uri)).to_pyarrow_table())
    except TableNotFoundError:
        return None


def delta_rows(warehouse: Path, table: str) -> pa.Table:
    data = read_delta(warehouse / "delta" / table)
    assert data is not None, f"delta/{table}: no Delta table"
    return _sorted_by(data, key_columns(table))


# ---------------------------------------------------------------------------------------------- Iceberg

#: The catalog name the sink registers its tables under (`sinks.iceberg.catalog_name`'s default).
ICEBERG_CATALOG = "loader"


def iceberg_catalog(catalog_uri: str, warehouse: str, **properties: str) -> Any:
    """pyiceberg's SQL catalog on `catalog_uri` (a sqlite:/// URL), as the sink's is; None where its file
    does not exist yet (the sink made no table)."""
    from pyiceberg.catalog.sql import SqlCatalog

    path = catalog_uri[len("sqlite:///"):]
    if catalog_uri.startswith("sqlite:///") and not Path(path).exists():
        return None
    location = warehouse if "://" in warehouse else f"file://{warehouse}"
    return SqlCatalog(ICEBERG_CATALOG, uri=catalog_uri, warehouse=location, init_catalog_tables="false",
                      **properties)


def iceberg_table(catalog_uri: str, warehouse: str, namespace: str, table: str, **properties: str) -> Any:
    """The pyiceberg table, or None where there is none."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    catalog = iceberg_catalog(catalog_uri, warehouse, **properties)
    if catalog is None:
        return None
    try:
        return catalog.load_table((namespace, table))
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def read_iceberg(catalog_uri: str, warehouse: str, namespace: str, table: str,
                 **properties: str) -> pa.Table | None:
    """The Iceberg table's current snapshot (every column, as pyiceberg reads it); None where there is no
    table yet."""
    opened = iceberg_table(catalog_uri, warehouse, namespace, table, **properties)
    return None if opened is None else opened.scan().to_arrow()


def iceberg_rows(warehouse: Path, table: str, namespace: str = "loader") -> pa.Table:
    """A warehouse table of the Iceberg sink at its defaults (`<warehouse>/iceberg`, its catalog.db)."""
    root = warehouse / "iceberg"
    data = read_iceberg(f"sqlite:///{root}/catalog.db", str(root), namespace, table)
    assert data is not None, f"iceberg/{table}: no Iceberg table"
    return _sorted_by(data, key_columns(table))


def iceberg_snapshot_id(catalog_uri: str, warehouse: str, namespace: str, table: str) -> int | None:
    """The table's current snapshot id (a load that wrote nothing commits none)."""
    opened = iceberg_table(catalog_uri, warehouse, namespace, table)
    snapshot = None if opened is None else opened.current_snapshot()
    return None if snapshot is None else int(snapshot.snapshot_id)


# -------------------------------------------------------------------------------------------- Snowflake


def read_snowflake(server: dict[str, Any], database: str, table: str, *,
                   nullable: Sequence[str] = ()) -> pa.Table | None:
    """Every row of `table` (`database`.S) in the emulator, column names lower-cased; None where the
    table does not exist or holds no row (the connector returns no Arrow table for no rows).
    `nullable`: columns whose NULLs are read with `IS NULL` too (fakesnow 0.12.1 returns a NULL
    TIMESTAMP_TZ over Arrow as the epoch)."""
    from tests.support.snowflake_emulator import connect

    flags = [f'"{c.upper()}" IS NULL AS "__NULL_{c.upper()}"' for c in nullable]
    conn = connect(server, database)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT COUNT(*) FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME = '{table.upper()}'")
        if not cur.fetchone()[0]:
            return None
        cur.execute(f'SELECT {", ".join(["*", *flags])} FROM "{table.upper()}"')
        data = cur.fetch_arrow_all()
    finally:
        conn.close()
    if data is None:
        return None
    for column in nullable:
        flag = f"__NULL_{column.upper()}"
        index = data.schema.get_field_index(column.upper())
        values = pc.if_else(data[flag], pa.nulls(data.num_rows, data[column.upper()].type),
                            data[column.upper()])
        data = data.set_column(index, data.schema.field(index), values).drop_columns([flag])
    return data.rename_columns([c.lower() for c in data.column_names])


def snowflake_rows(server: dict[str, Any], database: str, table: str, landing: Path) -> pa.Table:
    """The target table, column names lower-cased and cast to the expected types, sorted by key."""
    data = read_snowflake(server, database, table)
    assert data is not None, f"snowflake/{table}: the table is empty"
    want = expected(table, landing).schema
    return _sorted_by(data.select(want.names).cast(want), key_columns(table))


# ------------------------------------------------------------------------------------- Dimension tables
# Every version (scd2) or row (merge, replace) of one dimension table, as each sink stores it, read with
# the sinks' own libraries: the column names the loader writes, the stored types (Snowflake's as the
# connector returns them). None where the sink holds no such table.

DIMENSION_LOG = ("_loaded_at", "_deleted")  # the Parquet log's own columns


def parquet_dimension_versions(folder: Path, key: Sequence[str], mode: str) -> pa.Table | None:
    """The Parquet sink's log `folder`/load-*.parquet (hidden files never read), reduced as the log's
    layout says: scd2, per (key, valid_from) the row with the greatest `_loaded_at`; merge, per key
    the row with the greatest `_loaded_at` unless it is a deletion (`_deleted`); replace, the newest
    file alone. Without the log's own columns."""
    paths = sorted(p for p in folder.glob("load-*.parquet")) if folder.exists() else []
    if not paths:
        return None
    if mode == "replace":
        paths = paths[-1:]
    data = pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive")
    if mode != "replace":
        group = [*key, "valid_from"] if mode == "scd2" else list(key)
        newest: dict[tuple[Any, ...], tuple[Any, int]] = {}
        for index, row in enumerate(data.select([*group, "_loaded_at"]).to_pylist()):
            ident = tuple(row[c] for c in group)
            if ident not in newest or row["_loaded_at"] > newest[ident][0]:
                newest[ident] = (row["_loaded_at"], index)
        data = data.take(sorted(index for _, index in newest.values()))
        if mode == "merge" and "_deleted" in data.column_names:
            data = data.filter(pc.invert(pc.fill_null(data["_deleted"], False)))
    return data.drop_columns([c for c in DIMENSION_LOG if c in data.column_names])


def parquet_dimension_files(folder: Path) -> list[str]:
    """The log's file names (a load that wrote nothing adds none)."""
    return sorted(p.name for p in folder.glob("load-*.parquet")) if folder.exists() else []


def delta_dimension_versions(uri: str | Path) -> pa.Table | None:
    """The Delta dimension table's current snapshot (every version of an scd2 table)."""
    return read_delta(uri)


def delta_table_version(uri: str | Path) -> int | None:
    """The Delta table's version number (a load that wrote nothing commits none)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(str(uri)).version()
    except TableNotFoundError:
        return None


def snowflake_dimension_versions(server: dict[str, Any], database: str, table: str,
                                 mode: str) -> pa.Table | None:
    """SELECT * FROM <TABLE> over the connector, column names lower-cased (scd2: `valid_to`'s NULLs
    read with IS NULL, see `read_snowflake`)."""
    return read_snowflake(server, database, table, nullable=["valid_to"] if mode == "scd2" else [])
