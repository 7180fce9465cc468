"""The in-process engine and the Ray Data engine give identical sink contents, run after run; on Ray the
batches are cut into several parts (Delta commits each in turn, Iceberg stages all but the last and
commits once)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.readers import delta_rows, iceberg_rows, parquet_versions
from tests.support.warehouse import assert_warehouse_exact

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _sorted(table: pa.Table, columns: list[str]) -> pa.Table:
    return table.select(columns).sort_by([(c, "ascending") for c in columns[:3]])


def test_local_and_ray_engines_write_identical_sinks(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": True}, "iceberg": {"enabled": True}}
    local = write_config(tmp_path / "local", landing_zone=str(landing), sinks=sinks)
    ray = write_config(tmp_path / "ray", landing_zone=str(landing), sinks=sinks,
                       ray={"rows_per_part": 20_000})
    run_cli(local, "demo-data", "init", "--scale", "0.01", *init_args(3))
    for batch in range(2):
        if batch:
            run_cli(local, "demo-data", "append", *append_args(local), "--orders", "200", "--updates", "50",
                    "--late", "5")
        assert run_json(local, "run", "--incremental", "--executor", "local")["executor"] == "local"
        # Run from the project folder, which holds a `state/` directory: Ray workers must still
        # import the loader's own `state` package.
        ran = run_json(ray, "run", "--incremental", "--executor", "ray", cwd=ray.parent)
        assert ran["executor"] == "ray"
        if not batch:  # the first load's lineitem batch is cut into parts
            assert ran["tables"]["lineitem"]["parts"] > 1, ran["tables"]["lineitem"]
    for table in ("orders", "lineitem"):
        a, b = (delta_rows(tmp_path / "local" / "warehouse", table),
                delta_rows(tmp_path / "ray" / "warehouse", table))
        assert a.num_rows > 0
        assert a.equals(b.select(a.column_names)), f"delta/{table} differs between engines"
        a, b = (iceberg_rows(tmp_path / "local" / "warehouse", table),
                iceberg_rows(tmp_path / "ray" / "warehouse", table))
        assert a.equals(b.select(a.column_names)), f"iceberg/{table} differs between engines"
        a, b = (parquet_versions(tmp_path / "local" / "warehouse", table),
                parquet_versions(tmp_path / "ray" / "warehouse", table))
        assert _sorted(a, a.column_names).equals(_sorted(b, a.column_names)), (
            f"parquet/{table} differs between engines")
    assert_warehouse_exact(tmp_path / "ray" / "warehouse", landing, iceberg=True)
