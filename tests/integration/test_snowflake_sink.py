"""The Snowflake sink through the real CLI against fakesnow's server (the real connector over HTTP on
loopback): init -> run -> append -> run, and the password kept out of every output. The target tables
are compared with the independent DuckDB computation. Kills before, inside and after the Snowflake
transaction are in test_kill_matrix.py; faults, schema changes and key-pair auth in
test_snowflake_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.snowflake_emulator import (
    PASSWORD_ENV,
    counted_logins,
    new_database,
    password_env,
    query,
    sink_settings,
)
from tests.support.warehouse import assert_snowflake_exact, assert_warehouse_exact

pytestmark = pytest.mark.integration

LEASE_TTL_S = 2


def _config(folder: Path, server: dict[str, Any], database: str) -> Path:
    """Parquet, Delta and Snowflake; each test gets its own database so they do not see each other."""
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": True},
             "snowflake": sink_settings(server, database)}
    return write_config(folder, sinks=sinks,
                        state={"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"})


def _ledger(server: dict[str, Any], database: str) -> list[tuple]:
    return query(server, database,
                 "SELECT PIPELINE, TABLE_NAME, RUN_NUMBER FROM LOADER_LEDGER ORDER BY RUN_NUMBER, TABLE_NAME")


def test_incremental_runs_land_exactly(tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    database = new_database()
    config = _config(tmp_path / "project", snowflake_server, database)
    landing, warehouse = config.parent / "landing", config.parent / "warehouse"
    env = password_env(snowflake_server)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2), env=env)
    # staging folders of a killed loader (its pid is gone) are removed by the next write; a live one's stay
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"loader-snowflake-{dead.pid}-killed"
    live = Path(tempfile.mkdtemp(prefix=f"loader-snowflake-{os.getpid()}-"))
    stale.mkdir()

    first = run_json(config, "run", "--incremental", env=env)
    assert first["status"] == "committed"
    assert first["tables"]["orders"]["sinks"]["snowflake"]["rows"] == first["tables"]["orders"]["rows"]
    assert_snowflake_exact(snowflake_server, database, landing)
    assert not stale.exists() and live.is_dir()
    live.rmdir()

    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "300", "--updates", "100",
            "--late", "10", env=env)
    second = run_json(config, "run", "--incremental", env=env)
    assert second["status"] == "committed" and second["run_number"] == 2
    assert not second["tables"]["orders"]["sinks"]["snowflake"]["skipped"]
    assert_snowflake_exact(snowflake_server, database, landing)
    assert_warehouse_exact(warehouse, landing)
    assert _ledger(snowflake_server, database) == [
        ("tpch_local", t, n) for n in (1, 2) for t in ("lineitem", "orders")
    ]


def test_a_run_logs_in_once_however_many_batches_it_has(tmp_path: Path,
                                                       snowflake_server: dict[str, Any]) -> None:
    """The run's sinks live as long as the run, and a Snowflake step hands its connection to the next:
    a run of several batches (each checking columns, preparing, staging, copying and merging two tables,
    twenty steps a batch) logs in once for them, and once for the dimension tables' loads."""
    env = password_env(snowflake_server)
    database = new_database()
    config = _config(tmp_path / "project", snowflake_server, database)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2), env=env)
    with counted_logins() as counted:
        summary = run_json(config, "run", "--incremental", "--max-batch-rows", "20000", env=env)
    assert len(summary["batches"]) >= 3, summary["batches"]
    assert_snowflake_exact(snowflake_server, database, config.parent / "landing")
    assert counted.logins == 2


def test_password_never_printed(tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    database = new_database()
    secret = f"s3cret-{uuid.uuid4().hex}"
    config = _config(tmp_path / "project", snowflake_server, database)
    env = {PASSWORD_ENV: secret}
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1), env=env)
    # fakesnow accepts any password: a good run, then a refused one (an unreachable port) must hide it.
    ok = run_cli(config, "run", "--incremental", "--json", env={PASSWORD_ENV: secret})
    assert json.loads(ok.stdout)["status"] == "committed"
    raw = yaml.safe_load(config.read_text())
    raw["sinks"]["snowflake"].update({"port": 1, "login_timeout": "2s", "retry": {"attempts": 1}})
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "10", "--updates", "0",
            "--late", "0", env=env)
    failed = run_cli(config, "run", "--incremental", "--json", check=False, env={PASSWORD_ENV: secret})
    assert failed.returncode == 1
    assert "Snowflake" in failed.stderr + failed.stdout
    shown = run_cli(config, "validate-config", check=False, env={PASSWORD_ENV: secret})
    for result in (ok, failed, shown):
        assert secret not in result.stdout and secret not in result.stderr
