"""Dimension conformance: every sink (Parquet, Delta, Snowflake) stores dimension tables (scd2, merge,
replace) the same way, checked on the real sinks (files in tmp_path; fakesnow's server over the real
connector) by independent readers of the whole table (tests/support/readers.py: pyarrow, deltalake,
the connector; none of the loader's sink code).

A load is what the runner does: the sink's current rows, the pure diff against them
(loader/transform/dimension_changes.py), and the changes applied when there are any. Each step's result is
compared, version by version, with a history computed here by hand, and each key's versions must form
an unbroken chain (each valid_to the next valid_from, only the last one current)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pytest

from loader.config import load_config
from loader.sinks.base import Sink
from loader.transform.dimension_changes import (
    IS_CURRENT,
    ROW_HASH,
    VALID_FROM,
    VALID_TO,
    DimensionChanges,
    DimensionSpec,
    Mode,
    diff,
    row_hashes,
    stored_schema,
)
from tests.support.conformance import ICEBERG_NAMESPACE, PIPELINE, SINKS, iceberg_location, make_sink
from tests.support.dimension_rows import CURSOR, KEY, SCHEMA, changes_of, snapshot
from tests.support.readers import (
    delta_dimension_versions,
    delta_table_version,
    iceberg_snapshot_id,
    parquet_dimension_files,
    parquet_dimension_versions,
    read_iceberg,
    snowflake_dimension_versions,
)
from tests.support.snowflake_emulator import PASSWORD_ENV, new_database

pytestmark = pytest.mark.integration

DIMENSION = "customers"
T1 = datetime(2024, 6, 1, tzinfo=UTC)
T2 = datetime(2024, 6, 2, tzinfo=UTC)
T3 = datetime(2024, 6, 3, tzinfo=UTC)
C1, C2, C3 = (T1 + timedelta(hours=h, microseconds=h) for h in (1, 2, 3))

Values = tuple[str, str]  # (name, amount as text)
# The snapshots of the scd2 story: a change of amount (2) and of name (1), a new key (4), a key that
# disappears (3) and comes back with other values; the largest decimal(15,2), a negative one, quotes
# and non-ASCII text.
SNAP1: dict[int, Values] = {
    1: ("Ann O'Brien", "10.00"), 2: ("Bob \"ü\"", "20.50"), 3: ("Cid 東京", "9999999999999.99")}
SNAP2: dict[int, Values] = {1: SNAP1[1], 2: ("Bob \"ü\"", "21.00"), 4: ("Dee", "-5.25")}
SNAP3: dict[int, Values] = {1: ("Ann B", "10.00"), 2: SNAP2[2], 3: ("Cid 東京", "1.00"), 4: SNAP2[4]}

# key -> its versions (name, amount, valid_from, valid_to), oldest first; valid_to None: the current one
History = dict[int, list[tuple[str, str, datetime, datetime | None]]]
H1: History = {k: [(n, a, T1, None)] for k, (n, a) in SNAP1.items()}
H2: History = {
    1: [(*SNAP1[1], T1, None)],
    2: [(*SNAP1[2], T1, T2), (*SNAP2[2], T2, None)],
    3: [(*SNAP1[3], T1, T2)],
    4: [(*SNAP2[4], T2, None)],
}
H3: History = {
    1: [(*SNAP1[1], T1, T3), (*SNAP3[1], T3, None)],
    2: H2[2],
    3: [(*SNAP1[3], T1, T2), (*SNAP3[3], T3, None)],
    4: H2[4],
}


def spec_of(mode: Mode) -> DimensionSpec:
    return DimensionSpec(PIPELINE, DIMENSION, KEY, mode)






def hash_of(name: str, amount: str) -> str:
    one = pa.table({"name": [name], "amount": pa.array([Decimal(amount)], SCHEMA.field("amount").type)})
    return str(row_hashes(one, ["name", "amount"])[0].as_py())


# ---------------------------------------------------------------------------------------- the sinks


@dataclass
class DimensionSink:
    """A real sink, an independent reader of a dimension table it holds (every version, the stored
    columns), and a marker of whether a load wrote anything (Parquet: the log's files; Delta: the
    table version; Snowflake: the rows themselves)."""

    name: str
    sink: Sink
    read: Callable[[DimensionSpec], pa.Table | None]
    marker: Callable[[DimensionSpec], Any]


def dimension_sink(name: str, folder: Path, snowflake: tuple[dict[str, Any], str] | None) -> DimensionSink:
    sink = make_sink(name, folder, snowflake).sink
    if name == "snowflake":
        assert snowflake is not None

        def read_snowflake(spec: DimensionSpec) -> pa.Table | None:
            return snowflake_dimension_versions(*snowflake, spec.table, spec.mode)

        def snowflake_marker(spec: DimensionSpec) -> Any:
            data = read_snowflake(spec)
            return None if data is None else sorted(map(repr, data.to_pylist()))

        return DimensionSink(name, sink, read_snowflake, snowflake_marker)
    config = load_config(folder / "loader.yaml")  # the config make_sink wrote there
    if name == "parquet":
        root = Path(config.sink_path(config.sinks.parquet.path))
        return DimensionSink(name, sink, lambda s: parquet_dimension_versions(root / s.table, s.key, s.mode),
                             lambda s: parquet_dimension_files(root / s.table))
    if name == "iceberg":
        catalog, warehouse = iceberg_location(config)
        return DimensionSink(name, sink,
                             lambda s: read_iceberg(catalog, warehouse, ICEBERG_NAMESPACE, s.table),
                             lambda s: iceberg_snapshot_id(catalog, warehouse, ICEBERG_NAMESPACE, s.table))
    base = config.sink_path(config.sinks.delta.path)
    return DimensionSink(name, sink, lambda s: delta_dimension_versions(f"{base}/{s.table}"),
                         lambda s: delta_table_version(f"{base}/{s.table}"))


def snowflake_of(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], str]:
    server: dict[str, Any] = request.getfixturevalue("snowflake_server")
    monkeypatch.setenv(PASSWORD_ENV, server["password"])  # read by the config's ${SNOWFLAKE_PASSWORD}
    return server, new_database()


@pytest.fixture(params=SINKS)
def dim(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DimensionSink:
    """The sink under test, alone in its config; Snowflake on a database of its own."""
    snowflake = snowflake_of(request, monkeypatch) if request.param == "snowflake" else None
    return dimension_sink(request.param, tmp_path / "project", snowflake)


@pytest.fixture
def every_sink(request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> list[DimensionSink]:
    """The sinks at once, each in its own config (Snowflake on a database of its own)."""
    return [dimension_sink(name, tmp_path / name,
                           snowflake_of(request, monkeypatch) if name == "snowflake" else None)
            for name in SINKS]


def load(ds: DimensionSink, spec: DimensionSpec, incoming: pa.Table, *, at: datetime | None = None,
         cursor: str | None = None, missing: Literal["close", "keep"] = "close") -> DimensionChanges:
    """One load of the dimension into one sink, as the runner does it."""
    current = ds.sink.dimension_rows(spec)
    changes = diff(incoming, current, spec, cursor=cursor, snapshot_time=at, missing=missing)
    if not changes.empty:
        ds.sink.apply_dimension(spec, changes)
    return changes


# ------------------------------------------------------------------------------------- the checks

_FAMILY: dict[str, Callable[[pa.DataType], bool]] = {
    "id": lambda t: pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0),
    "name": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or t == pa.string_view(),
    "amount": lambda t: pa.types.is_decimal(t) and t.scale == 2,
    CURSOR: pa.types.is_timestamp,
    VALID_FROM: pa.types.is_timestamp,
    VALID_TO: pa.types.is_timestamp,
    IS_CURRENT: pa.types.is_boolean,
    ROW_HASH: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or t == pa.string_view(),
}


def stored_rows(ds: DimensionSink, spec: DimensionSpec, schema: pa.Schema) -> list[dict[str, Any]]:
    """Every stored row, its columns checked (exactly the stored schema's; Parquet and Delta in its
    order and exact types), cast to the stored schema, sorted by key (and valid_from)."""
    data = ds.read(spec)
    if data is None:
        return []
    if ds.name == "snowflake":
        assert sorted(data.column_names) == sorted(schema.names), f"snowflake: columns {data.column_names}"
    else:
        assert data.column_names == schema.names, \
            f"{ds.name}: columns {data.column_names}, expected {schema.names}"
        for field in schema:
            got = data.schema.field(field.name).type
            assert got == field.type or (pa.types.is_string(field.type) and _FAMILY[field.name](got)), (
                f"{ds.name}: column {field.name} stored as {got}, expected {field.type}")
    for field in schema:
        assert _FAMILY[field.name](data.schema.field(field.name).type), (
            f"{ds.name}: column {field.name} came back as {data.schema.field(field.name).type}")
    rows = data.select(schema.names).cast(schema).to_pylist()
    return sorted(rows, key=lambda r: (r["id"], r.get(VALID_FROM) or T1))


def assert_history(ds: DimensionSink, spec: DimensionSpec, schema: pa.Schema, want: History, *,
                   cursor: bool = False) -> None:
    """The whole scd2 table equals `want`, and each key's versions form a chain."""
    rows = stored_rows(ds, spec, schema)
    by_key: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["id"], []).append(row)
    assert sorted(by_key) == sorted(want), f"{ds.name}: keys {sorted(by_key)}, expected {sorted(want)}"
    assert all(len(by_key[k]) == len(want[k]) for k in want), f"{ds.name}: versions {by_key}\nexpected {want}"
    for key, versions in by_key.items():
        starts = [v[VALID_FROM] for v in versions]
        assert len(set(starts)) == len(starts), \
            f"{ds.name}: key {key} has two versions from one time: {versions}"
        # each valid_to is the next valid_from, except where the key was absent for a while (closed by a
        # snapshot without it, back in a later one): there the hand-written history has the same gap
        gaps = {i for i, (b, a) in enumerate(zip(want[key], want[key][1:], strict=False)) if b[3] != a[2]}
        for i, (before, after) in enumerate(zip(versions, versions[1:], strict=False)):
            assert before[VALID_TO] is not None, f"{ds.name}: key {key}: an older version is open: {before}"
            if i in gaps:
                assert before[VALID_TO] < after[VALID_FROM], \
                    f"{ds.name}: key {key}: overlap {before} -> {after}"
            else:
                assert before[VALID_TO] == after[VALID_FROM], \
                    f"{ds.name}: key {key}: broken chain {before} -> {after}"
            assert before[IS_CURRENT] is False, f"{ds.name}: key {key}: an older version is current: {before}"
        last = versions[-1]
        if last[VALID_TO] is None:
            assert last[IS_CURRENT] is True, f"{ds.name}: key {key}: open version not current: {last}"
        else:
            assert last[IS_CURRENT] is False, f"{ds.name}: key {key}: closed version still current: {last}"
            assert last[VALID_TO] > last[VALID_FROM], f"{ds.name}: key {key}: ends before it starts: {last}"
        got = [(v["name"], v["amount"], v[VALID_FROM], v[VALID_TO], v[ROW_HASH]) for v in versions]
        expected = [(n, Decimal(a), start, end, hash_of(n, a)) for n, a, start, end in want[key]]
        assert got == expected, f"{ds.name}: key {key}\n got      {got}\n expected {expected}"
        if cursor:  # from change files each version starts at its own cursor
            assert [v[CURSOR] for v in versions] == starts, f"{ds.name}: key {key}: cursor is not valid_from"


