"""Soak: `loader run` killed with SIGKILL at random moments, again and again, across several appended
batches, each run cut into small batches (kills between and inside them); then every sink must hold every
key exactly once with its latest version. On SQLite state the
project also loads Iceberg (the SQL catalog on SQLite) and Snowflake (fakesnow's server, the real
connector); on PostgreSQL, Parquet and Delta.
Every appended batch carries upstream deletes (tombstones): at the end the tombstoned keys are gone
from Delta (and Snowflake), their tombstone the newest version in Parquet. Every appended batch also
changes customers (a new customer snapshot, loaded by the dimension step that starts each run, where
kills land too): at the end every sink's customer table holds the history of every snapshot, computed
independently (tests/support/dimensions.py). A batch is appended only once a run after the kills
finished (nothing new left), so every snapshot was loaded (a snapshot replaced before any run loaded it
is in no history; with random kills, which ones would be is left to chance), and every fact was
planned under the snapshot of the batch it came in: the facts' one right enrichment.

`make test` runs a short form (SOAK_KILLS=6); `make soak` the full one (SOAK_KILLS=24)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import ROOT, run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.dimensions import assert_customer_history, snapshot_of
from tests.support.expected import CustomerSnapshot, keep_customers
from tests.support.postgres import pg_database
from tests.support.snowflake_emulator import (
    abort_detached_transactions,
    new_database,
    password_env,
    sink_settings,
)
from tests.support.warehouse import assert_deletes_applied, assert_snowflake_exact, assert_warehouse_exact

pytestmark = pytest.mark.integration

LEASE_TTL_S = 1.0
DELETES = 20  # orders (with their lineitems) deleted upstream in every appended batch
CUSTOMER_CHANGES = 10  # customers changed (a new customer snapshot) in every appended batch


def _run_killed_after(config: Path, delay: float, env: dict[str, str]) -> int:
    """Start a run and SIGKILL it after `delay` seconds unless it ended; its exit code."""
    command = [sys.executable, "-m", "loader.cli", "--config", str(config), "run", "--incremental"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **env})
    try:
        return process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        return process.wait()


@pytest.mark.parametrize("state_store", ["sqlite", "postgres"])
def test_random_kills_lose_and_duplicate_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, state_store: str
) -> None:
    wanted = int(os.environ.get("SOAK_KILLS", "6"))
    seed = int(os.environ.get("SOAK_SEED", "7"))
    rng = random.Random(seed)
    url = "sqlite:///state/loader.db"
    sinks: dict = {"parquet": {"enabled": True}, "delta": {"enabled": True}}
    env: dict[str, str] = {}
    server, database = None, new_database()
    if state_store == "postgres":
        url = pg_database(request.getfixturevalue("pg_url"))
    else:
        server = request.getfixturevalue("snowflake_server")
        sinks["snowflake"], env = sink_settings(server, database), password_env(server)
        sinks["iceberg"] = {"enabled": True}
    iceberg = "iceberg" in sinks
    longest_s = 7.0 if server else 4.5  # a run loading Snowflake too takes longer: kill anywhere in it
    # A small batch budget: increments (new rows and the lookback's) run in 2-3 batches, so kills land
    # between batches as well as inside them; the first load (37,500 rows) in about 40, which the budget
    # holds now that it is never raised to a row group's size.
    config = write_config(tmp_path / "p", sinks=sinks, state={"url": url, "lease_ttl": f"{LEASE_TTL_S}s"},
                          run={"max_batch_rows": 1000})
    run_cli(config, "demo-data", "init", "--scale", "0.005", *init_args(2), env=env)
    landing = tmp_path / "p" / "landing"
    kills, batches = 0, 0
    snapshots = []  # the customer snapshot of every append, each loaded by a run before the next append
    earlier: list[CustomerSnapshot] = []  # all but the last, kept with the fact files they enriched
    while kills < wanted or batches < 3:
        if batches:  # every fact file there was loaded under the last snapshot, which this append replaces
            earlier.append(keep_customers(landing, tmp_path / f"customer-{batches}.parquet"))
        batches += 1
        run_cli(config, "demo-data", "append", *append_args(config),
                "--orders", "150", "--updates", "40", "--late", "5",
                "--deletes", str(DELETES), "--customer-changes", str(CUSTOMER_CHANGES), env=env)
        snapshots.append(snapshot_of(landing / "customer"))
        for _ in range(max(2, wanted // 3)):
            code = _run_killed_after(config, rng.uniform(0.3, longest_s), env)
            kills += code == -signal.SIGKILL
            # A kill inside a Snowflake transaction leaves it open: Snowflake aborts it, the emulator is told.
            # Twice: a statement the dead client sent just before the kill may open its transaction only
            # after the first look (seen once in CI: the next run's MERGE then conflicted with it).
            abort_detached_transactions()
            assert code in (0, 3, -signal.SIGKILL), f"run exited {code} (seed {seed})"
            time.sleep(LEASE_TTL_S + 0.1)
            abort_detached_transactions()
        # Runs to the end until nothing is new: the batch's snapshot and every fact now there are loaded.
        for _ in range(3):
            if run_json(config, "run", "--incremental", env=env)["status"] == "nothing_new":
                break
        else:
            raise AssertionError(f"three runs in a row after the kills still found work (seed {seed})")
    assert kills >= wanted, f"only {kills} of {batches * max(2, wanted // 3)} runs were killed (seed {seed})"
    # Every column; a fact enriched from the snapshot of the append it came in (tests/support/expected.py).
    assert_warehouse_exact(tmp_path / "p" / "warehouse", landing, customers=earlier, iceberg=iceberg)
    if server:
        assert_snowflake_exact(server, database, landing, customers=earlier)
    deleted = assert_deletes_applied(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing",
                                     snowflake=(server, database) if server else None, iceberg=iceberg)
    assert deleted["orders"] == DELETES * batches and deleted["lineitem"] > deleted["orders"], deleted
    assert len({s.time for s in snapshots}) == batches, "an append did not write a new customer snapshot"
    assert_customer_history(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing", snapshots,
                            snowflake=(server, database) if server else None, iceberg=iceberg)


def _committed_runs(state_db: Path) -> int:
    import sqlite3

    if not state_db.exists():
        return 0
    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM runs WHERE status = 'committed'").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def test_a_first_load_killed_again_and_again_makes_progress(tmp_path: Path) -> None:
    """A first load in batches, SIGKILLed at a random moment after each attempt committed a batch:
    every attempt commits at least one more batch than the one before (none starts over), the load
    completes, and the sinks are exact (Iceberg's too). The last day carries deletes (of orders of
    earlier days)."""
    rng = random.Random(int(os.environ.get("SOAK_SEED", "7")))
    config = write_config(tmp_path / "p", sinks={"parquet": {"enabled": True}, "delta": {"enabled": True},
                                                 "iceberg": {"enabled": True}},
                          state={"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"},
                          run={"max_batch_rows": 8_000})
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(10))  # 10 days of ~7,500 rows each
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "50", "--updates", "20", "--late", "0",
            "--deletes", str(DELETES * 2))
    planned = run_json(config, "plan")["batches"]["batches"]
    assert len(planned) >= 8
    state_db = tmp_path / "p" / "state" / "loader.db"
    command = [sys.executable, "-m", "loader.cli", "--config", str(config), "run", "--incremental"]
    committed, attempts = 0, 0
    while True:
        attempts += 1
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (process.poll() is None and _committed_runs(state_db) <= committed
               and time.monotonic() < deadline):
            time.sleep(0.05)
        if process.poll() is None:
            time.sleep(rng.uniform(0, 0.3))  # a random moment of the next batch (or between batches)
            process.send_signal(signal.SIGKILL)
        code = process.wait()
        now = _committed_runs(state_db)
        if code == 0 and now == committed:  # the kill before it came after the last batch's commit
            assert run_json(config, "plan")["nothing_new"], f"attempt {attempts} ended with work left undone"
            break
        assert now > committed, (f"attempt {attempts} (exit {code}) committed no new batch: "
                                 f"{now} after {committed}")
        committed = now
        if code == 0:
            break
        assert code == -signal.SIGKILL, f"attempt {attempts} exited {code}"
        time.sleep(LEASE_TTL_S + 0.2)  # the dead run's lease expires
    assert attempts >= 3, f"the load finished after {attempts} attempt(s): too few kills to show progress"
    assert run_json(config, "run", "--incremental")["status"] == "nothing_new"
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing", iceberg=True)
    assert run_cli(config, "verify", check=False).returncode == 0
    assert assert_deletes_applied(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing",
                                  iceberg=True)["orders"] == DELETES * 2
