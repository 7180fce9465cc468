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
    assert {"region=X%2F..%2F..%2F..%2F..%2F..%2FESCAPED", "region=MIDDLE_EAST",
            "region=MIDDLE EAST"} <= folders
    held = {row[0] for row in query(snowflake_server, database, 'SELECT DISTINCT "REGION" FROM "ORDERS"')}
    assert {ESCAPE, "MIDDLE_EAST", "MIDDLE EAST"} <= held

    verified = run_json(config, "verify", "--deep", env=env)
    assert verified["ok"] is True
    regions = {(c["region"], c["sink"]) for c in verified["checks"] if c["table"] == "orders"}
    assert {(r, s) for r in (ESCAPE, "MIDDLE_EAST", "MIDDLE EAST")
            for s in ("parquet", "delta", "snowflake")} <= regions
    assert run_json(config, "run", "--incremental", env=env)["status"] in ("committed", "nothing_new")
    assert run_json(config, "verify", env=env)["ok"] is True


# ----------------------------------------------------------------------------- hostile column names


@pytest.fixture(scope="module")
def three_sinks(tmp_path_factory: pytest.TempPathFactory,
                snowflake_server: dict[str, Any]) -> tuple[Path, dict[str, str], str]:
    """The demo zone loaded once into Parquet, Delta and Snowflake; each test appends and corrupts its
    copy."""
    database = new_database()
    sinks = {"parquet": {"enabled": True, "path": "parquet"}, "delta": {"enabled": True, "path": "delta"},
             "snowflake": sink_settings(snowflake_server, database)}
    config = write_config(tmp_path_factory.mktemp("columns") / "project", sinks=sinks)
    env = password_env(snowflake_server)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1), env=env)
    run_json(config, "run", "--incremental", env=env)
    return config, env, database


def _warehouse_state(config: Path, server: dict[str, Any], database: str) -> tuple[Any, ...]:
    """What each sink holds of orders: Parquet's files, Delta's version and columns, Snowflake's rows and
    columns."""
    from deltalake import DeltaTable

    delta = DeltaTable(str(config.parent / "warehouse" / "delta" / "orders"))
    files = sorted(str(p) for p in (config.parent / "warehouse" / "parquet" / "orders").rglob("*.parquet"))
    rows = query(server, database, 'SELECT COUNT(*) FROM "ORDERS"')[0][0]
    columns = [r[0] for r in query(server, database, "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS "
                                                     "WHERE TABLE_NAME = 'ORDERS' ORDER BY ORDINAL_POSITION")]
    return files, delta.version(), delta.schema().to_arrow().names, rows, columns


def _append_with_column(config: Path, env: dict[str, str], name: str) -> None:
    """One appended batch of orders whose new file carries an extra column `name`."""
    from tests.support.demo_clock import append_args

    before = set((config.parent / "landing" / "orders").rglob("*.parquet"))
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "20", env=env)
    (new,) = set((config.parent / "landing" / "orders").rglob("*.parquet")) - before
    table = pq.read_table(new)
    pq.write_table(table.append_column(name, pa.array(["x"] * table.num_rows)), new)


