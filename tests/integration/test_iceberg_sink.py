"""The Iceberg sink end to end: `loader run` through the real CLI with Parquet and Iceberg, `loader verify`
passing and then failing on a row removed behind the loader's back, a replay of a landed run skipping
even after others rewrote the table and expired the snapshots carrying its marker, a changed column type
refused, an unreachable REST catalog named with the fix, doctor's line, and an s3:// warehouse (moto's
server) with a local SQLite catalog. Tables are read with pyiceberg (tests/support/readers.py)."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loader.errors import SinkRejected
from tests.support.cli import FAIL_FAST_S, run_cli, run_json, write_config
from tests.support.conformance import (
    DELETES_SCHEMA,
    REGIONS,
    SCHEMA,
    TABLE,
    batch_of,
    live,
    make_sink,
    row,
    sort_state,
    table_of,
    tombstone,
    write_whole,
)
from tests.support.demo_clock import append_args, init_args
from tests.support.readers import iceberg_table, read_iceberg
from tests.support.s3_server import free_port, moto_s3

pytestmark = pytest.mark.integration

SINKS = {"parquet": {"enabled": True}, "delta": {"enabled": False}, "iceberg": {"enabled": True}}
LEASE_TTL_S = 1  # a killed run's lease expires by itself this soon
STATE = {"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"}


def _catalog(project: Path) -> tuple[str, str]:
    warehouse = project / "warehouse" / "iceberg"
    return f"sqlite:///{warehouse}/catalog.db", str(warehouse)


def _orders(project: Path) -> Any:
    table = iceberg_table(*_catalog(project), "loader", "orders")
    assert table is not None, "no Iceberg table orders"
    return table


def _load(config: Path) -> None:
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "60", "--updates", "30",
            "--late", "5")


def test_run_then_verify_passes_and_a_row_removed_by_others_fails_naming_iceberg(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p", sinks=SINKS)
    _load(config)
    second = run_json(config, "run", "--incremental")
    orders = second["tables"]["orders"]["sinks"]["iceberg"]
    assert not orders["skipped"] and orders["rows"] > 0
    assert orders["location"].endswith("iceberg/loader/orders")
    report = run_json(config, "verify")
    assert report["ok"] is True
    assert {c["table"] for c in report["checks"] if c["sink"] == "iceberg"} == {
        "orders", "lineitem", "customer", "supplier", "nation", "region"}

    table = _orders(tmp_path / "p")
    summaries = [s.summary.additional_properties for s in table.snapshots()]
    assert all(s.get("loader.pipeline") for s in summaries)  # every snapshot is a loader commit
    assert table.properties["loader.key"] == "o_orderkey"
    assert int(table.properties[f"loader.run.{report_pipeline(config)}/orders"]) >= 2
    assert [f"{f.transform}" for f in table.spec().fields] == ["identity"]

    victim = table.scan(selected_fields=("o_orderkey", "region")).to_arrow().slice(0, 1).to_pylist()[0]
    from pyiceberg.expressions import EqualTo

    table.delete(EqualTo("o_orderkey", victim["o_orderkey"]))  # someone else's commit
    result = run_cli(config, "verify", "--json", check=False)
    assert result.returncode == 1, result.stderr
    bad = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert [(c["table"], c["region"], c["sink"]) for c in bad] == [("orders", victim["region"], "iceberg")]
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"] - 1
    assert "iceberg" in result.stderr


def report_pipeline(config: Path) -> str:
    import yaml

    return str(yaml.safe_load(config.read_text())["pipeline"])


def test_replay_of_a_landed_run_skips_after_others_expired_its_snapshots(tmp_path: Path) -> None:
    """Run 2 lands in Iceberg, then the process dies before the checkpoint: the next run replays it.
    Meanwhile others rewrote the table (a compaction: one snapshot of theirs) and expired every older
    snapshot, so no snapshot carries the loader's marker: the marker property still says run 2 landed,
    the replay skips, and nothing is stored twice."""
    project = tmp_path / "p"
    config = write_config(project, sinks=SINKS, state=STATE)
    _load(config)
    crashed = run_cli(config, "run", "--incremental", check=False,
                      env={"LOADER_FAILPOINTS": "checkpoint.before=crash"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    time.sleep(LEASE_TTL_S + 0.5)
    table = _orders(project)
    rows = table.scan().to_arrow()
    table.overwrite(rows)  # others: a rewrite of every file, the same rows
    table = _orders(project)
    table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
    table = _orders(project)
    assert not any("loader.run" in s.summary.additional_properties for s in table.snapshots())

    replay = run_json(config, "run", "--incremental")
    assert replay["tables"]["orders"]["sinks"]["iceberg"]["skipped"] is True, replay["tables"]["orders"]
    after = _orders(project).scan().to_arrow()
    assert after.num_rows == rows.num_rows == len(set(after["o_orderkey"].to_pylist()))
    assert run_json(config, "verify")["ok"] is True


def test_a_merge_touching_most_files_reads_them_a_group_at_a_time_and_lands_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny files (dozens) merged one file a group: a batch of updates spread over the whole key range, a
    hard delete, a key moving region, a version already stored, new keys inside a gap of the stored
    range and above it lands exactly by the rule, rewriting only the files that lose a row. (Kills inside
    the sink are the kill matrix's, tests/integration/test_kill_matrix.py.)"""
    from loader.sinks.iceberg import facts

    monkeypatch.setattr(facts, "GROUP_MIN_ROWS", 1)  # every touched file a group of its own
    sut = make_sink("iceberg", tmp_path / "p")
    sink: Any = sut.sink
    sink.tables = dataclasses.replace(sink.tables, target_bytes=1_000)  # about ten rows a file
    state = {k: 1 for k in range(1, 301) if not 150 <= k < 160}
    sut.write(batch_of(1, table_of([live(k, v) for k, v in state.items()], DELETES_SCHEMA), deletes="hard"))
    table = iceberg_table(*_catalog_of(tmp_path / "p"), "loader", TABLE)
    files_before = len(table.inspect.files())
    assert files_before >= 20, files_before
    other = next(r for r in REGIONS if r != row(80)["region"])
    changes = [*(live(k, 2) for k in (5, 60, 120, 200, 299)), live(7, 1), tombstone(100, 2),
               {**live(80, 2), "region": other}, *(live(k, 1) for k in (151, 152, 305, 306))]
    batch = table_of(sorted(changes, key=lambda r: r["id"]), DELETES_SCHEMA)
    result = write_whole(sut.sink, batch_of(2, batch, deletes="hard"))
    state.update({k: 2 for k in (5, 60, 120, 200, 299, 80)} | {k: 1 for k in (151, 152, 305, 306)})
    del state[100]
    want = table_of([{**row(k, v), **({"region": other} if k == 80 else {})}
                     for k, v in sorted(state.items())])
    assert sort_state(sut.latest()).equals(sort_state(want))
    assert (result.rows, result.deleted) == (10, 1)
    summary = iceberg_table(*_catalog_of(tmp_path / "p"), "loader", TABLE).current_snapshot().summary
    rewritten = int(summary["deleted-data-files"])
    assert 3 <= rewritten < files_before // 2, (rewritten, files_before)  # the files that lost a row only


