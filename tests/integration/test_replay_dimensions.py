"""A replay enriches from the dimension version its batch recorded, not from today's files (issue #26,
case 3), and `loader verify` places each row by that version: customers that moved since keep their
facts where they loaded, and verify still checks every region.

The crash: Delta commits orders while the Parquet sink waits inside its write (a gate never opened);
then 1,000 of the 1,500 customers change; then the replay. Both sinks must then hold the same rows,
column for column."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.readers import delta_rows, parquet_versions

pytestmark = pytest.mark.integration

LEASE_TTL_S = 3  # the killed run's lease expires by itself this soon


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "project",
                        state={"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"})


def _crash_between_sinks(config: Path, gate: Path) -> None:
    """A run that dies once Delta committed orders, before the Parquet sink finished them."""
    env = {"LOADER_FAILPOINTS": f"parquet.write@orders=wait:{gate},delta.commit@orders=crash"}
    killed = run_cli(config, "run", "--incremental", check=False, env=env)
    assert killed.returncode == -9, killed.stderr
    time.sleep(LEASE_TTL_S + 0.5)


def _by_version(table: pa.Table, cursor: str) -> dict[tuple[int, object], dict[str, object]]:
    return {(row["o_orderkey"], row[cursor]): row for row in table.to_pylist()}


def _sinks_compared(warehouse: Path,
                    cursor: str) -> tuple[list[tuple[int, object]], list[str], dict[str, int]]:
    """The orders versions Delta and Parquet both hold, the columns both store, and per column how many
    of those versions differ in it between the two."""
    delta = _by_version(delta_rows(warehouse, "orders"), cursor)
    parquet = _by_version(parquet_versions(warehouse, "orders"), cursor)
    both = [version for version in parquet if version in delta]
    columns = [c for c in delta[both[0]] if c in parquet[both[0]]] if both else []
    return both, columns, {c: sum(1 for v in both if delta[v][c] != parquet[v][c]) for c in columns}


def _customers_change(config: Path, count: int) -> str:
    """An append that only changes `count` customers (a new customer snapshot)."""
    return run_cli(config, "demo-data", "append", *append_args(config), "--orders", "0", "--updates", "0",
                   "--late", "0", "--customer-changes", str(count)).stdout


def _parquet_orders_files(warehouse: Path) -> list[Path]:
    return sorted(p.relative_to(warehouse) for p in (warehouse / "parquet" / "orders").rglob("*.parquet"))


def _crashed_then_changed(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: int) -> tuple[Path, str]:
    """Loaded once; a run crashed between its sinks; `changes` customers changed; the dimension cache
    (a folder of the test's own) wiped, as on another machine."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOADER_CACHE_DIR", str(cache))
    warehouse, cursor = _loaded_once(config)
    _crash_between_sinks(config, tmp_path / "never-opened")
    _customers_change(config, changes)
    shutil.rmtree(cache)
    return warehouse, cursor


def _loaded_once(config: Path) -> tuple[Path, str]:
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    out = run_cli(config, "demo-data", "append", *append_args(config), "--orders", "300", "--updates", "0",
                  "--late", "0").stdout
    assert "300" in out, out
    return config.parent / "warehouse", "o_updated_at"


def test_a_replay_after_customers_changed_lands_the_same_rows_in_every_sink(
        config_path: Path, tmp_path: Path) -> None:
    warehouse, cursor = _loaded_once(config_path)
    _crash_between_sinks(config_path, tmp_path / "never-opened")
    changed = _customers_change(config_path, 1000)
    assert "1,000 customers changed" in changed, changed

    replay = run_json(config_path, "run", "--incremental")
    assert replay["replayed"] is True

    replayed, columns, differing = _sinks_compared(warehouse, cursor)
    assert len(replayed) >= 300
    assert {"region", "nation", "c_phone", "currency", "amount_local"} <= set(columns)
    assert not any(differing.values()), differing

    verified = run_cli(config_path, "verify", "--json")
    report = json.loads(verified.stdout)
    assert report["ok"] is True
    # every fact check is per region (no fallback over all regions), and no note excuses moved rows
    assert {c["region"] for c in report["checks"] if c["table"] == "orders"} >= {"AFRICA", "ASIA", "EUROPE"}
    assert "moved" not in verified.stderr and "(all)" not in verified.stdout


def test_a_replay_after_the_cache_was_wiped_enriches_from_the_state_store(
        config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept lookups gone from the dimension cache (another machine, a new container): the state
    store keeps the version's prepared lookups until no replay needs them, and the replay uses those."""
    warehouse, cursor = _crashed_then_changed(config_path, tmp_path, monkeypatch, 500)
    replay = run_json(config_path, "run", "--incremental")
    assert replay["replayed"] is True
    both, _, differing = _sinks_compared(warehouse, cursor)
    assert len(both) >= 300 and differing["c_phone"] == 0 and differing["region"] == 0
    assert run_json(config_path, "verify")["ok"] is True
    # The state store keeps the first version whole (the base of the others' changes) and the newest
    # whole; the newest also as its changes from the first (kept once it is not the newest).
    with sqlite3.connect(config_path.parent / "state" / "loader.db") as db:
        kept = db.execute("SELECT COUNT(*), COUNT(prepared), COUNT(delta), "
                          "MAX(LENGTH(delta)) < MAX(LENGTH(prepared)) "
                          "FROM lookup_versions").fetchone()
    assert kept == (2, 2, 1, 1)


def test_a_replay_whose_dimension_version_is_gone_stops_and_writes_nothing(
        config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version's lookups neither cached nor in the state store (as a run recorded by an older
    loader) and the files changed: no replay from today's files (it would enrich differently from
    Delta's rows); the error says what to do."""
    warehouse, _ = _crashed_then_changed(config_path, tmp_path, monkeypatch, 50)
    with sqlite3.connect(config_path.parent / "state" / "loader.db") as db:
        db.execute("UPDATE lookup_versions SET prepared = NULL")
    before = _parquet_orders_files(warehouse)

    failed = run_cli(config_path, "run", "--incremental", check=False)
    assert failed.returncode == 1, failed.stderr
    assert "enriched its rows from the dimension files as they were" in failed.stderr
    assert "restore the dimension files" in failed.stderr
    assert _parquet_orders_files(warehouse) == before


def test_a_run_that_began_writing_replays_only_the_input_it_read(config_path: Path, tmp_path: Path) -> None:
    """Delta committed the run's orders from a fact file that is then rewritten (the same rows, another
    encoding: another size and modification time): a replay reading it as it is now would mix two
    inputs, so it stops before writing, naming the file; with the file put back as it was (bytes and
    modification time) the replay lands, every sink alike."""
    warehouse, cursor = _loaded_once(config_path)
    _crash_between_sinks(config_path, tmp_path / "never-opened")
    with sqlite3.connect(config_path.parent / "state" / "loader.db") as db:
        (inputs,) = db.execute("SELECT inputs FROM runs WHERE status = 'planned'").fetchone()
    newest = Path(max(entry["path"] for entry in json.loads(inputs)["sources"]["orders"]["files"]))
    saved = tmp_path / "saved.parquet"
    shutil.copy2(newest, saved)
    pq.write_table(pq.read_table(newest), newest, compression="none")
    before = _parquet_orders_files(warehouse)

    stopped = run_cli(config_path, "run", "--incremental", check=False)
    assert stopped.returncode == 1, stopped.stderr
    assert str(newest) in stopped.stderr and "rewritten since" in stopped.stderr, stopped.stderr
    assert "loader runs abandon" in stopped.stderr
    assert _parquet_orders_files(warehouse) == before

    shutil.copy2(saved, newest)
    assert run_json(config_path, "run", "--incremental")["replayed"] is True
    assert run_json(config_path, "verify")["ok"] is True
    both, _, differing = _sinks_compared(warehouse, cursor)
    # Parquet holds every Delta row
    assert set(both) == set(_by_version(delta_rows(warehouse, "orders"), cursor))
    assert not any(differing.values()), differing
