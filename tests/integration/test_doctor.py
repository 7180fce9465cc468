"""`loader doctor` through the real CLI: every check on a working local project, the GPU reported as
unavailable (not failed) where cuDF or a device is missing, and an unreachable sink, Ray address or
state store named with exit 1, each within seconds."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import FAIL_FAST_S, run_cli, run_json, write_config
from tests.support.demo_clock import init_args
from tests.support.snowflake_emulator import new_database, sink_settings

pytestmark = pytest.mark.integration


def _checks(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in payload["checks"]}


def test_a_working_project_passes_every_check(tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": True},
             "snowflake": sink_settings(snowflake_server, new_database())}
    config = write_config(tmp_path / "p", sinks=sinks)
    env = {"SNOWFLAKE_PASSWORD": "doctor-" + new_database()}  # the emulator accepts any password
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1), env=env)
    payload = run_json(config, "doctor", env=env)
    checks = _checks(payload)
    assert set(checks) == {"ray", "gpu", "landing zone", "dimension cache", "sink parquet", "sink delta",
                           "sink snowflake", "state store", "checkpoints"}
    assert all(c["status"] == "ok" for name, c in checks.items() if name != "gpu"), checks
    assert "the next run prepares one" in checks["dimension cache"]["detail"]
    assert payload["ok"] is True
    if importlib.util.find_spec("cudf") is None:
        assert (checks["gpu"]["status"] == "unavailable"
                and "transforms run on the CPU" in checks["gpu"]["detail"])
    assert env["SNOWFLAKE_PASSWORD"] not in str(payload)
    run_json(config, "run", "--incremental", env=env)  # prepares and keeps the dimensions
    cache = _checks(run_json(config, "doctor", env=env))["dimension cache"]
    assert cache["status"] == "ok" and "matches the dimension files" in cache["detail"], cache


def test_unreachable_things_fail_fast_and_are_named(tmp_path: Path) -> None:
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": False},
             "snowflake": {"enabled": True, "account": "acct", "user": "u", "password": "pw-secret",
                           "host": "127.0.0.1", "port": 1, "protocol": "http", "login_timeout": "2s"}}
    config = write_config(tmp_path / "p", sinks=sinks, ray={"address": "ray://127.0.0.1:1"},
                          state={"url": "postgresql+psycopg://u:pw-secret@127.0.0.1:1/db"})
    started = time.monotonic()
    result = run_cli(config, "doctor", "--json", check=False)
    assert result.returncode == 1
    assert time.monotonic() - started < FAIL_FAST_S  # each probe has its own timeout of seconds
    checks = _checks(json.loads(result.stdout))
    assert checks["ray"]["status"] == "failed" and "127.0.0.1:1" in checks["ray"]["detail"]
    assert (checks["sink snowflake"]["status"] == "failed"
            and "127.0.0.1:1" in checks["sink snowflake"]["detail"])
    assert checks["state store"]["status"] == "failed"
    assert (checks["landing zone"]["status"] == "failed"
            and "demo-data init" in checks["landing zone"]["detail"])
    assert "pw-secret" not in result.stdout + result.stderr


def test_a_dimension_cache_folder_that_cannot_be_made_fails_naming_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = write_config(tmp_path / "p", run={"cache_dir": str(blocker / "cache")})
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    result = run_cli(config, "doctor", "--json", check=False)
    assert result.returncode == 1
    cache = _checks(json.loads(result.stdout))["dimension cache"]
    assert cache["status"] == "failed" and "run.cache_dir" in cache["detail"], cache


def _tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every folder and file under `root`: kind, size and contents (what "writes nothing" compares)."""
    return {str(p.relative_to(root)): ("dir", 0, b"") if p.is_dir()
            else ("file", p.stat().st_size, p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_doctor_writes_nothing_on_a_fresh_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p")
    before = _tree(tmp_path)
    result = run_cli(config, "doctor", "--json", check=False)
    assert _tree(tmp_path) == before  # no state file or folder, no cache, no warehouse folder
    checks = _checks(json.loads(result.stdout))
    assert checks["state store"]["status"] == "ok", checks["state store"]
    assert "not created yet: the first run creates it" in checks["state store"]["detail"]
    assert checks["checkpoints"]["status"] == "ok"
    assert result.returncode == 1 and checks["landing zone"]["status"] == "failed"  # no demo data yet


def test_doctor_fails_naming_the_fix_when_the_landing_zone_was_made_again_under_old_checkpoints(
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "p")
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    before = _tree(tmp_path)
    checks = _checks(run_json(config, "doctor"))  # exit 0
    assert _tree(tmp_path) == before  # the state file read as it is: no -wal or -shm left beside it
    assert checks["checkpoints"]["status"] == "ok" and "unchanged" in checks["checkpoints"]["detail"]

    shutil.rmtree(tmp_path / "p" / "landing")  # the user's mistake: only the landing zone made again
    again = run_cli(config, "demo-data", "init", "--scale", "0.01", "--days", "2")
    assert "already holds 2 checkpoint(s) of pipeline" in again.stderr and "make clean-data" in again.stderr
    result = run_cli(config, "doctor", "--json", check=False)
    assert result.returncode == 1
    stale = _checks(json.loads(result.stdout))["checkpoints"]
    assert stale["status"] == "failed", stale
    assert "source orders" in stale["detail"] and "gone or rewritten" in stale["detail"]
    assert "make clean-data" in stale["detail"] and "remove the state store" in stale["detail"]


READING = (("status",), ("history",), ("plan",), ("verify",), ("runs", "list"))


def test_the_commands_that_only_read_write_nothing_before_or_after_the_first_run(tmp_path: Path) -> None:
    """status, history, plan, verify and runs list on a pipeline never run make no state file (an
    empty store in memory answers), and after a run leave the state file as it was (no -wal, -shm)."""
    config = write_config(tmp_path / "p")
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2))
    before = _tree(tmp_path)
    for command in READING:
        run_cli(config, *command)
    assert _tree(tmp_path) == before
    assert not (tmp_path / "p" / "state").exists()
    assert run_json(config, "status")["sources"]["orders"]["checkpoint"] is None

    run_json(config, "run")
    before = _tree(tmp_path)
    for command in READING:
        run_cli(config, *command)
    assert _tree(tmp_path) == before