def assert_table(ds: DimensionSink, spec: DimensionSpec, want: dict[int, Values]) -> None:
    """A merge or replace table holds exactly `want`, one row per key, with the values' hashes."""
    schema = stored_schema(snapshot(want).schema, spec.mode)
    got = stored_rows(ds, spec, schema)
    expected = [{"id": k, "name": n, "amount": Decimal(a), ROW_HASH: hash_of(n, a)}
                for k, (n, a) in sorted(want.items())]
    assert got == expected, f"{ds.name}: table\n got      {got}\n expected {expected}"


SCD2_SCHEMA = stored_schema(snapshot(SNAP1).schema, "scd2")


# ------------------------------------------------------------------------------------------ scd2


def test_scd2_history_across_snapshots(dim: DimensionSink) -> None:
    spec = spec_of("scd2")
    assert dim.sink.dimension_rows(spec) is None  # no table yet
    first = load(dim, spec, snapshot(SNAP1), at=T1)
    assert first.opens.num_rows == 3
    assert_history(dim, spec, SCD2_SCHEMA, H1)

    before = dim.marker(spec)
    unchanged = load(dim, spec, snapshot(SNAP1), at=T1 + timedelta(hours=12))
    assert unchanged.empty
    assert dim.marker(spec) == before, f"{dim.name}: an unchanged snapshot wrote something"
    assert_history(dim, spec, SCD2_SCHEMA, H1)

    second = load(dim, spec, snapshot(SNAP2), at=T2)
    assert (second.opens.num_rows, second.closes.num_rows) == (2, 2)
    assert_history(dim, spec, SCD2_SCHEMA, H2)
    current = dim.sink.dimension_rows(spec)
    assert current is not None and sorted(current["id"].to_pylist()) == [1, 2, 4]

    before = dim.marker(spec)
    replay = load(dim, spec, snapshot(SNAP2), at=T2)  # the same load again, after it applied
    assert replay.empty
    assert dim.marker(spec) == before, f"{dim.name}: a replay wrote something"
    assert_history(dim, spec, SCD2_SCHEMA, H2)

    load(dim, spec, snapshot(SNAP3), at=T3)
    assert_history(dim, spec, SCD2_SCHEMA, H3)


