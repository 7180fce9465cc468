"""Exactly-once through crashes: for every failpoint, `loader run` is a real subprocess killed there
with SIGKILL; the next run (after the dead holder's lease expires) replays, and every sink is compared
with an independent computation over the landing zone: every key once, the latest version winning."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from loader.failpoints import POINTS
from tests.conftest import pg_database, run_cli, run_json, write_config
from tests.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration

LEASE_TTL_S = 1
# The Snowflake sink is off in these configs; its points are killed in test_snowflake_sink.py.
INCREMENTAL_POINTS = [*(p for p in POINTS if not p.startswith("snowflake.")), "parquet.write@lineitem", "delta.write@lineitem", "delta.commit@lineitem"]
FIRST_RUN_POINTS = ["parquet.write", "delta.write", "checkpoint.inside"]


def _project(folder: Path, state_url: str) -> Path:
    return write_config(folder, state={"url": state_url, "lease_ttl": f"{LEASE_TTL_S}s"})


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A landing zone with one loaded run and a new batch (updates, late records) waiting, on each
    state store. `first/` is the same before its first run."""
    folder = tmp_path_factory.mktemp(f"kill-template-{request.param}")
    postgres = request.param == "postgres"
    url = {}
    for stage in ("first", "fresh"):
        url[stage] = pg_database(request.getfixturevalue("pg_url")) if postgres else "sqlite:///state/loader.db"
    first = _project(folder / "first", url["first"])
    run_cli(first, "demo-data", "init", "--scale", "0.01", "--days", "2")
    shutil.copytree(folder / "first" / "landing", folder / "fresh" / "landing")
    config = _project(folder / "fresh", url["fresh"])
    run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", "--orders", "200", "--updates", "60", "--late", "5")
    return folder


def _copy(template: Path, stage: str, target: Path) -> Path:
    """A private copy of the project: its folder and, on PostgreSQL, its state database."""
    shutil.copytree(template / stage, target)
    config = target / "loader.yaml"
    raw = yaml.safe_load(config.read_text())
    if raw["state"]["url"].startswith("postgresql"):
        raw["state"]["url"] = pg_database(raw["state"]["url"], template=raw["state"]["url"])
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def _kill_then_recover(config: Path, point: str) -> dict:
    killed = run_cli(config, "run", "--incremental", check=False, env={"LOADER_FAILPOINTS": f"{point}=crash"})
    assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr}"
    time.sleep(LEASE_TTL_S + 0.5)  # the dead run's lease expires by itself
    return run_json(config, "run", "--incremental")


@pytest.mark.parametrize("point", INCREMENTAL_POINTS)
def test_kill_during_incremental_run(template: Path, tmp_path: Path, point: str) -> None:
    config = _copy(template, "fresh", tmp_path / "p")
    recovered = _kill_then_recover(config, point)
    if point.startswith("checkpoint.after"):
        assert recovered["status"] == "nothing_new"  # the run had committed before the kill
    else:
        assert recovered["run_number"] == 2 and recovered["replayed"] is True
    assert run_json(config, "run", "--incremental")["status"] == "nothing_new"
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


@pytest.mark.parametrize("point", FIRST_RUN_POINTS)
def test_kill_during_first_run(template: Path, tmp_path: Path, point: str) -> None:
    config = _copy(template, "first", tmp_path / "p")
    recovered = _kill_then_recover(config, point)
    assert recovered["run_number"] == 1 and recovered["replayed"] is True
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


def test_transient_faults_are_retried(template: Path, tmp_path: Path) -> None:
    config = _copy(template, "fresh", tmp_path / "p")
    faults = "parquet.write=transient*2,delta.write@lineitem=transient*1,checkpoint.inside=transient*1"
    result = run_cli(config, "run", "--incremental", env={"LOADER_FAILPOINTS": faults})
    assert "orders -> parquet: attempt 1 of 5 failed" in result.stderr
    assert "orders -> parquet: attempt 2 of 5 failed" in result.stderr
    assert "lineitem -> delta: attempt 1 of 5 failed" in result.stderr
    assert "checkpoint commit: attempt 1 of 5 failed" in result.stderr
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


def test_terminal_fault_fails_at_once_and_keeps_checkpoint(template: Path, tmp_path: Path) -> None:
    config = _copy(template, "fresh", tmp_path / "p")
    before = run_json(config, "status")["sources"]["orders"]["checkpoint"]
    result = run_cli(config, "run", "--incremental", check=False, env={"LOADER_FAILPOINTS": "delta.write=terminal"})
    assert result.returncode == 1
    assert "injected terminal fault" in result.stderr and "retrying" not in result.stderr
    assert run_json(config, "status")["sources"]["orders"]["checkpoint"] == before
    assert run_json(config, "run", "--incremental")["replayed"] is True
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")
