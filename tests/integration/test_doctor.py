"""`loader doctor` through the real CLI: every check on a working local project, the GPU reported as
unavailable (not failed) where cuDF or a device is missing, and an unreachable sink, Ray address or
state store named with exit 1, each within seconds."""

from __future__ import annotations

import importlib.util
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
                           "sink snowflake", "state store"}
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
    checks = _checks(__import__("json").loads(result.stdout))
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
    cache = _checks(__import__("json").loads(result.stdout))["dimension cache"]
    assert cache["status"] == "failed" and "run.cache_dir" in cache["detail"], cache