@pytest.mark.parametrize("ahead", SINKS)
def test_scd2_crash_between_sinks_replay_makes_every_sink_identical(every_sink: list[DimensionSink],
                                                                    ahead: str) -> None:
    """A load applied to one sink only (the run died before the others), then the load run over all:
    the sink that had it writes nothing, the others catch up, all end with the same history."""
    spec = spec_of("scd2")
    for ds in every_sink:
        load(ds, spec, snapshot(SNAP1), at=T1)
    [first] = [ds for ds in every_sink if ds.name == ahead]
    load(first, spec, snapshot(SNAP2), at=T2)
    assert_history(first, spec, SCD2_SCHEMA, H2)
    for ds in every_sink:
        if ds.name != ahead:
            assert_history(ds, spec, SCD2_SCHEMA, H1)

    ahead_marker = first.marker(spec)
    for ds in every_sink:  # the replay, over every sink
        changes = load(ds, spec, snapshot(SNAP2), at=T2)
        assert changes.empty == (ds.name == ahead), f"{ds.name}: {changes}"
    assert first.marker(spec) == ahead_marker
    tables = {}
    for ds in every_sink:
        assert_history(ds, spec, SCD2_SCHEMA, H2)
        tables[ds.name] = stored_rows(ds, spec, SCD2_SCHEMA)
    assert tables["parquet"] == tables["delta"] == tables["snowflake"] == tables["iceberg"]


