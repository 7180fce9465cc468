"""Exactly-once through crashes: for every failpoint, `loader run` is a real subprocess killed there
with SIGKILL; the next run (after the dead holder's lease expires) replays, and every sink is compared
with an independent computation over the landing zone: every key once, the latest version winning.
The landing data carries upstream deletes (tombstones) in every case: the first load's and the
increment's, so a kill lands amid deletes too, and after the recovery the tombstoned keys are gone
from Delta (and Snowflake) and logged as tombstone versions in Parquet. The increment also changes
customers (a new customer snapshot), which the run loads first (its dimension step, where the
`*.dimension` and `dimensions.before_record` points are): after the recovery every sink's customer
table holds the history of both snapshots, computed independently (tests/support/dimensions.py).

On SQLite state the project loads Parquet, Delta, Iceberg (the SQL catalog on SQLite) and Snowflake
(fakesnow's server, the real connector) and every failpoint is killed, Snowflake's and Iceberg's
included. Iceberg's metadata names its files by absolute path, so a case runs where the template's
project was made (restored from a pristine copy), not in a copy elsewhere. On PostgreSQL state
(Parquet and Delta), the points where the state store is at work: the run recorded, around and inside
the checkpoint transaction; the sinks' own points do not touch the state store."""

from __future__ import annotations

import pickle
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader.failpoints import POINTS
from loader.sinks.registry import REGISTRY
from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.dimensions import (
    Snapshot,
    assert_customer_history,
    customer_regions,
    expected_history,
    snapshot_of,
)
from tests.support.expected import CustomerSnapshot, keep_customers
from tests.support.postgres import pg_database
from tests.support.snowflake_emulator import (
    abort_detached_transactions,
    new_database,
    password_env,
    query,
    sink_settings,
)
from tests.support.warehouse import assert_deletes_applied, assert_snowflake_exact, assert_warehouse_exact

pytestmark = pytest.mark.integration

LEASE_TTL_S = 1
LOCAL_POINTS = [*(p for p in POINTS if not p.startswith("snowflake.")), "parquet.write@lineitem",
                "delta.write@lineitem", "delta.commit@lineitem", "iceberg.write@lineitem"]
SNOWFLAKE_POINTS = [p for p in POINTS if p.startswith("snowflake.")] + ["snowflake.merge@lineitem"]
# On PostgreSQL, the points where the state store is at work (the sinks' points behave the same on both).
STATE_POINTS = ["plan.recorded", "checkpoint.before", "checkpoint.inside", "checkpoint.after"]
CASES = [("sqlite", p) for p in LOCAL_POINTS + SNOWFLAKE_POINTS] + [("postgres", p) for p in STATE_POINTS]
FIRST_RUN_CASES = [("sqlite", p) for p in ("parquet.write", "delta.write", "snowflake.merge", "iceberg.write",
                                           "checkpoint.inside")] + [
    ("postgres", "checkpoint.inside")]
# The first run loaded the facts and the dimension tables: a fresh case's Snowflake starts from all of them.
SNOWFLAKE_TABLES = ("ORDERS", "LINEITEM", "LOADER_LEDGER", "CUSTOMER", "SUPPLIER", "NATION", "REGION")
# Orders deleted upstream (with their lineitems): in the landing zone before the first run, and in the
# increment the incremental cases kill.
FIRST_DELETES, INCREMENT_DELETES = 30, 40
# Customers changed in the increment (a new customer snapshot): the incremental run loads it first.
CUSTOMER_CHANGES = 25
# The points inside the dimension step, which runs before the fact batches: a kill there comes before
# the fact run is recorded.
DIMENSION_POINTS = ("parquet.dimension", "delta.dimension", "snowflake.dimension", "iceberg.dimension",
                    "dimensions.before_record")
# The customer snapshots each stage's runs load, kept beside the stages (outside every landing zone).
SNAPSHOTS = "customer-snapshots.pickle"
# The suffix of a stage's untouched copy, from which each case restores the stage's project.
PRISTINE = ".pristine"
# The first snapshot's file: the fact files run 1 loaded are enriched from it (run 2 skips their versions).
EARLIER_CUSTOMER = "customer-first.parquet"