@pytest.mark.parametrize(("column", "sink", "words"), [
    ('x"; DROP TABLE ORDERS; --', "Snowflake", "is not a plain identifier"),
    ("ümlaut", "Snowflake", "is not a plain identifier"),
    ("o_new\n", "Parquet", "holding control characters"),  # the first sink checked; Snowflake's own check:
    # test_hostile_properties.py (an identifier is matched whole, a trailing newline no longer passes)
    ("O_COMMENT", "Delta", "differ only in case"),
])
def test_a_column_one_sink_cannot_take_is_refused_before_any_sink_writes(
        three_sinks: tuple[Path, dict[str, str], str], snowflake_server: dict[str, Any],
        column: str, sink: str, words: str) -> None:
    """The run stops with the column and the sink named, and no sink holds anything of it: Parquet wrote
    no file, Delta made no commit (no new column), Snowflake loaded no row and added no column."""
    config, env, database = three_sinks
    before = _warehouse_state(config, snowflake_server, database)
    _append_with_column(config, env, column)
    try:
        failed = run_cli(config, "run", "--incremental", check=False, env=env)
        assert failed.returncode == 1, failed.stderr
        assert (sink in failed.stderr and words in failed.stderr
                and repr(column) in failed.stderr), failed.stderr
        assert "Traceback" not in failed.stderr
        assert _warehouse_state(config, snowflake_server, database) == before
    finally:  # the batch abandoned and its file removed: the next case starts from the loaded warehouse
        import sqlite3

        with sqlite3.connect(config.parent / "state" / "loader.db") as db:
            (run,) = db.execute("SELECT MAX(run_number) FROM runs WHERE status = 'planned'").fetchone()
        if run is not None:
            run_cli(config, "runs", "abandon", str(run), env=env)
        newest = max((config.parent / "landing" / "orders").rglob("*.parquet"),
                     key=lambda p: p.stat().st_mtime)
        newest.unlink()


# ----------------------------------------------------------------------------- links out of the landing zone


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_landing_file_reached_through_a_link_out_of_the_zone_is_refused(tmp_path: Path, link: str) -> None:
    """A symbolic link in the orders folder (to a file, or to a folder of files) whose target lies outside
    the landing zone: the run stops naming the link and its target, nothing is written; once the link
    is gone the run loads."""
    config = write_config(tmp_path / "project")
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    orders = config.parent / "landing" / "orders"
    outside = tmp_path / "outside"
    outside.mkdir()
    source = next(orders.rglob("*.parquet"))
    (outside / "secret.parquet").write_bytes(source.read_bytes())
    planted = orders / "ingest_date=2000-01-01"
    if link == "file":
        planted.mkdir()
        (planted / "part.parquet").symlink_to(outside / "secret.parquet")
    else:
        planted.symlink_to(outside, target_is_directory=True)

    failed = run_cli(config, "run", "--incremental", check=False)
    assert failed.returncode == 1, failed.stderr
    assert "symbolic link" in failed.stderr and str(outside) in failed.stderr, failed.stderr
    assert not (config.parent / "warehouse" / "parquet" / "orders").exists()
    assert not (config.parent / "warehouse" / "delta" / "orders").exists()

    (planted / "part.parquet").unlink() if link == "file" else planted.unlink()
    assert run_json(config, "run", "--incremental")["status"] == "committed"


def test_validate_config_names_folders_read_outside_the_landing_zone(tmp_path: Path) -> None:
    import yaml

    config = write_config(tmp_path / "project")
    raw = yaml.safe_load(config.read_text())
    raw["sources"]["orders"]["path"] = "../elsewhere/orders"
    raw["dimensions"]["region"] = {"path": str(tmp_path / "regions"), "mode": "replace"}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_cli(config, "validate-config")
    assert "OK" in result.stdout
    assert "note: sources.orders.path reads" in result.stderr and "outside landing_zone" in result.stderr
    assert "note: dimensions.region.path reads" in result.stderr
    assert "lineitem" not in result.stderr and "customer" not in result.stderr


# ----------------------------------------------------------------------------- a planted scratch root


def test_a_scratch_root_planted_as_a_link_stops_the_command_and_deletes_nothing(tmp_path: Path) -> None:
    """Another user of the host links `<tmp>/loader-<uid>` to a folder of numbered subfolders: any command
    stops (exit 2) naming the link and the fix, and the folder it points at keeps every file."""
    config = write_config(tmp_path / "project")
    target, temp = tmp_path / "victim", tmp_path / "tmp"
    (target / "123").mkdir(parents=True)
    (target / "123" / "keep.txt").write_text("mine")
    temp.mkdir()
    (temp / f"loader-{os.getuid()}").symlink_to(target, target_is_directory=True)
    result = run_cli(config, "history", check=False, env={"TMPDIR": str(temp)})
    assert result.returncode == 2, result.stderr
    assert "is a symbolic link" in result.stderr and f"rm {temp / f'loader-{os.getuid()}'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert (target / "123" / "keep.txt").read_text() == "mine"
