"""The Iceberg sink's pure parts: which data files a batch's keys can touch (from key bounds), the
merge's decisions (the newest cursor wins, a tombstone wins a tie), the tombstones it remembers, the run
markers (landed, or not, or cannot tell), and the `sinks.iceberg` block's validation and its messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loader.config import load_config
from loader.errors import ConfigError, SinkRejected
from loader.redaction import is_secret_name, redact
from loader.sinks.base import SinkContext
from loader.sinks.iceberg import catalog as cat
from loader.sinks.iceberg.config import IcebergSinkConfig
from loader.sinks.iceberg.facts import decide
from loader.sinks.iceberg.files import expire_snapshots, removed_by_keys, touched_files
from loader.sinks.iceberg.tombstones import sort_out_tombstones
from tests.support.cli import write_config

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TIME = pa.timestamp("us", tz="UTC")


def at(day: int) -> datetime:
    return T0 + timedelta(days=day)


# ------------------------------------------------------------------------------------------- key ranges


def test_only_files_whose_range_holds_a_key_are_touched() -> None:
    lows, highs = [1, 100, 200, 150, None], [99, 199, 299, 160, None]
    keys = np.array([5, 155, 300])
    # 5 in [1, 99]; 155 in [100, 199] and [150, 160]; 300 in none; the file without bounds: any key
    assert touched_files(lows, highs, keys) == [0, 1, 3, 4]
    assert touched_files(lows, highs, np.array([120])) == [1, 4]
    assert touched_files(lows[:3], highs[:3], np.array([99, 100])) == [0, 1]  # bounds are inclusive
    assert touched_files(lows[:3], highs[:3], np.array([300, 400])) == []  # beyond every file: appended
    assert touched_files(lows, highs, np.array([], dtype=np.int64)) == []


# ------------------------------------------------------------------------------------------- decisions


def _schema(soft: bool = False) -> pa.Schema:
    fields = [pa.field("id", pa.int64()), pa.field("ts", TIME), pa.field("v", pa.string()),
              pa.field("region", pa.string())]
    return pa.schema(fields + ([pa.field("_deleted_at", TIME)] if soft else []))


def _stored(rows: list[tuple[int, int, str, str]], soft_marks: list[int | None] | None = None) -> pa.Table:
    data = {"id": [r[0] for r in rows], "ts": pa.array([at(r[1]) for r in rows], TIME),
            "v": [r[2] for r in rows], "region": [r[3] for r in rows]}
    if soft_marks is not None:
        data["_deleted_at"] = pa.array([None if m is None else at(m) for m in soft_marks], TIME)
    table = pa.table(data)
    return table.append_column("__file", pa.array(np.zeros(len(rows), np.int32))).append_column(
        "__row", pa.array(np.arange(len(rows), dtype=np.int64)))


def _batch(rows: list[tuple[int, int, str, str, bool]]) -> pa.Table:
    return pa.table({"id": [r[0] for r in rows], "ts": pa.array([at(r[1]) for r in rows], TIME),
                     "v": [r[2] for r in rows], "region": [r[3] for r in rows],
                     "_deleted": [r[4] for r in rows]})


def test_newest_version_wins_and_a_stale_one_changes_nothing() -> None:
    stored = _stored([(1, 3, "a3", "EU"), (2, 3, "b3", "EU"), (3, 1, "c1", "EU")])
    batch = _batch([(1, 3, "a3", "EU", False), (2, 2, "b2", "EU", False), (3, 2, "c2", "ASIA", False),
                    (4, 1, "d1", "EU", False)]).drop_columns(["_deleted"])
    decision = decide(batch, stored, ("id",), "ts", None, _schema())
    assert decision.removed.tolist() == [False, False, True]  # only key 3 leaves its file (it moved)
    assert decision.additions.select(["id", "v", "region"]).to_pylist() == [
        {"id": 3, "v": "c2", "region": "ASIA"}, {"id": 4, "v": "d1", "region": "EU"}]
    assert (decision.rows, decision.regions, decision.deleted) == (2, {"ASIA": 1, "EU": 1}, 0)


def test_hard_tombstone_at_or_after_the_stored_cursor_removes_the_row() -> None:
    stored = _stored([(1, 2, "a", "EU"), (2, 2, "b", "EU"), (3, 2, "c", "EU")])
    batch = _batch([(1, 2, None, "UNKNOWN", True), (2, 1, None, "EU", True), (3, 3, None, "EU", True),
                    (9, 1, None, "EU", True)])
    decision = decide(batch, stored, ("id",), "ts", "hard", _schema())
    assert decision.removed.tolist() == [True, False, True]  # the tie (1) and the newer (3) delete
    assert decision.additions.num_rows == 0 and decision.deleted == 2 and decision.rows == 0


def test_soft_tombstone_marks_the_stored_row_in_its_region_and_a_newer_version_revives_it() -> None:
    stored = _stored([(1, 2, "a", "EU"), (2, 2, "b", "EU"), (3, 2, "c", "EU")], soft_marks=[None, 5, 5])
    batch = _batch([(1, 4, None, "UNKNOWN", True), (2, 4, "b4", "EU", False), (3, 6, "c6", "EU", False)])
    decision = decide(batch, stored, ("id",), "ts", "soft", _schema(soft=True))
    got = {r["id"]: (r["v"], r["region"], r["_deleted_at"]) for r in decision.additions.to_pylist()}
    # 1: marked at the tombstone's cursor, values and region kept; 2: newer values, deleted at 5 >= 4 so
    # the mark stays; 3: newer than its mark: revived
    assert got == {1: ("a", "EU", at(4)), 2: ("b4", "EU", at(5)), 3: ("c6", "EU", None)}
    assert decision.removed.tolist() == [True, True, True] and decision.deleted == 1


def test_tombstones_remembered_drop_late_versions_and_forget_revived_keys() -> None:
    data = _batch([(1, 2, "a", "EU", False), (2, 5, "b", "EU", False), (3, 4, None, "EU", True),
                   (4, 4, None, "EU", True), (5, 3, "e", "EU", False)])
    remembered = pa.table({"id": [1, 2, 4], "__tomb": pa.array([at(2), at(3), at(3)], TIME)})
    out = sort_out_tombstones(data, remembered, ("id",), "ts")
    assert out.kept["id"].to_pylist() == [2, 3, 4, 5]  # 1: live at its tombstone's cursor: stays deleted
    assert out.dropped == 1
    assert sorted(out.forget["id"].to_pylist()) == [2, 4]  # 2 revived; 4's tombstone moves newer
    assert sorted(out.remember["id"].to_pylist()) == [3, 4]


def test_rows_are_matched_by_every_key_column() -> None:
    stored = pa.table({"a": [1, 1, 2], "b": ["x", "y", "x"]})
    wanted = pa.table({"a": [1], "b": ["y"]})
    assert removed_by_keys(stored, wanted, ("a", "b")).tolist() == [False, True, False]


# ---------------------------------------------------------------------------------------------- markers

WHERE = "Iceberg table loader.orders"


def test_a_run_landed_by_its_property_even_once_its_snapshot_is_expired() -> None:
    marker = cat.marker_id("p", "orders")
    props = {cat.marker_property(marker): "7"}
    assert cat.landed(props, [], marker, 7, replay=True, where=WHERE)
    assert cat.landed(props, [], marker, 5, replay=True, where=WHERE)  # incremental runs land in order
    assert not cat.landed(props, [], marker, 8, replay=True, where=WHERE)
    summary = cat.summary_of("p", "orders", 8, marker)
    assert cat.landed({}, [summary], marker, 8, replay=True, where=WHERE)  # the retained snapshot says so


def test_a_backfill_chunk_has_a_marker_of_its_own() -> None:
    incremental, chunk = cat.marker_id("p", "orders"), cat.marker_id("p", "orders", backfill_run=3)
    assert incremental != chunk and chunk.endswith("/backfill-3")
    props = {cat.marker_property(incremental): "10"}
    assert not cat.landed(props, [], chunk, 3, replay=True, where=WHERE)
    assert cat.landed({**props, cat.marker_property(chunk): "3"}, [], chunk, 3, replay=True, where=WHERE)


def test_a_replay_that_cannot_tell_refuses_naming_the_property_and_the_fix() -> None:
    marker = cat.marker_id("p", "orders")
    later = [cat.summary_of("p", "orders", 9, marker)]  # run 9's snapshot remains, the property is gone
    assert not cat.landed({}, later, marker, 8, replay=False, where=WHERE)  # never attempted: it writes
    with pytest.raises(SinkRejected) as caught:
        cat.landed({}, later, marker, 8, replay=True, where=WHERE)
    message = str(caught.value)
    assert "cannot tell whether run 8 landed" in message and cat.marker_property(marker) in message
    assert "set_properties" in message and "run again" in message
    with pytest.raises(SinkRejected):  # lowered below a retained later run
        cat.landed({cat.marker_property(marker): "2"}, later, marker, 8, replay=True, where=WHERE)


# ----------------------------------------------------------------------------------------------- config


def _load(tmp_path: Path, iceberg: dict[str, object], **top: object) -> object:
    return load_config(write_config(tmp_path, sinks={"parquet": {"enabled": True},
                                                     "iceberg": {"enabled": True, **iceberg}}, **top))


def test_defaults_a_local_sqlite_catalog_beside_the_tables(tmp_path: Path) -> None:
    config = _load(tmp_path, {})
    settings = config.sinks.iceberg  # type: ignore[attr-defined]
    assert (settings.catalog, settings.namespace, settings.warehouse, settings.keep_snapshots) == (
        "sql", "loader", "iceberg", 10)
    catalogs = cat.Catalogs(settings, str(tmp_path / "warehouse" / "iceberg"))
    assert catalogs.uri == f"sqlite:///{tmp_path}/warehouse/iceberg/catalog.db"
    assert IcebergSinkConfig().enabled is False  # off by default


@pytest.mark.parametrize(("block", "words"), [
    ({"catalog": "rest"}, "catalog rest needs uri"),
    ({"catalog": "rest", "uri": "thrift://x:9083"}, "catalog rest needs uri"),
    ({"token": "abcdefgh"}, "token and credential are for catalog rest"),
    ({"warehouse": "s3://lake/iceberg"}, "set uri to a local one"),
    ({"namespace": "bad-name"}, "sinks.iceberg.namespace"),
])
def test_config_mistakes_are_named_with_the_fix(tmp_path: Path, block: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, block)
    assert words in str(caught.value)


def test_an_s3_loader_warehouse_needs_a_local_catalog_file(tmp_path: Path) -> None:
    """The sink's relative `warehouse` under an s3:// loader warehouse: the default file cannot be there."""
    with pytest.raises(ConfigError) as caught:
        cat.Catalogs(IcebergSinkConfig(enabled=True),
                     SinkContext(pipeline="p", warehouse="s3://lake/wh").path("iceberg"))
    assert "sinks.iceberg.uri" in str(caught.value) and "catalog: rest" in str(caught.value)
    local = cat.Catalogs(IcebergSinkConfig(enabled=True, uri=f"sqlite:///{tmp_path}/c.db"), "s3://lake/wh/iceberg")
    assert local.uri == f"sqlite:///{tmp_path}/c.db"


