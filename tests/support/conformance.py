"""Harness of the sink conformance suite (tests/integration/test_sink_conformance.py): small TableBatch
objects built by hand, and for each sink a real instance (built by `enabled_sinks` from a real config)
with a reader of what it holds: the readers of tests/support/readers.py (plain pyarrow/deltalake/the
connector, not the sink's code), with the exact types of each column checked."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from loader.config import load_config
from loader.sinks import enabled_sinks
from loader.sinks.base import Sink, SinkWrite, TableBatch, skipped
from state import Window
from tests.support.cli import write_config
from tests.support.readers import latest_versions, read_delta, read_iceberg, read_parquet_log, read_snowflake

PIPELINE = "conformance"
TABLE = "events"
KEY = ("id",)
CURSOR = "updated_at"
SCHEMA = pa.schema([
    pa.field("id", pa.int64()),
    pa.field(CURSOR, pa.timestamp("us", tz="UTC")),
    pa.field("amount", pa.decimal128(15, 2)),
    pa.field("ship_date", pa.date32()),
    pa.field("note", pa.string()),
    pa.field("region", pa.string()),
])
REGIONS = ("AFRICA", "EUROPE", "MIDDLE EAST")
BASE = datetime(2024, 3, 1, tzinfo=UTC)
SINKS = ("parquet", "delta", "snowflake", "iceberg")


def row(key: int, version: int = 1) -> dict[str, Any]:
    """Version `version` of `key`: a greater version has a greater cursor, one day later per version,
    so versions fall in different Parquet date partitions. Values are exact-representation traps:
    the largest decimal(15,2), a microsecond cursor, quotes and non-ASCII text."""
    amount = Decimal("9999999999999.99") if key == 1 else Decimal(key * 1000 + version) / 100
    if key == 2:
        amount = -amount
    return {
        "id": key,
        CURSOR: BASE + timedelta(days=version, minutes=key, microseconds=key),
        "amount": amount,
        "ship_date": date(2024, 1, 1) + timedelta(days=key + version),
        "note": f"k{key} v{version} O'Brien \"ü\" 東京",
        "region": REGIONS[key % len(REGIONS)],
    }


def table_of(rows: Iterable[dict[str, Any]], schema: pa.Schema = SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def batch_of(run_number: int, data: pa.Table, *, replay: bool = False, deletes: Deletes | None = None,
             mode: str = "incremental") -> TableBatch:
    """One run's rows of TABLE. The window is the run's cursor range (the sinks do not filter on it).
    `deletes`: the source's deletes mode (then `data` has the `_deleted` column); `mode`: a backfill's
    chunk is a run of its own that may land out of run-number order."""
    upper = pc.max(data[CURSOR]).as_py() if data.num_rows else BASE
    return TableBatch(
        pipeline=PIPELINE, table=TABLE, run_number=run_number, data=data, key=KEY, cursor=CURSOR,
        window=Window(lower=None if run_number == 1 else BASE, upper=max(upper, BASE)), replay=replay,
        deletes=deletes, mode=mode,
    )


# Upstream deletes: the rows of a source with a `deletes` block carry the `_deleted` flag; a tombstone
# carries the key, the cursor and a region (its real one, or UNKNOWN where none was found), the rest null.
Deletes = Literal["hard", "soft"]
DELETED = "_deleted"
DELETED_AT = "_deleted_at"
UNKNOWN = "UNKNOWN"
DELETES_SCHEMA = SCHEMA.append(pa.field(DELETED, pa.bool_()))
SOFT_SCHEMA = SCHEMA.append(pa.field(DELETED_AT, SCHEMA.field(CURSOR).type))


def live(key: int, version: int = 1) -> dict[str, Any]:
    return {**row(key, version), DELETED: False}


def tombstone(key: int, version: int, *, region: str | None = None) -> dict[str, Any]:
    """The delete of `key` at version `version`'s cursor, in the key's region (or `region`)."""
    return {"id": key, CURSOR: row(key, version)[CURSOR], "amount": None, "ship_date": None, "note": None,
            "region": region or row(key)["region"], DELETED: True}


def sort_state(data: pa.Table) -> pa.Table:
    return data.sort_by([*((k, "ascending") for k in KEY), (CURSOR, "ascending")])


def write_whole(sink: Sink, batch: TableBatch) -> SinkWrite:
    """The sink's three steps in this process, the whole table as one part, no retries: begin, write
    the part, finish (what loader/sinks/table_writes.py does for a run, without threads and retries)."""
    begun = sink.begin(batch)
    if begun is None:
        return skipped(sink, batch)
    return sink.finish(batch, begun, [sink.write_part(batch, begun, part=0, last=True)])


@dataclass
class SinkUnderTest:
    """A real sink and a reader of every row it stores. `version_log`: the sink keeps every version
    (Parquet), so "latest" is the greatest cursor per key; the others hold one row per key."""

    name: str
    sink: Sink
    stored: Callable[[], pa.Table]
    version_log: bool = False
    #: Every column as stored, sorted by key and cursor (the deletes tests: `_deleted` in the Parquet
    #: log, `_deleted_at` in a soft table): Parquet's as DELETES_SCHEMA, the others' as they are.
    stored_all: Callable[[], pa.Table] | None = None

    def write(self, batch: TableBatch) -> SinkWrite:
        return write_whole(self.sink, batch)

    def latest(self) -> pa.Table:
        """The sink's current state, latest version per key, sorted by key; asserts no duplicates."""
        rows = self.stored()
        keys = [tuple(r[k] for k in KEY) for r in rows.select(list(KEY)).to_pylist()]
        if not self.version_log:
            assert len(keys) == len(set(keys)), f"{self.name}: a key is stored twice: {sorted(keys)}"
            return rows
        versions = [(*k, c) for k, c in zip(keys, rows[CURSOR].to_pylist(), strict=True)]
        assert len(versions) == len(set(versions)), f"{self.name}: a (key, cursor) version is stored twice"
        return latest_versions(rows, KEY, CURSOR)