def test_scd2_change_files_chain_versions_of_one_load(dim: DimensionSink) -> None:
    spec = spec_of("scd2")
    schema = stored_schema(changes_of([]).schema, "scd2")
    first = changes_of([(1, "Ann", "11.00", C2), (2, "Bob", "20.00", C1), (1, "Ann", "10.00", C1)])
    load(dim, spec, first, cursor=CURSOR)
    assert_history(dim, spec, schema, {
        1: [("Ann", "10.00", C1, C2), ("Ann", "11.00", C2, None)],
        2: [("Bob", "20.00", C1, None)],
    }, cursor=True)

    # a stale version of 1 (already loaded), a newer one, a repeat of 2's values, a new key
    second = changes_of([(1, "Ann", "11.00", C2), (1, "Ann", "12.00", C3), (2, "Bob", "20.00", C2),
                          (3, "Cid", "1.00", C3)])
    changes = load(dim, spec, second, cursor=CURSOR)
    assert changes.stale == 1
    want: History = {
        1: [("Ann", "10.00", C1, C2), ("Ann", "11.00", C2, C3), ("Ann", "12.00", C3, None)],
        2: [("Bob", "20.00", C1, None)],
        3: [("Cid", "1.00", C3, None)],
    }
    assert_history(dim, spec, schema, want, cursor=True)

    before = dim.marker(spec)
    replay = load(dim, spec, second, cursor=CURSOR)
    assert replay.empty and replay.stale == 3
    assert dim.marker(spec) == before, f"{dim.name}: a replay of change files wrote something"
    assert_history(dim, spec, schema, want, cursor=True)


# -------------------------------------------------------------------------------- merge, replace


@pytest.mark.parametrize("missing", ["close", "keep"])
def test_merge_table_is_the_latest_snapshot(dim: DimensionSink, missing: Literal["close", "keep"]) -> None:
    spec = spec_of("merge")
    load(dim, spec, snapshot(SNAP1), at=T1, missing=missing)
    assert_table(dim, spec, SNAP1)
    load(dim, spec, snapshot(SNAP2), at=T2, missing=missing)
    want = SNAP2 if missing == "close" else {**SNAP2, 3: SNAP1[3]}
    assert_table(dim, spec, want)

    before = dim.marker(spec)
    assert load(dim, spec, snapshot(SNAP2), at=T2, missing=missing).empty
    assert dim.marker(spec) == before
    load(dim, spec, snapshot(SNAP3), at=T3, missing=missing)
    assert_table(dim, spec, SNAP3)


def test_replace_table_is_the_latest_snapshot(dim: DimensionSink) -> None:
    spec = spec_of("replace")
    load(dim, spec, snapshot(SNAP1), at=T1)
    assert_table(dim, spec, SNAP1)

    before = dim.marker(spec)
    assert load(dim, spec, snapshot(SNAP1), at=T2).empty
    assert dim.marker(spec) == before, f"{dim.name}: an unchanged snapshot rewrote the table"

    load(dim, spec, snapshot(SNAP2), at=T2)
    assert_table(dim, spec, SNAP2)
    load(dim, spec, snapshot(SNAP3), at=T3)
    assert_table(dim, spec, SNAP3)
