"""The Delta merge stays scoped: new keys are appended without reading the table, updates rewrite only
the files whose region and key range they touch, and re-read versions (the lookback) rewrite nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def _config(tmp_path: Path) -> Path:
    sinks = {"parquet": {"enabled": True, "path": "parquet"},
             "delta": {"enabled": True, "path": "delta", "target_file_mb": 0.05}}
    return write_config(tmp_path / "project", sinks=sinks)


def _last_operation(table: Path) -> dict:
    entry = DeltaTable(str(table)).history(1)[0]
    metrics = entry.get("operationMetrics", {})
    return {"operation": entry["operation"], **{k: int(v) for k, v in metrics.items() if str(v).isdigit()}}


def _files(table: Path) -> int:
    return pa.table(DeltaTable(str(table)).get_add_actions(flatten=True)).num_rows


def test_merge_rewrites_only_touched_files(tmp_path: Path) -> None:
    config = _config(tmp_path)
    landing, warehouse = tmp_path / "project" / "landing", tmp_path / "project" / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(3))
    run_json(config, "run", "--incremental")
    orders, lineitem = warehouse / "delta" / "orders", warehouse / "delta" / "lineitem"
    files_before = _files(orders)
    assert files_before >= 15  # small files for the test: several per region

    # Only new keys (and the lookback's re-read versions): appends, no merge, nothing rewritten.
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "100", "--updates", "0",
            "--late", "0")
    run_json(config, "run", "--incremental")
    for table in (orders, lineitem):
        op = _last_operation(table)
        assert op["operation"] == "WRITE", op
        history = [json.dumps(h) for h in DeltaTable(str(table)).history(2)]
        assert "MERGE" not in history[1], "the lookback's re-read versions caused a merge"

    # Updates of recent orders: one merge that rewrites a few files, never the whole table.
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "0", "--updates", "40",
            "--late", "0", "--recent", "1500")
    run_json(config, "run", "--incremental")
    op = _last_operation(orders)
    assert op["operation"] == "MERGE"
    assert op["num_target_rows_updated"] == 40
    assert 0 < op["num_target_files_removed"] <= files_before // 2, op
    assert op["num_target_files_scanned"] <= files_before // 2, op
    assert_warehouse_exact(warehouse, landing)


def _middle_file(table: Path, region: str) -> tuple[Path, int, int]:
    """The data file of `region` holding the middle of its key range: (path, min key, max key)."""
    actions = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True)).to_pylist()
    mine = sorted((a for a in actions if a["partition.region"] == region), key=lambda a: a["min.o_orderkey"])
    middle = mine[len(mine) // 2]
    path = next(table.glob(f"region=*/{middle['path'].rsplit('/', 1)[-1]}"))
    return path, middle["min.o_orderkey"], middle["max.o_orderkey"]


def test_updates_across_history_read_only_the_files_they_touch(tmp_path: Path) -> None:
    """Updates of the oldest and of the newest orders in one run: the landed-version check and the merge
    read only the files whose key range holds a key of the run, not the files between (a scope spanning
    oldest to newest would read the whole table). Proven on disk: a data file in the middle of the
    history is removed first, and the run, which would fail reading it, lands exactly."""
    config = _config(tmp_path)
    landing, warehouse = tmp_path / "project" / "landing", tmp_path / "project" / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(6))
    run_json(config, "run", "--incremental")
    orders = warehouse / "delta" / "orders"
    files_before = _files(orders)
    checkpoint = pc.max(DeltaTable(str(orders)).to_pyarrow_table(columns=["o_updated_at"])["o_updated_at"])
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "0", "--updates", "15",
            "--late", "0", "--update-from", "oldest", "--recent", "300")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "0", "--updates", "15",
            "--late", "0", "--update-from", "newest", "--recent", "300")
    # every key the run reads: the updates and the lookback's hour before the checkpoint
    lower = pa.scalar(checkpoint.as_py() - timedelta(hours=1), checkpoint.type)
    window = ds.dataset(landing / "orders", format="parquet", partitioning="hive").to_table(
        columns=["o_orderkey"], filter=ds.field("o_updated_at") > lower)["o_orderkey"].to_pylist()
    gone, low, high = _middle_file(orders, "ASIA")
    assert window and not any(low <= key <= high for key in window), (
        "the test needs a file no key of the run touches")
    saved = gone.read_bytes()
    gone.unlink()

    summary = run_json(config, "run", "--incremental")
    assert summary["status"] == "committed"
    op = _last_operation(orders)
    assert op["operation"] == "MERGE" and op["num_target_rows_updated"] == 30, op
    # both ends of each region's history, a file or two each: far fewer than the table holds
    assert op["num_target_files_scanned"] <= 10 < files_before, (op, files_before)
    gone.write_bytes(saved)
    assert_warehouse_exact(warehouse, landing)
