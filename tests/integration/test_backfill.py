"""`loader backfill` through the real CLI: a backfill gives the sinks what incremental runs gave them,
overlapping loaded data duplicates nothing, the incremental checkpoint never moves, a backfill killed
mid-chunk resumes from the cut chunk without rewriting finished ones, the pipeline's lease keeps a
backfill and an incremental run apart, and bad requests fail before anything runs."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.gate import Gate, HeldProcess
from tests.support.readers import delta_rows, parquet_latest
from tests.support.snowflake_emulator import (
    abort_detached_transactions,
    new_database,
    password_env,
    sink_settings,
)
from tests.support.warehouse import assert_snowflake_exact, assert_warehouse_exact

pytestmark = pytest.mark.integration

LEASE_TTL_S = 1
WINDOW = ["--start", "2024-01-01", "--end", "2024-01-04", "--chunk", "18h"]  # the demo's 3 days: 4 chunks


def _project(folder: Path, *, lease_ttl: str = f"{LEASE_TTL_S}s") -> Path:
    return write_config(folder, state={"url": "sqlite:///state/loader.db", "lease_ttl": lease_ttl})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose landing zone (3 ingest days, then a batch of updates and late rows) was loaded
    by two incremental runs."""
    folder = tmp_path_factory.mktemp("backfill") / "incremental"
    config = _project(folder)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(3))
    run_json(config, "run", "--incremental")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "200", "--updates", "60",
            "--late", "5")
    run_json(config, "run", "--incremental")
    return config


def _copy(loaded: Path, target: Path, *, warehouse: bool, lease_ttl: str = f"{LEASE_TTL_S}s") -> Path:
    """The same landing zone; with the loaded project's state and warehouse, or empty ones."""
    shutil.copytree(loaded.parent / "landing", target / "landing")
    if warehouse:
        shutil.copytree(loaded.parent / "warehouse", target / "warehouse")
        shutil.copytree(loaded.parent / "state", target / "state")
    return _project(target, lease_ttl=lease_ttl)


def test_backfill_gives_what_incremental_runs_gave_without_a_checkpoint(loaded: Path, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "fresh", warehouse=False)
    end = run_json(loaded, "status")["sources"]["orders"]["checkpoint"]
    result = run_json(config, "backfill", "--start", "2023-12-31", "--end", end, "--chunk", "1d")
    assert result["chunks_total"] == result["chunks_loaded"] == 5 and result["checkpoints_moved"] is False
    runs = [c["run_number"] for c in result["chunks"]]
    assert runs == sorted(runs) and len(set(runs)) == 5  # each chunk a ledger run of its own
    for table, key in (("orders", ["o_orderkey"]), ("lineitem", ["l_orderkey", "l_linenumber"])):
        order = [(k, "ascending") for k in key]
        assert delta_rows(tmp_path / "fresh" / "warehouse", table).sort_by(order).equals(
            delta_rows(loaded.parent / "warehouse", table).sort_by(order)), table
        assert parquet_latest(tmp_path / "fresh" / "warehouse", table).sort_by(order).equals(
            parquet_latest(loaded.parent / "warehouse", table).sort_by(order)), table
    assert_warehouse_exact(tmp_path / "fresh" / "warehouse", tmp_path / "fresh" / "landing")
    status = run_json(config, "status")
    assert status["sources"]["orders"]["checkpoint"] is None  # a backfill never sets a checkpoint
    assert status["backfill"]["chunks_done"] == status["backfill"]["chunks_total"] == 5
    assert status["backfill"]["state"] == "finished"


def test_backfill_over_loaded_data_duplicates_nothing_and_keeps_the_checkpoint(
    loaded: Path, tmp_path: Path
) -> None:
    config = _copy(loaded, tmp_path / "p", warehouse=True)
    checkpoints = lambda: {n: (s["checkpoint"], s["checkpoint_run"])  # noqa: E731
                           for n, s in run_json(config, "status")["sources"].items()}
    before = checkpoints()
    result = run_json(config, "backfill", *WINDOW, "--source", "orders")
    assert result["chunks_loaded"] == 4 and result["request"]["sources"] == ["orders"]
    assert result["checkpoints_moved"] is False
    assert {t for c in result["chunks"] for t in c["tables"]} == {"orders"}
    assert checkpoints() == before
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")
    assert run_json(config, "run", "--incremental")["status"] == "nothing_new"
    again = run_json(config, "backfill", *WINDOW, "--source", "orders")
    assert again["chunks_loaded"] == 0 and again["chunks_already_loaded"] == 4


