"""init -> run -> append (updates, late records) -> run -> empty run, through the real CLI, with every
sink compared to an independent DuckDB computation over the landing zone."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from loader.transform.frames import gpu_status
from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.postgres import pg_database
from tests.support.readers import delta_rows
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def _paths(config: Path) -> tuple[Path, Path]:
    return config.parent / "landing", config.parent / "warehouse"


def _encodings(path: Path) -> tuple[set[str], dict[str, bool]]:
    """The codecs of a Parquet file's column chunks, and per column whether it is dictionary-encoded."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunks = [meta.column(i) for i in range(meta.num_columns)]
    return ({c.compression for c in chunks},
            {c.path_in_schema: any("DICTIONARY" in e for e in c.encodings) for c in chunks})


def _assert_file_settings(warehouse: Path) -> None:
    """Both sinks compress (Parquet: zstd as configured; Delta: snappy, delta-rs's codec) and give a
    dictionary to a column that repeats its values (the order priority: 5 values), not to one that
    does not (the order key)."""
    for sink, codec in (("parquet", "ZSTD"), ("delta", "SNAPPY")):
        table = warehouse / sink / "orders"
        files = sorted(p for p in table.rglob("*.parquet")
                       if not any(part.startswith((".", "_")) for part in p.relative_to(table).parts))
        codecs, dictionary = _encodings(files[0])
        assert codecs == {codec}, (sink, codecs)
        assert dictionary["o_orderpriority"] and not dictionary["o_orderkey"], (sink, dictionary)


@pytest.mark.parametrize("state_store", ["sqlite", "postgres"])
def test_incremental_lifecycle(tmp_path: Path, request: pytest.FixtureRequest, state_store: str) -> None:
    url = "sqlite:///state/loader.db"
    if state_store == "postgres":
        url = pg_database(request.getfixturevalue("pg_url"))
    config_path = write_config(tmp_path / "project", state={"url": url, "lease_ttl": "60s"})
    landing, warehouse = _paths(config_path)
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(5))

    first = run_json(config_path, "run", "--incremental")
    assert first["status"] == "committed" and first["run_number"] == 1
    assert first["executor"] == "local"
    assert first["engine"] == ("gpu" if gpu_status().usable else "cpu"), first["engine_reason"]
    assert first["tables"]["orders"]["rows"] == 15000
    assert first["tables"]["orders"]["sinks"]["delta"]["rows"] == 15000
    assert_warehouse_exact(warehouse, landing)
    if state_store == "sqlite":
        _assert_file_settings(warehouse)

    run_cli(config_path, "demo-data", "append", *append_args(config_path),
            "--orders", "300", "--updates", "100", "--late", "10")
    plan = run_json(config_path, "plan")
    orders_plan = plan["sources"]["orders"]
    # Only the new day's folder (and the lookback's) is listed and read, not the history's folders.
    on_disk = len(list((landing / "orders").rglob("*.parquet")))
    assert orders_plan["files"] <= orders_plan["files_listed"] < on_disk
    second = run_json(config_path, "run", "--incremental")
    assert second["run_number"] == 2
    # 300 new + 100 updates + 10 late orders, plus the lookback's re-read of the newest old rows.
    assert second["tables"]["orders"]["rows"] >= 410
    assert second["tables"]["orders"]["rows"] < 15000
    assert_warehouse_exact(warehouse, landing)
    assert delta_rows(warehouse, "orders").num_rows == 15000 + 300 + 10

    empty = run_json(config_path, "run", "--incremental")
    assert empty["status"] == "nothing_new"
    assert empty["run_number"] is None and empty["tables"] == {} and empty["executor"] is None
    status = run_json(config_path, "status")
    assert status["last_run"]["run_number"] == 2
    assert status["sources"]["orders"]["checkpoint_run"] == 2


def test_copied_config_keeps_its_data_beside_it(tmp_path: Path, config_path: Path) -> None:
    """Relative paths resolve against the config file's folder, not the working directory."""
    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(2))
    assert (config_path.parent / "landing" / "orders").is_dir()
    run_json(config_path, "run", "--incremental")
    assert (config_path.parent / "state" / "loader.db").is_file()
    assert (config_path.parent / "warehouse" / "delta" / "orders" / "_delta_log").is_dir()


def test_missing_landing_zone_fails_clearly(config_path: Path) -> None:
    result = run_cli(config_path, "run", "--incremental", check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "demo-data init" in result.stderr
    status = run_json(config_path, "status")
    assert status["sources"]["orders"]["checkpoint"] is None


def test_config_typo_reports_key_path(config_path: Path) -> None:
    raw = yaml.safe_load(config_path.read_text())
    raw["sources"]["orders"]["cursr"] = raw["sources"]["orders"].pop("cursor")
    config_path.write_text(yaml.safe_dump(raw))
    result = run_cli(config_path, "validate-config", check=False)
    assert result.returncode == 2
    assert "sources.orders.cursr: unknown key" in result.stderr
    assert "sources.orders.cursor: required key is missing" in result.stderr


def test_lease_held_exits_with_its_code_and_names_holder(config_path: Path) -> None:
    from loader.config import load_config
    from state import StateStore

    run_cli(config_path, "demo-data", "init", "--scale", "0.01", *init_args(1))
    config = load_config(config_path)
    store = StateStore.open(config.state.url)
    try:
        store.acquire_lease(config.pipeline, holder="otherhost:4242:abcd", ttl_seconds=600)
        result = run_cli(config_path, "run", "--incremental", check=False)
    finally:
        store.release_lease(config.pipeline, holder="otherhost:4242:abcd")
        store.close()
    assert result.returncode == 3
    assert "otherhost:4242:abcd" in result.stderr
    assert run_json(config_path, "status")["sources"]["orders"]["checkpoint"] is None
