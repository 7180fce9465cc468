"""`loader verify` through the real CLI: a loaded warehouse passes; a lost Delta row and a duplicated
Parquet file fail, naming table, region and sink; landing data no run has read yet does not count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from tests.support.cli import run_cli, run_json
from tests.support.demo_clock import append_args, init_args

pytestmark = pytest.mark.integration


def _load(config: Path) -> Path:
    """init -> run -> append -> run; returns the warehouse folder."""
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "300", "--updates", "100",
            "--late", "10")
    run_json(config, "run", "--incremental")
    return config.parent / "warehouse"


def _failed(config: Path) -> tuple[dict[str, Any], str]:
    result = run_cli(config, "verify", "--json", check=False)
    assert result.returncode == 1, result.stderr
    return json.loads(result.stdout), result.stderr


def test_verify_passes_after_incremental_runs(config_path: Path) -> None:
    _load(config_path)
    report = run_json(config_path, "verify")
    assert report["ok"] is True
    assert {(c["table"], c["sink"]) for c in report["checks"]} == {  # facts, and each dimension table
        (t, s) for t in ("orders", "lineitem", "customer", "supplier", "nation", "region")
        for s in ("delta", "parquet")
    }
    orders = [c for c in report["checks"] if c["table"] == "orders" and c["sink"] == "delta"]
    assert sum(c["expected_rows"] for c in orders) == 15000 + 300 + 10
    assert all(c["ok"] and c["duplicates"] == 0 and c["expected_checksum"] == c["actual_checksum"]
               for c in report["checks"])
    only = run_json(config_path, "verify", "--table", "lineitem")
    assert {c["table"] for c in only["checks"]} == {"lineitem"}
    dimension = run_json(config_path, "verify", "--table", "customer", "--table", "orders")
    assert {c["table"] for c in dimension["checks"]} == {"customer", "orders"}  # any table verify checks
    unknown = run_cli(config_path, "verify", "--table", "custmer", check=False)
    assert unknown.returncode == 2
    assert "orders, lineitem, customer, supplier, nation, region" in unknown.stderr
    table = run_cli(config_path, "verify")
    assert "MISMATCH" not in table.stdout and "orders" in table.stdout


def test_appended_but_unloaded_data_does_not_fail(config_path: Path) -> None:
    _load(config_path)
    # Late records land below the checkpoint, yet no committed run has read them: still not a mismatch.
    append = run_cli(config_path, "demo-data", "append", *append_args(config_path),
                     "--orders", "200", "--updates", "50", "--late", "20")
    assert "20 late" in append.stdout
    assert run_json(config_path, "verify")["ok"] is True


def test_deleted_delta_row_fails_naming_table_region_and_sink(config_path: Path) -> None:
    warehouse = _load(config_path)
    table = DeltaTable(str(warehouse / "delta" / "orders"))
    victim = table.to_pyarrow_dataset().to_table(columns=["o_orderkey", "region"]).slice(0, 1).to_pylist()[0]
    table.delete(f"o_orderkey = {victim['o_orderkey']}")

    report, stderr = _failed(config_path)
    bad = [c for c in report["checks"] if not c["ok"]]
    assert [(c["table"], c["region"], c["sink"]) for c in bad] == [("orders", victim["region"], "delta")]
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"] - 1
    assert "orders" in stderr and victim["region"] in stderr and "delta" in stderr


def test_duplicated_parquet_file_fails(config_path: Path) -> None:
    warehouse = _load(config_path)
    original = sorted((warehouse / "parquet" / "orders").glob("region=*/date=*/run-*.parquet"))[0]
    shutil.copy(original, original.with_name("run-99999999-0.parquet"))
    region = original.parent.parent.name.removeprefix("region=")

    report, stderr = _failed(config_path)
    bad = [c for c in report["checks"] if not c["ok"]]
    assert [(c["table"], c["region"], c["sink"]) for c in bad] == [("orders", region, "parquet")]
    assert bad[0]["duplicates"] == pq.read_metadata(original).num_rows
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"]  # same latest versions, only duplicated
    assert "parquet" in stderr and region in stderr


def test_never_loaded_pipeline_has_nothing_to_verify(config_path: Path) -> None:
    result = run_cli(config_path, "verify", "--json")
    note = f"pipeline {_pipeline(config_path)!r} was never loaded: nothing to verify (run `loader run` first)"
    assert json.loads(result.stdout) == {"ok": True, "checks": [], "notes": [note]}  # notes in --json too
    assert note in result.stderr


def _pipeline(config: Path) -> str:
    return str(yaml.safe_load(config.read_text())["pipeline"])