def _catalog_of(project: Path) -> tuple[str, str]:
    warehouse = project / "warehouse" / "iceberg"
    return f"sqlite:///{warehouse}/catalog.db", str(warehouse)


def test_a_changed_column_type_is_refused_naming_the_column_both_types_and_the_fix(tmp_path: Path) -> None:
    """int32 -> int64 too: pyiceberg would widen it silently; the loader never casts a stored column."""
    sut = make_sink("iceberg", tmp_path / "project")
    counted = SCHEMA.append(pa.field("qty", pa.int32()))
    write_whole(sut.sink, batch_of(1, table_of([{**row(1), "qty": 1}], counted)))
    stored = sut.stored_all()
    wider = SCHEMA.append(pa.field("qty", pa.int64()))
    batch = batch_of(2, table_of([{**row(1, 2), "qty": 2}], wider))
    for step in (lambda: sut.sink.check_columns(TABLE, wider), lambda: write_whole(sut.sink, batch)):
        with pytest.raises(SinkRejected) as caught:
            step()
        message = str(caught.value)
        assert "qty: stored int32, this run int64" in message and "move the table away" in message
    assert sut.stored_all().equals(stored)
    # a new column is added, nullable: the stored rows read it as null
    more = SCHEMA.append(pa.field("qty", pa.int32())).append(pa.field("extra", pa.string()))
    write_whole(sut.sink, batch_of(3, table_of([{**row(2), "qty": 3, "extra": "x"}], more)))
    got = {r["id"]: r["extra"] for r in sut.stored_all().to_pylist()}
    assert got == {1: None, 2: "x"}


