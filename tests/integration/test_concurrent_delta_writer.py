"""Another writer commits to the same Delta table while a run is between reading it and committing:
the run's commit conflicts, is retried from a fresh snapshot, and the table ends exact."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.gate import Gate, HeldProcess
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def test_commit_conflict_with_concurrent_writer_is_retried(tmp_path: Path) -> None:
    sinks = {"parquet": {"enabled": True, "path": "parquet"},
             "delta": {"enabled": True, "path": "delta", "target_file_mb": 0.05}}
    config = write_config(tmp_path / "p", sinks=sinks)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "0", "--updates", "30",
            "--late", "0", "--recent", "1500")

    # The run waits just before its merge (its only Delta commit for orders) ...
    gate = Gate(tmp_path)
    run = HeldProcess(config, "run", "--incremental", failpoints=gate.failpoint("delta.write@orders"),
                      stdout=subprocess.PIPE).held()
    # ... while another writer rewrites the table's files (a compaction: same rows, new files).
    try:
        table = DeltaTable(str(tmp_path / "p" / "warehouse" / "delta" / "orders"))
        assert table.optimize.compact(target_size=64 * 1024 * 1024)["numFilesRemoved"] > 0
    finally:
        gate.open()
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert "orders -> delta: attempt 1 of 5 failed" in stderr, stderr
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")
