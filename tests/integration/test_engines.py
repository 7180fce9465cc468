"""The in-process engine and the Ray Data engine give identical sink contents, run after run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.readers import delta_rows, parquet_versions
from tests.support.warehouse import assert_warehouse_exact

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _sorted(table: pa.Table, columns: list[str]) -> pa.Table:
    return table.select(columns).sort_by([(c, "ascending") for c in columns[:3]])


def test_local_and_ray_engines_write_identical_sinks(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    local = write_config(tmp_path / "local", landing_zone=str(landing))
    ray = write_config(tmp_path / "ray", landing_zone=str(landing))
    run_cli(local, "demo-data", "init", "--scale", "0.01", *init_args(3))
    for batch in range(2):
        if batch:
            run_cli(local, "demo-data", "append", *append_args(local), "--orders", "200", "--updates", "50",
                    "--late", "5")
        assert run_json(local, "run", "--incremental", "--executor", "local")["executor"] == "local"
        # Run from the project folder, which holds a `state/` directory: Ray workers must still
        # import the loader's own `state` package.
        assert run_json(ray, "run", "--incremental", "--executor", "ray", cwd=ray.parent)["executor"] == "ray"
    for table in ("orders", "lineitem"):
        a, b = (delta_rows(tmp_path / "local" / "warehouse", table),
                delta_rows(tmp_path / "ray" / "warehouse", table))
        assert a.num_rows > 0
        assert a.equals(b.select(a.column_names)), f"delta/{table} differs between engines"
        a, b = (parquet_versions(tmp_path / "local" / "warehouse", table),
                parquet_versions(tmp_path / "ray" / "warehouse", table))
        assert _sorted(a, a.column_names).equals(_sorted(b, a.column_names)), (
            f"parquet/{table} differs between engines")
    assert_warehouse_exact(tmp_path / "ray" / "warehouse", landing)