def test_forced_backfill_repairs_a_sink_and_reports_the_rows_it_wrote(loaded: Path, tmp_path: Path) -> None:
    """A window loaded before is skipped, saying how to load it again; --force does, as a backfill of
    its own id, and each sink writes only what it lacks: rows lost from Parquet come back, Delta (which
    lost nothing) writes none, and verify passes again."""
    config = _copy(loaded, tmp_path / "p", warehouse=True)
    first = run_json(config, "backfill", *WINDOW)
    # the first run's files of a region: its rows all lie in WINDOW (the second run's mostly after it)
    lost = sorted((tmp_path / "p" / "warehouse" / "parquet" / "orders").glob("region=ASIA/*/run-00000001-*"))
    assert lost
    for path in lost:
        path.unlink()
    broken = run_cli(config, "verify", check=False)
    assert broken.returncode == 1 and "orders" in broken.stderr and "parquet" in broken.stderr

    again = run_cli(config, "backfill", *WINDOW)
    assert "0 chunk(s) loaded, 4 already loaded" in again.stdout
    assert "add --force to load the window again" in again.stdout
    assert first["request"]["id"] in again.stdout  # the id is printed, for --resume

    forced = run_json(config, "backfill", *WINDOW, "--force", "--source", "orders")
    assert forced["chunks_loaded"] == 4 and forced["request"]["id"] != first["request"]["id"]
    written = {sink: sum(c["tables"]["orders"]["sinks"][sink]["rows"] for c in forced["chunks"])
               for sink in ("parquet", "delta")}
    asia = sum(c["tables"]["orders"]["sinks"]["parquet"]["regions"].get("ASIA", 0)
               for c in forced["chunks"])
    assert written["delta"] == 0 and written["parquet"] == asia > 0  # only what Parquet lacked
    assert run_cli(config, "verify", check=False).returncode == 0
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")
    text = run_cli(config, "backfill", *WINDOW, "--force", "--source", "orders").stdout
    assert "rows written" in text and "parquet 0, delta 0" in text  # held versions are not written again


