"""The Delta merge stays scoped: new keys are appended without reading the table, updates rewrite only
the files whose region and key range they touch, and re-read versions (the lookback) rewrite nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tests.conftest import run_cli, run_json, write_config
from tests.warehouse import assert_warehouse_exact

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
    run_cli(config, "demo-data", "init", "--scale", "0.01", "--days", "3")
    run_json(config, "run", "--incremental")
    orders, lineitem = warehouse / "delta" / "orders", warehouse / "delta" / "lineitem"
    files_before = _files(orders)
    assert files_before >= 15  # small files for the test: several per region

    # Only new keys (and the lookback's re-read versions): appends, no merge, nothing rewritten.
    run_cli(config, "demo-data", "append", "--orders", "100", "--updates", "0", "--late", "0")
    run_json(config, "run", "--incremental")
    for table in (orders, lineitem):
        op = _last_operation(table)
        assert op["operation"] == "WRITE", op
        history = [json.dumps(h) for h in DeltaTable(str(table)).history(2)]
        assert "MERGE" not in history[1], "the lookback's re-read versions caused a merge"

    # Updates of recent orders: one merge that rewrites a few files, never the whole table.
    run_cli(config, "demo-data", "append", "--orders", "0", "--updates", "40", "--late", "0", "--recent", "1500")
    run_json(config, "run", "--incremental")
    op = _last_operation(orders)
    assert op["operation"] == "MERGE"
    assert op["num_target_rows_updated"] == 40
    assert 0 < op["num_target_files_removed"] <= files_before // 2, op
    assert op["num_target_files_scanned"] <= files_before // 2, op
    assert_warehouse_exact(warehouse, landing)
