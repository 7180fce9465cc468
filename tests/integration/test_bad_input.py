"""Bad input fails the run clearly, moves no checkpoint, and the fixed landing zone then loads exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from state import StateStore
from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def _checkpoints(config: Path) -> dict:
    sources = run_json(config, "status")["sources"]
    return {name: (s["checkpoint"], s["checkpoint_run"]) for name, s in sources.items()}


def _loaded(config: Path) -> dict:
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    return run_json(config, "run", "--incremental")


def _bad_orders_file(landing: Path, **nulls: bool) -> Path:
    """A new ingest day holding one order copied from the landing zone, with chosen columns null."""
    template = pq.read_table(next((landing / "orders").rglob("*.parquet"))).slice(0, 1)
    columns = {}
    for name in template.column_names:
        column = template[name]
        columns[name] = pa.nulls(1, column.type) if nulls.get(name) else column
    columns["o_orderkey"] = columns["o_orderkey"] if nulls.get("o_orderkey") else pa.array([10**9])
    columns["o_updated_at"] = columns["o_updated_at"] if nulls.get("o_updated_at") else pa.array(
        [datetime(2024, 2, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    folder = landing / "orders" / "ingest_date=2024-02-01"
    folder.mkdir()
    path = folder / "part-bad.parquet"
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(("column", "engine"),
                         [("o_updated_at", "local"), ("o_orderkey", "local"), ("o_updated_at", "ray")])
def test_null_cursor_or_key_over_the_quarantine_threshold_fails_without_moving_checkpoint(
    config_path: Path, column: str, engine: str
) -> None:
    """With quarantine.max_rows: 0 a single bad row stops the run (tests/integration/test_quarantine.py has
    the default: the row is quarantined and the run goes on)."""
    write_config(config_path.parent, quarantine={"max_rows": 0})
    first = _loaded(config_path)
    landing, warehouse = config_path.parent / "landing", config_path.parent / "warehouse"
    before = _checkpoints(config_path)
    bad = _bad_orders_file(landing, **{column: True})
    if column == "o_updated_at":
        # A null cursor has no place in any window: the planner still sees the file's other rows.
        pq.write_table(pa.concat_tables([pq.read_table(bad), _shifted_valid_row(landing)]), bad)
    failed = run_cli(config_path, "run", "--incremental", "--executor", engine, check=False)
    assert failed.returncode == 1, failed.stderr
    error = failed.stderr.splitlines()[-1]
    assert f"1 null {'key' if column == 'o_orderkey' else 'cursor'} {column}" in error, error
    assert "quarantine.max_rows=0" in error and str(warehouse / "quarantine" / "orders") in error, error
    assert _checkpoints(config_path) == before
    assert run_json(config_path, "status")["unfinished_run"]["run_number"] == first["run_number"] + 1

    bad.unlink()
    fixed = run_json(config_path, "run", "--incremental")
    assert fixed["replayed"] is True and fixed["run_number"] == first["run_number"] + 1
    assert fixed["tables"]["orders"]["quarantined"] == {}
    # the replay removed the run's file
    assert not list((warehouse / "quarantine" / "orders").glob("*.parquet"))
    assert_warehouse_exact(warehouse, landing)


def _shifted_valid_row(landing: Path) -> pa.Table:
    row = pq.read_table(next((landing / "orders").rglob("*.parquet"))).slice(0, 1)
    row = row.set_column(row.schema.get_field_index("o_orderkey"), "o_orderkey", pa.array([10**9 + 1]))
    stamp = pa.array([datetime(2024, 2, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    return row.set_column(row.schema.get_field_index("o_updated_at"), "o_updated_at", stamp)


def test_sink_failure_keeps_checkpoint_and_replays_exactly(config_path: Path) -> None:
    """A run that wrote Parquet, then failed in Delta, is replayed with the same run number and windows."""
    landing, warehouse = config_path.parent / "landing", config_path.parent / "warehouse"
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(2))
    blocker = warehouse / "delta" / "lineitem"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder: the Delta sink cannot create its table here")
    failed = run_cli(config_path, "run", "--incremental", check=False)
    assert failed.returncode == 1
    status = run_json(config_path, "status")
    assert status["sources"]["orders"]["checkpoint"] is None
    assert status["unfinished_run"]["run_number"] == 1

    blocker.unlink()
    run_cli(config_path, "demo-data", "append", *append_args(config_path),
            "--orders", "50", "--updates", "10", "--late", "2")
    replay = run_json(config_path, "run", "--incremental")
    # The replay of run 1 (its recorded input: the append is not in it), then the append as run 2.
    assert replay["run_number"] == 1 and replay["replayed"] is True and replay["run_numbers"] == [1, 2]
    assert replay["batches"][0]["replayed"] is True and replay["batches"][1]["replayed"] is False
    assert run_json(config_path, "run", "--incremental")["status"] == "nothing_new"
    assert_warehouse_exact(warehouse, landing)


def test_unreadable_parquet_file_is_named(config_path: Path) -> None:
    _loaded(config_path)
    landing = config_path.parent / "landing"
    folder = landing / "orders" / "ingest_date=2024-03-01"
    folder.mkdir()
    (folder / "part-00099.parquet").write_bytes(b"PAR1 truncated garbage")
    result = run_cli(config_path, "run", "--incremental", check=False)
    assert result.returncode == 1
    assert "part-00099.parquet" in result.stderr and "Replace or remove" in result.stderr


def test_conflicting_delta_table_fails_fast_and_names_it(config_path: Path) -> None:
    """A target table whose columns conflict with the source: a terminal error naming the table, no
    retries, no checkpoint moved."""
    from deltalake import write_deltalake

    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(1))
    target = config_path.parent / "warehouse" / "delta" / "orders"
    write_deltalake(str(target), pa.table({"o_orderkey": [1], "region": ["ASIA"], "o_totalprice": ["cheap"]}),
                    partition_by=["region"])
    result = run_cli(config_path, "run", "--incremental", check=False)
    assert result.returncode == 1
    assert str(target) in result.stderr and "schema" in result.stderr
    assert "retrying" not in result.stderr
    assert run_json(config_path, "status")["sources"]["orders"]["checkpoint"] is None


def _tamper_state(config: Path, statement: str) -> None:
    """Change the SQLite state file behind the loader's back."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{config.parent / 'state' / 'loader.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