def _project(folder: Path, state_url: str, snowflake: dict[str, Any] | None) -> Path:
    sinks: dict[str, Any] = {"parquet": {"enabled": True}, "delta": {"enabled": True}}
    if snowflake:  # SQLite state: every sink
        sinks["snowflake"] = snowflake
        sinks["iceberg"] = {"enabled": True}
    return write_config(folder, sinks=sinks, state={"url": state_url, "lease_ttl": f"{LEASE_TTL_S}s"})


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A landing zone with one loaded run and a new batch (updates, late records, deletes) waiting, on
    each state store. `first/` is the same before its first run: two days, then a third with deletes."""
    folder = tmp_path_factory.mktemp(f"kill-template-{request.param}")
    postgres = request.param == "postgres"
    server = None if postgres else request.getfixturevalue("snowflake_server")
    url, snowflake = {}, {}
    for stage in ("first", "fresh"):
        url[stage] = (pg_database(request.getfixturevalue("pg_url")) if postgres
                      else "sqlite:///state/loader.db")
        snowflake[stage] = sink_settings(server, new_database()) if server else None
    env = password_env(server) if server else {}
    first = _project(folder / "first", url["first"], snowflake["first"])
    run_cli(first, "demo-data", "init", "--scale", "0.01", *init_args(2), env=env)
    run_cli(first, "demo-data", "append", *append_args(first), "--orders", "20", "--updates", "10",
            "--late", "0", "--deletes", str(FIRST_DELETES), env=env)
    # mtimes kept: the same snapshot
    shutil.copytree(folder / "first" / "landing", folder / "fresh" / "landing")
    loaded = snapshot_of(folder / "first" / "landing" / "customer")
    config = _project(folder / "fresh", url["fresh"], snowflake["fresh"])
    run_json(config, "run", "--incremental", env=env)
    # Run 1 loaded every fact file there under the first snapshot: kept before the append replaces it.
    earlier = keep_customers(folder / "fresh" / "landing", folder / EARLIER_CUSTOMER)
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "200", "--updates", "60",
            "--late", "5", "--deletes", str(INCREMENT_DELETES), "--customer-changes", str(CUSTOMER_CHANGES),
            env=env)
    changed = snapshot_of(folder / "fresh" / "landing" / "customer")
    assert changed.time > loaded.time, "the append did not write a new customer snapshot"
    kept = {"first": ([loaded], []), "fresh": ([loaded, changed], [earlier])}
    (folder / SNAPSHOTS).write_bytes(pickle.dumps(kept))
    for stage in ("first", "fresh"):  # each case restores its stage from these (`_copy`)
        shutil.copytree(folder / stage, folder / f"{stage}{PRISTINE}")
    return folder


def _snapshots(template: Path, stage: str) -> tuple[list[Snapshot], list[CustomerSnapshot]]:
    """The customer snapshots the stage's runs load, in order, and those before the last as kept with
    the fact files they enriched (tests/support/expected.py)."""
    return pickle.loads((template / SNAPSHOTS).read_bytes())[stage]


def _emulator(snowflake: dict[str, Any]) -> dict[str, Any]:
    """The emulator's connection settings from a config's `sinks.snowflake` (it accepts any password)."""
    return {k: snowflake[k] for k in ("account", "user", "host", "port", "protocol")} | {"password": "any"}


def _copy(template: Path, stage: str) -> tuple[Path, dict[str, str]]:
    """The stage's project as the template left it, for one case: its folder restored from the pristine
    copy where it was made (Iceberg's metadata names absolute paths; a module's cases run one after
    another on one worker) and, on PostgreSQL, its state database, on Snowflake its tables (cloned into
    a new database), both private. The config and the environment to run it."""
    target = template / stage
    shutil.rmtree(target)
    shutil.copytree(template / f"{stage}{PRISTINE}", target)
    config = target / "loader.yaml"
    raw = yaml.safe_load(config.read_text())
    if raw["state"]["url"].startswith("postgresql"):
        raw["state"]["url"] = pg_database(raw["state"]["url"], template=raw["state"]["url"])
    env: dict[str, str] = {}
    snowflake = raw["sinks"].get("snowflake")
    if snowflake:
        server = _emulator(snowflake)
        source, snowflake["database"] = snowflake["database"], new_database()
        query(server, snowflake["database"], "SELECT 1")  # creates the database and schema
        if stage == "fresh":
            for table in SNOWFLAKE_TABLES:
                query(server, snowflake["database"], f'CREATE TABLE "{table}" CLONE {source}.S."{table}"')
        env = password_env(server)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config, env


def _assert_exact(config: Path, customer: tuple[list[Snapshot], list[CustomerSnapshot]]) -> dict[str, int]:
    """The sinks exact against the landing zone, every column (each fact enriched from the one customer
    snapshot its batch was planned under: run 1's facts from the first), the deletes applied, every
    sink's customer table the history of the snapshots; the tombstoned keys per table."""
    folder = config.parent
    snapshots, earlier = customer
    sinks = yaml.safe_load(config.read_text())["sinks"]
    iceberg = "iceberg" in sinks
    assert_warehouse_exact(folder / "warehouse", folder / "landing", customers=earlier, iceberg=iceberg)
    snowflake = sinks.get("snowflake")
    if snowflake:
        assert_snowflake_exact(_emulator(snowflake), snowflake["database"], folder / "landing",
                               customers=earlier)
    assert_customer_history(folder / "warehouse", folder / "landing", snapshots, iceberg=iceberg,
                            snowflake=(_emulator(snowflake), snowflake["database"]) if snowflake else None)
    # The deletes happened: tombstoned keys in the landing zone, none left in Delta, Iceberg or Snowflake.
    deleted = assert_deletes_applied(folder / "warehouse", folder / "landing", iceberg=iceberg,
                                     snowflake=((_emulator(snowflake), snowflake["database"])
                                                if snowflake else None))
    assert deleted["orders"] >= FIRST_DELETES and deleted["lineitem"] > deleted["orders"], deleted
    return deleted


def _kill_then_recover(config: Path, env: dict[str, str], point: str) -> dict:
    killed = run_cli(config, "run", "--incremental", check=False,
                     env={**env, "LOADER_FAILPOINTS": f"{point}=crash"})
    assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr}"
    # Only a kill inside a Snowflake transaction (a fact merge, a dimension load) leaves one open;
    # Snowflake aborts it, the emulator is told.
    assert abort_detached_transactions() == (1 if point.startswith(("snowflake.merge", "snowflake.dimension"))
                                             else 0)
    time.sleep(LEASE_TTL_S + 0.5)  # the dead run's lease expires by itself
    return run_json(config, "run", "--incremental", env=env)