def test_catalog_secrets_are_registered_and_never_echoed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_secret_name("token") and is_secret_name("credential")
    monkeypatch.setenv("ICEBERG_TOKEN", "tok-9f8e7d6c5b")
    monkeypatch.setenv("ICEBERG_CREDENTIAL", "client:s3cr3t-vAlue")
    with pytest.raises(ConfigError) as caught:  # two problems: the values must not be shown
        _load(tmp_path, {"catalog": "rest", "uri": "http://127.0.0.1:1", "token": "${ICEBERG_TOKEN}",
                         "credential": "${ICEBERG_CREDENTIAL}"})
    assert "set token or credential, not both" in str(caught.value)
    assert "tok-9f8e7d6c5b" not in str(caught.value) and "s3cr3t" not in str(caught.value)
    assert redact("token tok-9f8e7d6c5b and client:s3cr3t-vAlue") == "token *** and ***"


def test_old_snapshots_are_expired_once_there_are_twice_as_many_as_kept(tmp_path: Path) -> None:
    """One expiry commit per `keep` commits, not one after each: below twice `keep` nothing is expired;
    past it, all but the newest `keep`, the current one among them."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("n")
    table = catalog.create_table(("n", "t"), schema=pa.schema([pa.field("id", pa.int64())]))
    for i in range(4):
        table.append(pa.table({"id": pa.array([i], pa.int64())}))
    assert expire_snapshots(table, keep=2) == 0 and len(table.snapshots()) == 4
    table.append(pa.table({"id": pa.array([4], pa.int64())}))
    current = table.current_snapshot().snapshot_id
    assert expire_snapshots(table, keep=2) == 3
    table = catalog.load_table(("n", "t"))
    assert len(table.snapshots()) == 2 and table.current_snapshot().snapshot_id == current
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == [0, 1, 2, 3, 4]  # no row lost


def test_the_batch_rows_a_group_of_files_holds_are_found_sorted_or_not() -> None:
    from loader.sinks.iceberg.files import FileRanges

    ranges = FileRanges(tasks=[None, None, None], regions=["A", "B", "A"], lows=[10, 40, 70],
                        highs=[20, 50, 80])
    ordered = np.array([5, 10, 15, 30, 45, 50, 75, 90])
    assert ranges.holding([0, 1], ordered).tolist() == [False, True, True, False, True, True, False, False]
    shuffled = np.array([90, 45, 5, 15, 75, 10, 30, 50])
    assert ranges.holding([0, 1], shuffled).tolist() == [False, True, False, True, False, True, False, True]
    assert ranges.holding([2], shuffled).tolist() == [False, False, False, False, True, False, False, False]