def test_killed_backfill_resumes_at_the_cut_chunk(loaded: Path, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "fresh", warehouse=False)
    end = run_json(loaded, "status")["sources"]["orders"]["checkpoint"]  # everything the landing zone holds
    window = ["--start", "2024-01-01", "--end", end, "--chunk", "18h"]
    killed = run_cli(config, "backfill", *window, check=False,
                     env={"LOADER_FAILPOINTS": "delta.write@lineitem=crash+2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(LEASE_TTL_S + 0.5)  # the killed backfill's lease expires by itself
    status = run_json(config, "status")["backfill"]
    total = status["chunks_total"]
    assert status["chunks_done"] == 2 and total >= 4 and status["state"] == "interrupted"
    cut = status["unfinished_runs"]
    assert len(cut) == 1
    resumed = run_json(config, "backfill", "--resume", status["request"]["id"])
    assert resumed["request"]["id"] == status["request"]["id"]
    assert [c["status"] for c in resumed["chunks"]] == ["already_loaded"] * 2 + ["loaded"] * (total - 2)
    assert resumed["chunks"][2]["replaced_run"] == cut[0] and resumed["chunks"][2]["run_number"] > cut[0]
    assert_warehouse_exact(tmp_path / "fresh" / "warehouse", tmp_path / "fresh" / "landing")
    assert run_json(config, "status")["backfill"]["state"] == "finished"


def test_parallel_chunks_land_exactly(loaded: Path, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "fresh", warehouse=False)
    end = run_json(loaded, "status")["sources"]["orders"]["checkpoint"]
    done = run_cli(config, "backfill", "--start", "2024-01-01", "--end", end, "--chunk", "12h",
                   "--parallel", "3", "--json")
    result = json.loads(done.stdout)
    assert result["chunks_loaded"] == result["chunks_total"] >= 6
    progress = [line for line in done.stderr.splitlines() if "backfill chunk " in line]  # one line per chunk
    assert len(progress) == result["chunks_total"] and all("loaded, run " in line for line in progress)
    assert [c["index"] for c in result["chunks"]] == list(range(result["chunks_total"]))
    assert_warehouse_exact(tmp_path / "fresh" / "warehouse", tmp_path / "fresh" / "landing")


def test_backfill_into_snowflake_too(loaded: Path, tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    """All three sinks; a crash inside a chunk's Snowflake transaction, then the same command again."""
    database = new_database()
    shutil.copytree(loaded.parent / "landing", tmp_path / "p" / "landing")
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": True},
             "snowflake": sink_settings(snowflake_server, database)}
    config = write_config(tmp_path / "p", sinks=sinks,
                          state={"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"})
    env = password_env(snowflake_server)
    end = run_json(loaded, "status")["sources"]["orders"]["checkpoint"]
    window = ["--start", "2024-01-01", "--end", end, "--chunk", "1d"]
    killed = run_cli(config, "backfill", *window, check=False,
                     env={**env, "LOADER_FAILPOINTS": "snowflake.merge@lineitem=crash+1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert abort_detached_transactions() == 1  # as Snowflake does to a dead client's transaction
    time.sleep(LEASE_TTL_S + 0.5)
    resumed = run_json(config, "backfill", *window, env=env)
    assert [c["status"] for c in resumed["chunks"]][:2] == ["already_loaded", "loaded"]
    assert resumed["request"]["sinks"] == ["parquet", "delta", "snowflake"]
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")
    assert_snowflake_exact(snowflake_server, database, tmp_path / "p" / "landing")


def test_unknown_resume_id_names_the_known_ones(loaded: Path, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p", warehouse=True)
    run_json(config, "backfill", *WINDOW, "--source", "orders", "--chunk", "1d")
    known = run_json(config, "status")["backfill"]["request"]["id"]
    result = run_cli(config, "backfill", "--resume", "bf-00000000", check=False)
    assert result.returncode == 2 and known in result.stderr
    assert run_cli(config, "backfill", "--resume", known, "--start", "2024-01-01",
                   check=False).returncode == 2


@pytest.mark.parametrize("first", ["backfill", "incremental"])
def test_backfill_and_incremental_never_run_together(loaded: Path, tmp_path: Path, first: str) -> None:
    """The first command holds the lease, waiting at its first Delta write, while the other is refused.
    A lease that outlives any heartbeat stall of a busy machine: the refusal is the lease's, not luck."""
    config = _copy(loaded, tmp_path / "p", warehouse=True, lease_ttl="120s")
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "50", "--updates", "10",
            "--late", "0")
    backfill = ["backfill", *WINDOW]
    incremental = ["run", "--incremental"]
    gate = Gate(tmp_path)
    holder = HeldProcess(config, *(backfill if first == "backfill" else incremental),
                         failpoints=gate.failpoint("delta.write", "*1")).held()
    try:
        refused = run_cli(config, *(incremental if first == "backfill" else backfill), check=False)
        assert refused.returncode == 3, refused.stderr
        assert "lease" in refused.stderr
        if first == "backfill":
            assert run_json(config, "status")["backfill"]["state"] == "running"
    finally:
        gate.open()
    code, _, stderr = holder.finish()
    assert code == 0, stderr
    assert run_cli(config, *(incremental if first == "backfill" else backfill), check=False).returncode == 0
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


def test_backfill_waits_for_an_unfinished_incremental_run(loaded: Path, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p", warehouse=True)
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "50", "--updates", "10",
            "--late", "0")
    crashed = run_cli(config, "run", "--incremental", check=False,
                      env={"LOADER_FAILPOINTS": "delta.write=crash"})
    assert crashed.returncode == -signal.SIGKILL
    time.sleep(LEASE_TTL_S + 0.5)
    refused = run_cli(config, "backfill", *WINDOW, check=False)
    assert refused.returncode == 1 and "loader run --incremental` first" in refused.stderr
    assert run_json(config, "status")["backfill"] is None  # nothing recorded
    assert run_json(config, "run", "--incremental")["replayed"] is True
    assert run_json(config, "backfill", *WINDOW)["chunks_loaded"] == 4
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


def test_dry_run_lists_chunks_and_writes_nothing(loaded: Path, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "fresh", warehouse=False)
    plan = run_json(config, "backfill", *WINDOW, "--dry-run")
    assert plan["dry_run"] is True and plan["chunks_total"] == 4 and plan["chunks_loaded"] == 0
    assert all(c["files"] > 0 and c["estimated_rows"] > 0 for c in plan["chunks"])
    assert not (tmp_path / "fresh" / "warehouse").exists()
    assert run_json(config, "status")["backfill"] is None


@pytest.mark.parametrize(("args", "says"), [
    (["--start", "2024-01-03", "--end", "2024-01-01"], "is not after --start"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--source", "nation"], "unknown source(s) nation"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--sinks", "snowflake"], "not enabled in the config"),
    (["--start", "2024-01-01", "--end", "2024-01-02", "--chunk", "1 fortnight"], "is not a duration"),
    (["--start", "yesterday", "--end", "2024-01-02"], "neither an ISO 8601 date"),
    (["--start", "2030-01-01", "--end", "2030-02-01"], "their cursors run from 2024-01-01"),
], ids=["end-before-start", "unknown-source", "sink-not-enabled", "bad-chunk", "bad-date", "beyond-the-data"])
def test_bad_requests_fail_before_anything_runs(
    loaded: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    config = _copy(loaded, tmp_path / "fresh", warehouse=False)
    result = run_cli(config, "backfill", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert not (tmp_path / "fresh" / "warehouse").exists()
    assert run_json(config, "status")["backfill"] is None