def test_a_table_partitioned_or_keyed_otherwise_is_refused_naming_both(tmp_path: Path) -> None:
    """A table of that name made by others: partitioned by another column, or merged on another key (its
    `loader.key` property): the write is refused before anything lands, naming what the table has and
    what the loader writes; the table is left as it was."""
    from pyiceberg.catalog.sql import SqlCatalog

    sut = make_sink("iceberg", tmp_path / "p")
    catalog_uri, warehouse = _catalog_of(tmp_path / "p")
    Path(warehouse).mkdir(parents=True)
    catalog = SqlCatalog("loader", uri=catalog_uri, warehouse=f"file://{warehouse}")
    catalog.create_namespace("loader")
    theirs = catalog.create_table(("loader", TABLE), schema=SCHEMA)
    with theirs.update_spec() as spec:
        spec.add_identity("note")
    batch = batch_of(1, table_of([row(1), row(2)]))
    with pytest.raises(SinkRejected) as refused:
        sut.write(batch)
    assert "partitioned by [identity(note)]" in str(refused.value)
    assert "the loader writes it partitioned by [identity(region)]" in str(refused.value)
    assert catalog.load_table(("loader", TABLE)).current_snapshot() is None  # nothing landed
    catalog.drop_table(("loader", TABLE))
    sut.write(batch)  # made by the loader: merged on id
    table = catalog.load_table(("loader", TABLE))
    with table.transaction() as tx:
        tx.set_properties({"loader.key": "note"})
    with pytest.raises(SinkRejected) as refused:
        sut.write(batch_of(2, table_of([row(1, 2)])))
    assert "merged on key (note), the config's key is (id)" in str(refused.value)
    assert sort_state(sut.latest()).equals(sort_state(table_of([row(1), row(2)])))


