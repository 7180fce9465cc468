"""The dimension tables every sink must hold, computed here in plain Python from the landing snapshots
(none of the loader's history, masking or sink code): per key, its versions with their values (masked
as the region rules say), valid_from and valid_to, and a check of each sink's table against them.

A snapshot is (the customer rows as the landing zone held them, its time = the newest file's
modification time, as the loader stamps a snapshot). Keep a copy of a snapshot (and its time) before
an append replaces it, then pass every snapshot a run loaded, in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.readers import (
    delta_dimension_versions,
    parquet_dimension_versions,
    read_iceberg,
    snowflake_dimension_versions,
)

CUSTOMER_KEY = "c_custkey"
# configs/local.yaml's rules: EUROPE masks c_name and c_phone (all but the last 4 characters -> '*').
MASKED_REGIONS = {"EUROPE": ("c_name", "c_phone")}
HISTORY = ("valid_from", "valid_to", "is_current", "row_hash")


@dataclass(frozen=True)
class Snapshot:
    rows: list[dict[str, Any]]
    time: datetime


def snapshot_of(folder: Path) -> Snapshot:
    """The snapshot a dimension folder holds now: its rows and its newest file's modification time."""
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    newest = max(f.stat().st_mtime_ns for f in files)
    return Snapshot(rows, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=newest // 1000))


def _mask(text: str | None) -> str | None:
    if text is None or len(text) <= 4:
        return text
    return "*" * (len(text) - 4) + text[-4:]


def customer_regions(landing: Path) -> dict[int, str]:
    """nation key -> region name, from the landing zone's nation and region files."""
    regions = {r["r_regionkey"]: r["r_name"] for r in pq.read_table(landing / "region").to_pylist()}
    return {n["n_nationkey"]: regions[n["n_regionkey"]]
            for n in pq.read_table(landing / "nation").to_pylist()}


def masked(row: dict[str, Any], region_of_nation: dict[int, str]) -> dict[str, Any]:
    columns = MASKED_REGIONS.get(region_of_nation.get(row["c_nationkey"], ""), ())
    return {c: (_mask(v) if c in columns else v) for c, v in row.items()}


def expected_history(
    snapshots: Sequence[Snapshot], region_of_nation: dict[int, str], key: str = CUSTOMER_KEY
) -> dict[Any, list[tuple[dict[str, Any], datetime, datetime | None]]]:
    """Per key, its versions (values, valid_from, valid_to) after loading `snapshots` in order: a changed
    row closes the current version at the snapshot's time and opens one; a key gone is closed."""
    history: dict[Any, list[list[Any]]] = {}
    for snapshot in snapshots:
        rows = {r[key]: masked(r, region_of_nation) for r in snapshot.rows}
        for k, values in rows.items():
            versions = history.setdefault(k, [])
            current = versions[-1] if versions and versions[-1][2] is None else None
            if current is not None and current[0] == values:
                continue
            if current is not None:
                current[2] = snapshot.time
            versions.append([values, snapshot.time, None])
        for k, versions in history.items():
            if k not in rows and versions[-1][2] is None:
                versions[-1][2] = snapshot.time
    return {k: [(v[0], v[1], v[2]) for v in versions] for k, versions in history.items()}


def _as_versions(
    table: pa.Table, key: str
) -> dict[Any, list[tuple[dict[str, Any], datetime, datetime | None]]]:
    got: dict[Any, list[tuple[dict[str, Any], datetime, datetime | None]]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r[key], r["valid_from"])):
        assert row["is_current"] == (row["valid_to"] is None), row
        values = {c: v for c, v in row.items() if c not in HISTORY}
        got.setdefault(row[key], []).append((values, row["valid_from"], row["valid_to"]))
    return got


def assert_history(table: pa.Table | None,
                   expected: dict[Any, list[tuple[dict[str, Any], datetime, datetime | None]]],
                   *, sink: str, key: str = CUSTOMER_KEY) -> None:
    """`table` (every version a sink holds) equals `expected`, key by key, version by version."""
    assert table is not None, f"{sink}: no dimension table"
    got = _as_versions(table, key)
    assert set(got) == set(expected), f"{sink}: keys differ: {sorted(set(got) ^ set(expected))[:10]}"
    for k, versions in expected.items():
        have = got[k]
        assert len(have) == len(versions), (f"{sink}: key {k}: {len(have)} versions, "
                                            f"expected {len(versions)}\n{have}")
        for (g_values, g_from, g_to), (w_values, w_from, w_to) in zip(have, versions, strict=True):
            assert g_values == w_values, f"{sink}: key {k} values\n got      {g_values}\n expected {w_values}"
            assert (g_from, g_to) == (w_from, w_to), (f"{sink}: key {k} validity {g_from}..{g_to}, "
                                                      f"expected {w_from}..{w_to}")


def assert_customer_history(warehouse: Path, landing: Path, snapshots: Sequence[Snapshot], *,
                            snowflake: tuple[dict[str, Any], str] | None = None,
                            iceberg: bool = False) -> None:
    """Every sink's customer table (Parquet, Delta, Snowflake when given, and Iceberg at its defaults
    when `iceberg`) holds exactly the history of `snapshots`."""
    expected = expected_history(snapshots, customer_regions(landing))
    assert_history(parquet_dimension_versions(warehouse / "parquet" / "customer", [CUSTOMER_KEY], "scd2"),
                   expected, sink="parquet")
    assert_history(delta_dimension_versions(warehouse / "delta" / "customer"), expected, sink="delta")
    if iceberg:
        root = warehouse / "iceberg"
        stored = read_iceberg(f"sqlite:///{root}/catalog.db", str(root), "loader", "customer")
        assert_history(stored, expected, sink="iceberg")
    if snowflake is not None:
        server, database = snowflake
        assert_history(snowflake_dimension_versions(server, database, "customer", "scd2"), expected,
                       sink="snowflake")