def _last_load(snapshots: list[Snapshot], landing: Path) -> dict[str, int]:
    """The versions loading the last snapshot opens and closes (the customers it changes, as the sinks
    store them: masked), computed independently of the loader."""
    history = expected_history(snapshots, customer_regions(landing))
    versions = [v for vs in history.values() for v in vs]
    return {"opened": sum(1 for _, since, _ in versions if since == snapshots[-1].time),
            "closed": sum(1 for _, _, until in versions if until == snapshots[-1].time)}


def _customer_load_after(point: str, sinks: list[str], load: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per sink, the versions the recovery's customer load opens and closes after a kill at `point`:
    the sinks before the killed one (registry order) had applied the load, so they find nothing to do."""
    killed_at = {"parquet.dimension": "parquet", "delta.dimension": "delta",
                 "snowflake.dimension": "snowflake", "iceberg.dimension": "iceberg"}
    # dimensions.before_record: all
    applied = sinks[:sinks.index(killed_at[point])] if point in killed_at else sinks
    return {s: {"opened": 0, "closed": 0} if s in applied else load for s in sinks}


@pytest.mark.parametrize(("template", "point"), CASES, indirect=["template"])
def test_kill_during_incremental_run(template: Path, point: str) -> None:
    config, env = _copy(template, "fresh")
    customer = _snapshots(template, "fresh")
    snapshots = customer[0]
    recovered = _kill_then_recover(config, env, point)
    if point.startswith(("checkpoint.after", "checkpoint.acknowledged")):
        assert recovered["status"] == "nothing_new"  # the run had committed before the kill
    elif point in DIMENSION_POINTS:
        # Killed in the dimension step, before the fact run was recorded: the recovery is run 2 afresh.
        assert recovered["run_number"] == 2 and recovered["replayed"] is False
        assert recovered["tables"]["orders"]["deleted"] >= INCREMENT_DELETES, recovered["tables"]["orders"]
    else:
        assert recovered["run_number"] == 2 and recovered["replayed"] is True
        # The replay carried the increment's tombstones (the lookback may re-read a few of the first's).
        assert recovered["tables"]["orders"]["deleted"] >= INCREMENT_DELETES, recovered["tables"]["orders"]
    if point in DIMENSION_POINTS:
        # The customer load's fingerprint was not recorded: the recovery loads it again, each sink
        # comparing with what it holds (dimensions.before_record: every sink had applied it).
        load = _last_load(snapshots, config.parent / "landing")
        assert 0 < load["opened"] == load["closed"] <= CUSTOMER_CHANGES, load
        sinks = [s for s in REGISTRY if s in yaml.safe_load(config.read_text())["sinks"]]  # registry order
        loaded = recovered["dimensions"]["customer"]
        got = {s: {k: c[k] for k in ("opened", "closed")} for s, c in loaded["sinks"].items()}
        assert got == _customer_load_after(point, sinks, load), loaded
    else:
        # The killed run had loaded and recorded every dimension before its fact batches.
        assert recovered["dimensions"] == {}, recovered["dimensions"]
    if point == "snowflake.commit":  # orders had landed in Snowflake: its ledger row makes the replay skip it
        assert recovered["tables"]["orders"]["sinks"]["snowflake"]["skipped"] is True
    elif point.startswith("snowflake."):
        assert (recovered["tables"]["orders"]["sinks"]["snowflake"]["skipped"]
                is (point == "snowflake.merge@lineitem"))
    again = run_json(config, "run", "--incremental", env=env)
    assert again["status"] == "nothing_new" and again["dimensions"] == {}, again
    assert _assert_exact(config, customer)["orders"] == FIRST_DELETES + INCREMENT_DELETES


@pytest.mark.parametrize(("template", "point"), FIRST_RUN_CASES, indirect=["template"])
def test_kill_during_first_run(template: Path, point: str) -> None:
    config, env = _copy(template, "first")
    recovered = _kill_then_recover(config, env, point)
    assert recovered["run_number"] == 1 and recovered["replayed"] is True
    assert recovered["tables"]["orders"]["deleted"] == FIRST_DELETES
    assert _assert_exact(config, _snapshots(template, "first"))["orders"] == FIRST_DELETES


@pytest.mark.parametrize("template", ["sqlite", "postgres"], indirect=True)
def test_transient_faults_are_retried(template: Path) -> None:
    config, env = _copy(template, "fresh")
    faults = ("parquet.write=transient*2,delta.write@lineitem=transient*1,checkpoint.inside=transient*1,"
              "checkpoint.acknowledged=transient*1")
    result = run_cli(config, "run", "--incremental", env={**env, "LOADER_FAILPOINTS": faults})
    assert "orders -> parquet: attempt 1 of 5 failed" in result.stderr
    assert "orders -> parquet: attempt 2 of 5 failed" in result.stderr
    assert "lineitem -> delta: attempt 1 of 5 failed" in result.stderr
    assert "checkpoint commit: attempt 1 of 5 failed" in result.stderr  # rolled back inside
    assert "checkpoint commit: attempt 2 of 5 failed" in result.stderr  # committed, acknowledgement lost
    assert run_json(config, "status", env=env)["sources"]["orders"]["checkpoint_run"] == 2
    _assert_exact(config, _snapshots(template, "fresh"))


@pytest.mark.parametrize("template", ["sqlite", "postgres"], indirect=True)
def test_terminal_fault_fails_at_once_and_keeps_checkpoint(template: Path) -> None:
    config, env = _copy(template, "fresh")
    before = run_json(config, "status", env=env)["sources"]["orders"]["checkpoint"]
    result = run_cli(config, "run", "--incremental", check=False,
                     env={**env, "LOADER_FAILPOINTS": "delta.write=terminal"})
    assert result.returncode == 1
    assert "injected terminal fault" in result.stderr and "retrying" not in result.stderr
    assert run_json(config, "status", env=env)["sources"]["orders"]["checkpoint"] == before
    assert run_json(config, "run", "--incremental", env=env)["replayed"] is True
    _assert_exact(config, _snapshots(template, "fresh"))


# A first load cut into batches of 30,000 rows (2 ingest days of 7,500 orders and 30,000 lineitems, one
# row group each, cut inside the days; the small third day, with the deletes, joins the last batch),
# killed between batches, inside a later batch's sinks, and with a later batch recorded but nothing
# written. `point+N` passes the first N hits (loader/failpoints.py).
BATCH_CASES = [("sqlite", p) for p in ("checkpoint.after+1", "delta.write+2", "parquet.write@lineitem+1",
                                      "snowflake.merge+2", "plan.recorded+1")] + [
    ("postgres", p) for p in ("checkpoint.inside+1", "checkpoint.after+1", "delta.commit+2")]


@pytest.mark.parametrize(("template", "point"), BATCH_CASES, indirect=["template"])
def test_kill_during_a_first_load_in_batches(template: Path, point: str) -> None:
    config, env = _copy(template, "first")
    raw = yaml.safe_load(config.read_text())
    raw["run"] = {"max_batch_rows": 30_000}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    name, _, skip = point.partition("+")
    killed = run_cli(config, "run", "--incremental", "--json", check=False,
                     env={**env, "LOADER_FAILPOINTS": f"{name}=crash+{skip}"})
    assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr}"
    abort_detached_transactions()
    committed_before = run_json(config, "status", env=env)["sources"]["orders"]["checkpoint_run"]
    assert committed_before is not None  # at least the first batch committed before the kill
    time.sleep(LEASE_TTL_S + 0.5)
    recovered = run_json(config, "run", "--incremental", env=env)
    assert recovered["status"] == "committed"
    # It went on from the committed batches: no batch of the recovery starts from the beginning.
    assert all(b["windows"]["orders"]["lower"] is not None
               for b in recovered["batches"] if "orders" in b["windows"])
    if not point.startswith("checkpoint.after"):
        assert recovered["replayed"] is True and recovered["batches"][0]["replayed"] is True
    assert run_json(config, "run", "--incremental", env=env)["status"] == "nothing_new"
    _assert_exact(config, _snapshots(template, "first"))
