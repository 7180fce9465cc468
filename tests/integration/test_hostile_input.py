"""Hostile values in the landing zone (issue #27), through real runs into Parquet, Delta and Snowflake
(the emulator): each case's result asserted, refused or loaded and verified, and nothing written outside
the project's warehouse."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import init_args
from tests.support.snowflake_emulator import new_database, password_env, query, sink_settings

pytestmark = pytest.mark.integration

ESCAPE = "X/../../../../../ESCAPED"


def _files_outside(project: Path, inside: tuple[str, ...]) -> set[Path]:
    """Every file under `project` but for those under the named top-level folders."""
    return {Path(root, name) for root, _, names in os.walk(project) for name in names
            if Path(root).relative_to(project).parts[:1] not in {(p,) for p in inside}}


def _rename_regions(config: Path, renamed: dict[str, str]) -> None:
    path = next((config.parent / "landing" / "region").glob("*.parquet"))
    table = pq.read_table(path)
    names = [renamed.get(name, name) for name in table["r_name"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("r_name"), "r_name", pa.array(names)), path)


def test_region_names_that_are_paths_or_collide_load_inside_every_sink_and_verify(
        tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    """ASIA renamed to a path that climbs out of the warehouse, AFRICA to `MIDDLE_EAST` beside `MIDDLE
    EAST` (one Snowflake staging file name before): the run lands every row inside each sink, the
    Parquet folder holds the escaped name (hive readers decode it), and verify, deep included, passes on
    all three sinks; a second run (the lookback re-reads, replays compare counts per file) too."""
    database = new_database()
    sinks = {"parquet": {"enabled": True, "path": "parquet"}, "delta": {"enabled": True, "path": "delta"},
             "snowflake": sink_settings(snowflake_server, database)}
    config = write_config(tmp_path / "project", sinks=sinks)
    env = password_env(snowflake_server)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1), env=env)
    _rename_regions(config, {"ASIA": ESCAPE, "AFRICA": "MIDDLE_EAST"})
    project = config.parent
    before = _files_outside(project, ("warehouse", "state", "cache"))

    summary = run_json(config, "run", "--incremental", env=env)
    assert summary["status"] == "committed"
    assert _files_outside(project, ("warehouse", "state", "cache")) == before
    assert not list(tmp_path.rglob("ESCAPED")) and not (tmp_path / "ESCAPED").exists()
    folders = {p.name for p in (project / "warehouse" / "parquet" / "orders").iterdir()}
    assert {"region=X%2F..%2F..%2F..%2F..%2F..%2FESCAPED", "region=MIDDLE_EAST", "region=MIDDLE EAST"} <= folders
    held = {row[0] for row in query(snowflake_server, database, 'SELECT DISTINCT "REGION" FROM "ORDERS"')}
    assert {ESCAPE, "MIDDLE_EAST", "MIDDLE EAST"} <= held

    verified = run_json(config, "verify", "--deep", env=env)
    assert verified["ok"] is True
    regions = {(c["region"], c["sink"]) for c in verified["checks"] if c["table"] == "orders"}
    assert {(r, s) for r in (ESCAPE, "MIDDLE_EAST", "MIDDLE EAST") for s in ("parquet", "delta", "snowflake")} <= regions
    assert run_json(config, "run", "--incremental", env=env)["status"] in ("committed", "nothing_new")
    assert run_json(config, "verify", env=env)["ok"] is True