def _check_types(sink: str, data: pa.Table) -> None:
    """Exact types (Parquet, Delta): a sink that changed a column's type must not pass unnoticed."""
    for field in SCHEMA:
        got = data.schema.field(field.name).type
        same = got == field.type or (pa.types.is_string(field.type)
                                     and got in (pa.large_string(), pa.string_view()))
        assert same, f"{sink}: column {field.name} stored as {got}, expected {field.type}"


def parquet_reader(root: Path) -> Callable[[], pa.Table]:
    def stored() -> pa.Table:
        def check(path: Path, data: pa.Table) -> None:
            _check_types(f"parquet file {path.relative_to(root)}", data)

        return sort_state(read_parquet_log(root / TABLE, schema=SCHEMA, check=check))

    return stored


def delta_reader(uri: str) -> Callable[[], pa.Table]:
    def stored() -> pa.Table:
        data = read_delta(uri)
        if data is None:
            return SCHEMA.empty_table()
        _check_types("delta", data)
        return sort_state(data.select(SCHEMA.names).cast(SCHEMA))

    return stored


#: The Iceberg sink's namespace at its default (`sinks.iceberg.namespace`).
ICEBERG_NAMESPACE = "loader"


def iceberg_location(config: Any) -> tuple[str, str]:
    """The catalog URL and warehouse folder of the Iceberg sink at its defaults: `catalog.db` in
    `<warehouse>/iceberg` (what the sink's docs promise, computed here, not by the sink)."""
    warehouse = config.sink_path(config.sinks.iceberg.warehouse)
    return f"sqlite:///{warehouse}/catalog.db", warehouse


def iceberg_reader(catalog: str, warehouse: str) -> Callable[[], pa.Table]:
    def stored() -> pa.Table:
        data = read_iceberg(catalog, warehouse, ICEBERG_NAMESPACE, TABLE)
        if data is None:
            return SCHEMA.empty_table()
        _check_types("iceberg", data)
        return sort_state(data.select(SCHEMA.names).cast(SCHEMA))

    return stored


