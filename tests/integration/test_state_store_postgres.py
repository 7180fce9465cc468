"""The same state store against a real PostgreSQL 16 (pgserver): CAS, leases and run numbers under races."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import InternalError

from loader.errors import CheckpointConflict, LeaseHeld, StateCorrupt
from state import SCHEMA_VERSION, StateStore, Window

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 3, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def store(pg_url: str) -> Iterator[StateStore]:
    s = StateStore.open(pg_url)
    yield s
    with s.engine.begin() as conn:  # each test uses its own pipeline name; clean anyway
        for table in ("checkpoints", "runs", "leases"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    s.close()


def plan(store: StateStore, pipeline: str, upper: datetime = T0):
    current = store.checkpoints(pipeline)
    base = {s: current[s].run_number if s in current else None for s in ("orders", "lineitem")}
    windows = {s: Window(None, upper) for s in base}
    return store.begin_run(pipeline, mode="incremental", windows=windows, base_checkpoints=base)


def test_commit_and_cas_conflict(store: StateStore) -> None:
    first = plan(store, "p")
    store.commit_run("p", first.run_number, checkpoints={"orders": T0, "lineitem": T0}, metrics={"n": 1})
    assert {c.cursor for c in store.checkpoints("p").values()} == {T0}
    stale, winner = plan(store, "p"), plan(store, "p")
    later = T0 + timedelta(microseconds=1)
    store.commit_run("p", winner.run_number, checkpoints={"orders": later}, metrics={})
    before = store.checkpoints("p")
    with pytest.raises(CheckpointConflict, match="'orders'"):
        store.commit_run("p", stale.run_number, checkpoints={"orders": later, "lineitem": later}, metrics={})
    assert store.checkpoints("p") == before
    assert store.checkpoints("p")["orders"].cursor == later  # microseconds survive the round trip


def test_first_commits_racing_on_missing_checkpoint(pg_url: str) -> None:
    """Both runs were planned before any checkpoint existed: exactly one may commit."""
    stores = [StateStore.open(pg_url) for _ in range(2)]
    runs = [plan(stores[0], "race-cas"), plan(stores[0], "race-cas")]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def commit(i: int) -> None:
        barrier.wait()
        try:
            stores[i].commit_run("race-cas", runs[i].run_number, checkpoints={"orders": T0}, metrics={})
            outcomes.append("ok")
        except CheckpointConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "ok"]
    for s in stores:
        s.close()


def test_leases_and_run_numbers_race(pg_url: str) -> None:
    stores = [StateStore.open(pg_url) for _ in range(4)]
    barrier = threading.Barrier(4)
    won: list[str] = []
    held: list[str] = []
    numbers: list[int] = []

    def work(i: int) -> None:
        barrier.wait()
        numbers.append(plan(stores[i], "race").run_number)
        try:
            won.append(stores[i].acquire_lease("race", holder=f"h:{i}:u", ttl_seconds=60).holder)
        except LeaseHeld as err:
            held.append(str(err))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == [1, 2, 3, 4]
    assert len(won) == 1 and len(held) == 3 and all(won[0] in message for message in held)
    for s in stores:
        s.close()


def test_newer_schema_refused(pg_url: str, store: StateStore) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1}, '2030-01-01T00:00:00.000000+00:00')"
        )
    try:
        with pytest.raises(StateCorrupt, match="Upgrade the loader"):
            StateStore.open(pg_url)
    finally:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM schema_version WHERE version = {SCHEMA_VERSION + 1}")


def test_a_read_only_store_reads_and_cannot_write(store: StateStore, pg_url: str) -> None:
    """The commands that only read open PostgreSQL read-only too: reads as usual, a write refused."""
    record = plan(store, "ro")
    store.commit_run("ro", record.run_number, checkpoints={"orders": T0}, metrics={})
    reader = StateStore.open_read_only(pg_url)
    assert reader is not None
    try:
        assert reader.checkpoints("ro")["orders"].cursor == T0
        with pytest.raises(InternalError, match="read-only transaction"):  # no command writes through it
            reader.acquire_lease("ro", holder="status", ttl_seconds=60)
    finally:
        reader.close()
    assert store.lease("ro") is None