def test_corrupt_ledger_row_is_named_and_can_be_abandoned(config_path: Path) -> None:
    """A ledger row that does not parse: a clear error with the fix; after `loader runs abandon`, the
    next run plans afresh and the warehouse ends exact."""
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(1))
    run_cli(config_path, "run", "--incremental", check=False,
            env={"LOADER_FAILPOINTS": "delta.write=terminal"})
    _tamper_state(config_path, "UPDATE runs SET windows = '{not json' WHERE run_number = 1")
    broken = run_cli(config_path, "run", "--incremental", check=False)
    assert broken.returncode == 1
    assert "run 1" in broken.stderr and "loader runs abandon 1" in broken.stderr
    run_cli(config_path, "runs", "abandon", "1")
    fixed = run_json(config_path, "run", "--incremental")
    assert fixed["run_number"] == 2 and fixed["status"] == "committed"
    assert_warehouse_exact(config_path.parent / "warehouse", config_path.parent / "landing")


def test_state_from_a_newer_loader_is_refused(config_path: Path) -> None:
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(1))
    # the state database as this loader makes it (status only reads: it makes none), before any run
    StateStore.open(f"sqlite:///{config_path.parent / 'state' / 'loader.db'}").close()
    _tamper_state(config_path, "UPDATE schema_version SET version = 999 "
                               "WHERE version = (SELECT max(version) FROM schema_version)")
    result = run_cli(config_path, "run", "--incremental", check=False)
    assert result.returncode == 1
    assert "999" in result.stderr and "Upgrade the loader" in result.stderr
    assert not (config_path.parent / "warehouse").exists()