# The type family Snowflake must return for each column: money as NUMBER (decimal), never FLOAT.
_SNOWFLAKE_FAMILY: dict[str, Callable[[pa.DataType], bool]] = {
    "id": lambda t: pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0),
    CURSOR: pa.types.is_timestamp,
    "amount": lambda t: pa.types.is_decimal(t) and t.scale == 2,
    "ship_date": pa.types.is_date,
    "note": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "region": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
}


def snowflake_reader(server: dict[str, Any], database: str) -> Callable[[], pa.Table]:
    def stored() -> pa.Table:
        data = read_snowflake(server, database, TABLE)
        if data is None:  # no table yet, or no rows
            return SCHEMA.empty_table()
        assert sorted(data.column_names) == sorted(SCHEMA.names), f"snowflake: columns {data.column_names}"
        for name, family in _SNOWFLAKE_FAMILY.items():
            assert family(data.schema.field(name).type), \
                f"snowflake: column {name} came back as {data.schema.field(name).type}"
        return sort_state(data.select(SCHEMA.names).cast(SCHEMA))

    return stored


def make_sink(name: str, folder: Path, snowflake: tuple[dict[str, Any], str] | None = None) -> SinkUnderTest:
    """A config with only sink `name` enabled, loaded by the loader's own config loader (so
    `${SNOWFLAKE_PASSWORD}` is read from the environment), and the sink `enabled_sinks` makes of it."""
    sinks: dict[str, Any] = {"parquet": {"enabled": name == "parquet"}, "delta": {"enabled": name == "delta"},
                             "iceberg": {"enabled": name == "iceberg"}}
    if name == "snowflake":
        from tests.support.snowflake_emulator import sink_settings

        assert snowflake is not None, "the Snowflake sink needs the emulator and a database"
        sinks["snowflake"] = sink_settings(*snowflake)
    config = load_config(write_config(folder, pipeline=PIPELINE, sinks=sinks))
    built = enabled_sinks(config)
    assert [s.name for s in built] == [name]
    sink = built[0]
    if name == "parquet":
        root = Path(config.sink_path(config.sinks.parquet.path))
        return SinkUnderTest(name, sink, parquet_reader(root), version_log=True,
                             stored_all=parquet_log_reader(root))
    if name == "delta":
        uri = config.sink_path(config.sinks.delta.path) + "/" + TABLE
        return SinkUnderTest(name, sink, delta_reader(uri),
                             stored_all=lambda: sort_state(read_delta(uri) or SCHEMA.empty_table()))
    if name == "iceberg":
        catalog, warehouse = iceberg_location(config)
        return SinkUnderTest(name, sink, iceberg_reader(catalog, warehouse),
                             stored_all=lambda: sort_state(read_iceberg(catalog, warehouse, ICEBERG_NAMESPACE,
                                                                        TABLE) or SCHEMA.empty_table()))
    assert snowflake is not None
    return SinkUnderTest(name, sink, snowflake_reader(*snowflake),
                         stored_all=snowflake_all_reader(*snowflake))


def parquet_log_reader(root: Path) -> Callable[[], pa.Table]:
    """Every version of the log with its `_deleted` flag, each file's types checked."""
    def stored() -> pa.Table:
        def check(path: Path, data: pa.Table) -> None:
            _check_types(f"parquet file {path.relative_to(root)}", data)
            assert data.schema.field(DELETED).type == pa.bool_(), \
                f"parquet file {path}: {DELETED} is not boolean"

        return sort_state(read_parquet_log(root / TABLE, schema=DELETES_SCHEMA, check=check))

    return stored


def snowflake_all_reader(server: dict[str, Any], database: str) -> Callable[[], pa.Table]:
    def stored() -> pa.Table:
        probe = read_snowflake(server, database, TABLE)
        nullable = [DELETED_AT] if probe is not None and DELETED_AT in probe.column_names else []
        data = read_snowflake(server, database, TABLE, nullable=nullable)
        return SCHEMA.empty_table() if data is None else sort_state(data)

    return stored
