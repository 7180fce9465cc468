"""A sink enabled after runs had committed (issue #26, case 5), through the real command line: its first
run gets every dimension table, the sinks already up to date are not written again; the facts it lacks
(the runs before it) are named with the one command that fills them, in the run's log and in `loader
status`, and that command makes `loader verify` pass. Dimension loads recorded before they were kept
per sink (state schema 4) count for the sinks that hold the table."""

from __future__ import annotations

import json
import shlex
import sqlite3
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import yaml

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.dimensions import assert_history, customer_regions, expected_history, snapshot_of
from tests.support.readers import delta_table_version, parquet_dimension_versions

pytestmark = pytest.mark.integration

DIMENSIONS = ("customer", "supplier", "nation", "region")


def _set_sinks(config: Path, **enabled: bool) -> None:
    raw = yaml.safe_load(config.read_text())
    for sink, on in enabled.items():
        raw["sinks"][sink]["enabled"] = on
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def _start_before(landing: Path, end: datetime) -> datetime:
    """The oracle's backfill start: midnight of the earliest fact cursor up to `end` (pyarrow alone)."""
    earliest = min(
        pc.min(ds.dataset(landing / table, partitioning="hive").to_table(
            columns=[cursor], filter=ds.field(cursor) <= end)[cursor]).as_py()
        for table, cursor in (("orders", "o_updated_at"), ("lineitem", "l_updated_at")))
    day = datetime.combine(earliest.astimezone(UTC).date(), time(), UTC)
    return day if day < earliest else day - timedelta(days=1)


def test_a_sink_enabled_later_gets_the_dimensions_and_the_command_for_its_facts(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _set_sinks(config, parquet=False)
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    first = run_json(config, "run", "--incremental")
    assert set(first["dimensions"]) == set(DIMENSIONS) and not (warehouse / "parquet").exists()
    end = max(datetime.fromisoformat(t["window"]["upper"]) for t in first["tables"].values())
    delta_versions = {d: delta_table_version(warehouse / "delta" / d) for d in DIMENSIONS}

    _set_sinks(config, parquet=True)
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "30", "--updates", "5")
    second = run_cli(config, "run", "--incremental", "--json")
    summary = json.loads(second.stdout)
    # Every dimension to Parquet on its first run, unchanged files notwithstanding; Delta not written again.
    assert set(summary["dimensions"]) == set(DIMENSIONS)
    sinks_of = {d: list(i["sinks"]) for d, i in summary["dimensions"].items()}
    assert sinks_of == {d: ["parquet"] for d in DIMENSIONS}
    assert {d: delta_table_version(warehouse / "delta" / d) for d in DIMENSIONS} == delta_versions
    snapshot = snapshot_of(landing / "customer")
    assert_history(parquet_dimension_versions(warehouse / "parquet" / "customer", ["c_custkey"], "scd2"),
                   expected_history([snapshot], customer_regions(landing)), sink="parquet")
    assert summary["tables"]["orders"]["sinks"].keys() == {"parquet", "delta"}

    start = _start_before(landing, end)
    command = (f"loader backfill --start {start.date().isoformat()} --end {end.isoformat()} --sinks parquet"
               if start.time() == time() else
               f"loader backfill --start {start.isoformat()} --end {end.isoformat()} --sinks parquet")
    assert "sink parquet lacks the facts committed before it was enabled (run 1)" in second.stderr, \
        second.stderr
    assert f"`{command}`" in second.stderr, second.stderr

    again = run_json(config, "run", "--incremental")
    assert again["status"] == "nothing_new" and again["dimensions"] == {}  # recorded per sink now

    [gap] = run_json(config, "status")["fact_gaps"]
    assert gap["sink"] == "parquet" and gap["command"] == command
    assert gap["tables"] == {t: {"start": start.isoformat(), "end": end.isoformat(), "runs": [1, 1]}
                             for t in ("lineitem", "orders")}
    assert command in run_cli(config, "status").stdout
    before = run_cli(config, "verify", check=False)
    assert before.returncode == 1 and "sink parquet" in before.stderr
    assert "region -" not in before.stderr, before.stderr  # the dimensions are right already
    assert command in before.stderr, before.stderr  # verify says what fills the sink

    run_cli(config, *shlex.split(command)[1:])
    verified = run_cli(config, "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert run_json(config, "status")["fact_gaps"] == []
    quiet = run_cli(config, "run", "--incremental")
    assert "lacks the facts" not in quiet.stderr


def test_loads_recorded_before_per_sink_count_for_the_sinks_holding_the_table(tmp_path: Path) -> None:
    """A state from before schema 5: each dimension load recorded once (sink '*'), made while only
    Delta was enabled. Parquet, enabled now, does not hold the tables: it gets them; Delta holds them:
    not compared again, its loads recorded as its own."""
    config = write_config(tmp_path)
    _set_sinks(config, parquet=False)
    warehouse = tmp_path / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    run_json(config, "run", "--incremental")
    with sqlite3.connect(tmp_path / "state" / "loader.db") as db:
        db.execute("UPDATE dimension_loads SET sink = '*'")
    delta_versions = {d: delta_table_version(warehouse / "delta" / d) for d in DIMENSIONS}
    assert run_json(config, "status")["dimensions"]["customer"]["sinks"].keys() == {"delta"}

    _set_sinks(config, parquet=True)
    loaded = run_json(config, "run", "--incremental")["dimensions"]
    assert {d: list(info["sinks"]) for d, info in loaded.items()} == {d: ["parquet"] for d in DIMENSIONS}
    assert {d: delta_table_version(warehouse / "delta" / d) for d in DIMENSIONS} == delta_versions
    with sqlite3.connect(tmp_path / "state" / "loader.db") as db:
        sinks = sorted(set(db.execute("SELECT sink FROM dimension_loads").fetchall()))
    assert sinks == [("*",), ("delta",), ("parquet",)]
    assert run_json(config, "run", "--incremental")["dimensions"] == {}