def test_a_commit_losing_to_another_writer_is_redone_on_fresh_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink is held after it read the table and wrote its files; meanwhile another writer (pyiceberg,
    outside the sink) deletes key 3, rewriting the file the batch rewrites too. The held commit fails
    validation, the sink redoes the merge on the table as it is now: key 3 stays deleted (a stale rewrite
    would bring it back), the batch lands once."""
    import threading

    from pyiceberg.expressions import EqualTo

    from loader import failpoints
    from loader.config import load_config
    from tests.support.conformance import iceberg_location
    from tests.support.gate import Gate

    sut = make_sink("iceberg", tmp_path / "project")
    write_whole(sut.sink, batch_of(1, table_of(row(k) for k in (1, 2, 3, 5, 6))))
    gate = Gate(tmp_path)
    monkeypatch.setenv(failpoints.ENV, gate.failpoint("iceberg.write", "*1"))
    failpoints.reload()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_whole(sut.sink, batch_of(2, table_of([row(2, 2), row(7)])))
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    held = threading.Thread(target=write)
    held.start()
    try:
        while not gate.waiting():
            assert held.is_alive(), errors
            time.sleep(0.01)
        catalog, warehouse = iceberg_location(load_config(tmp_path / "project" / "loader.yaml"))
        other = iceberg_table(catalog, warehouse, "loader", TABLE)
        other.delete(EqualTo("id", 3))
    finally:
        gate.open()
        held.join(timeout=120)
        monkeypatch.delenv(failpoints.ENV)
        failpoints.reload()
    assert not held.is_alive() and not errors, errors
    got = {r["id"]: r["note"] for r in sut.stored().to_pylist()}
    assert got == {1: row(1)["note"], 2: row(2, 2)["note"], 5: row(5)["note"], 6: row(6)["note"],
                   7: row(7)["note"]}


def test_an_unreachable_rest_catalog_is_named_with_the_fix_by_run_and_doctor(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    sinks = {**SINKS, "iceberg": {"enabled": True, "catalog": "rest", "uri": f"http://127.0.0.1:{port}",
                                  "token": "${ICEBERG_TOKEN}", "retry": {"attempts": 1}}}
    config = write_config(tmp_path / "p", sinks=sinks)
    env = {"ICEBERG_TOKEN": "iceberg-secret-token-42"}
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(1), env=env)
    started = time.monotonic()
    result = run_cli(config, "run", "--incremental", check=False, env=env)
    assert result.returncode == 1
    assert f"127.0.0.1:{port} unreachable" in result.stderr and "sinks.iceberg.uri" in result.stderr
    assert "iceberg-secret-token-42" not in result.stdout + result.stderr
    doctor = run_cli(config, "doctor", "--json", check=False, env=env)
    assert time.monotonic() - started < 2 * FAIL_FAST_S
    check = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["sink iceberg"]
    assert check["status"] == "failed" and f"127.0.0.1:{port}" in check["detail"], check
    assert "sinks.iceberg.uri" in check["detail"]
    assert "iceberg-secret-token-42" not in doctor.stdout + doctor.stderr


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): ("dir", 0) if p.is_dir() else ("file", p.stat().st_size)
            for p in sorted(root.rglob("*"))}


def test_doctor_checks_the_iceberg_catalog_and_writes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p", sinks=SINKS)
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(1))
    before = _tree(tmp_path)
    checks = {c["name"]: c for c in run_json(config, "doctor")["checks"]}
    assert checks["sink iceberg"]["status"] == "ok", checks["sink iceberg"]
    assert _tree(tmp_path) == before  # no catalog file, no warehouse folder made
    run_json(config, "run", "--incremental")
    before = _tree(tmp_path)
    checks = {c["name"]: c for c in run_json(config, "doctor")["checks"]}
    assert checks["sink iceberg"]["status"] == "ok", checks["sink iceberg"]
    assert _tree(tmp_path) == before


def test_s3_warehouse_with_a_local_sqlite_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables on moto's S3 server, the catalog a local SQLite file: merges, hard deletes (the tombstones
    table on S3 too) and a replay, each read back with pyiceberg."""
    with moto_s3("lake") as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        catalog = f"sqlite:///{tmp_path}/iceberg-catalog.db"
        config = write_config(tmp_path / "p", warehouse="s3://lake/wh",
                              sinks={"parquet": {"enabled": False}, "delta": {"enabled": False},
                                     "iceberg": {"enabled": True, "uri": catalog}})
        from loader.config import load_config
        from loader.sinks import enabled_sinks

        [sink] = enabled_sinks(load_config(config))
        assert sink.probe() is None
        runs = [[live(k) for k in range(1, 7)],
                [live(1, 2), tombstone(2, 2), live(7), tombstone(9, 1)],
                [live(2, 1), live(8)]]  # 2: older than its tombstone: stays deleted
        for number, run in enumerate(runs, 1):
            write_whole(sink, batch_of(number, table_of(run, DELETES_SCHEMA), deletes="hard"))
        again = write_whole(sink, batch_of(3, table_of(runs[2], DELETES_SCHEMA), deletes="hard", replay=True))
        assert again.skipped
        props = {"s3.endpoint": f"http://127.0.0.1:{s3.port}", "s3.access-key-id": s3.key_id,
                 "s3.secret-access-key": s3.secret, "s3.region": "us-east-1"}
        stored = read_iceberg(catalog, "s3://lake/wh/iceberg", "loader", TABLE, **props)
        assert stored is not None
        got = {r["id"]: r["note"] for r in stored.to_pylist()}
        assert got == {1: row(1, 2)["note"], 3: row(3)["note"], 4: row(4)["note"], 5: row(5)["note"],
                       6: row(6)["note"], 7: row(7)["note"], 8: row(8)["note"]}
        side = read_iceberg(catalog, "s3://lake/wh/iceberg", "loader", TABLE + "__tombstones", **props)
        assert side is not None and sorted(side["id"].to_pylist()) == [2, 9]
        table = iceberg_table(catalog, "s3://lake/wh/iceberg", "loader", TABLE, **props)
        assert table.location() == "s3://lake/wh/iceberg/loader/events"
        sink.close()
