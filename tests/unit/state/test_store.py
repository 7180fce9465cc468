"""The state store on SQLite files: migrations, ledger, compare-and-set commits, leases across processes."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, event, inspect, text

from loader.errors import CheckpointConflict, LeaseHeld, StateCorrupt, StateError, StateUnavailable
from state import ALL_SINKS, SCHEMA_VERSION, StateStore, Window, cas_conflicts, migrate, next_cursor
from state.migrations import MIGRATIONS, current_version
from state.models import from_iso, to_iso
from tests.support.postgres import pg_database

T0 = datetime(2024, 1, 3, 10, 0, 0, 123456, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock):
    """Each store test runs on a SQLite file and on a fresh database of a real PostgreSQL."""
    if request.param == "sqlite":
        url = url_of(tmp_path / "nested" / "state.db")
    else:
        url = pg_database(request.getfixturevalue("pg_url"))
    s = StateStore.open(url, now=clock)
    yield s
    s.close()


def windows(*sources: str, lower: datetime | None = None, upper: datetime = T0) -> dict[str, Window]:
    return {s: Window(lower, upper) for s in sources}


def plan(store: StateStore, pipeline: str = "p", *sources: str, upper: datetime = T0):
    """Begin an incremental run planned from the current checkpoints, as the planner does."""
    sources = sources or ("orders", "lineitem")
    current = store.checkpoints(pipeline)
    base = {s: current[s].run_number if s in current else None for s in sources}
    return store.begin_run(
        pipeline, mode="incremental", windows=windows(*sources, upper=upper), base_checkpoints=base
    )


# ---------------------------------------------------------------- models and pure logic


def test_timestamps_round_trip_exactly_and_sort_as_text() -> None:
    text = to_iso(T0)
    assert text == "2024-01-03T10:00:00.123456+00:00"
    assert from_iso(text) == T0
    later = to_iso(datetime(2024, 1, 3, 11, 0, tzinfo=UTC))
    assert text < later and len(text) == len(later)
    with pytest.raises(ValueError, match="time zone"):
        to_iso(datetime(2024, 1, 3))


def test_window_json_round_trip() -> None:
    window = Window(T0 - timedelta(hours=1), T0)
    assert Window.from_json(window.to_json()) == window
    assert Window.from_json({"lower": None, "upper": to_iso(T0)}) == Window(None, T0)
    with pytest.raises(ValueError):
        Window(T0, T0 - timedelta(seconds=1))


def test_cas_conflicts_and_cursor_monotonicity() -> None:
    base = {"orders": 3, "lineitem": None}
    assert cas_conflicts(base, {"orders": 3}, ["orders", "lineitem"]) == []
    [conflict] = cas_conflicts(base, {"orders": 4}, ["orders", "lineitem"])
    assert (conflict.source, conflict.expected, conflict.found) == ("orders", 3, 4)
    assert next_cursor(None, T0) == T0
    assert next_cursor(T0, T0 - timedelta(days=1)) == T0
    assert next_cursor(T0, T0 + timedelta(days=1)) == T0 + timedelta(days=1)


# ---------------------------------------------------------------- migrations


def test_open_creates_folder_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    with StateStore.open(url_of(path)) as store:
        tables = set(inspect(store.engine).get_table_names())
        assert {"schema_version", "checkpoints", "runs", "leases"} <= tables
        with store.engine.connect() as conn:
            assert current_version(conn) == SCHEMA_VERSION
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert migrate(store.engine) == SCHEMA_VERSION  # idempotent
    with StateStore.open(url_of(path)) as again:
        assert again.runs("p") == []


def test_migrate_applies_missing_steps_in_order(tmp_path: Path) -> None:
    with StateStore.open(url_of(tmp_path / "state.db")) as store:
        extra = Table("extra", MetaData(), Column("x", Integer))
        steps = {**MIGRATIONS, SCHEMA_VERSION + 1: lambda conn: extra.create(conn)}
        assert migrate(store.engine, steps=steps, target=SCHEMA_VERSION + 1) == SCHEMA_VERSION
        assert "extra" in inspect(store.engine).get_table_names()
        with store.engine.connect() as conn:
            assert current_version(conn) == SCHEMA_VERSION + 1


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore.open(url_of(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION + 1, to_iso(T0)))
    with pytest.raises(StateCorrupt, match="[Uu]pgrade the loader") as info:
        StateStore.open(url_of(path))
    assert f"version {SCHEMA_VERSION + 1}" in str(info.value)


# ---------------------------------------------------------------- ledger and checkpoints


def test_run_numbers_count_per_pipeline(store: StateStore) -> None:
    assert [plan(store, "p").run_number for _ in range(3)] == [1, 2, 3]
    assert plan(store, "other").run_number == 1
    assert [r.run_number for r in store.runs("p")] == [3, 2, 1]
    assert [r.run_number for r in store.runs("p", limit=2)] == [3, 2]


def test_begin_then_commit_advances_every_checkpoint(store: StateStore, clock: FakeClock) -> None:
    run = plan(store)
    assert (
        run.status == "planned"
        and run.attempts == 1
        and run.base_checkpoints == {"orders": None, "lineitem": None}
    )
    assert store.unfinished_run("p") == run
    clock.advance(5)
    store.commit_run("p", run.run_number, checkpoints={"orders": T0, "lineitem": T0}, metrics={"rows": 7})

    cps = store.checkpoints("p")
    assert {s: (c.cursor, c.run_number, c.updated_at) for s, c in cps.items()} == {
        "orders": (T0, 1, clock()),
        "lineitem": (T0, 1, clock()),
    }
    done = store.run("p", 1)
    assert done is not None and done.status == "committed" and done.finished_at == clock()
    assert done.metrics == {"rows": 7} and done.windows == run.windows
    assert store.unfinished_run("p") is None
    assert store.last_committed_run("p") == done

    second = plan(store, upper=T0 + timedelta(hours=1))
    assert second.base_checkpoints == {"orders": 1, "lineitem": 1}
    store.commit_run("p", 2, checkpoints={"orders": T0 + timedelta(hours=1), "lineitem": T0}, metrics={})
    assert store.checkpoints("p")["orders"].cursor == T0 + timedelta(hours=1)


def test_cas_conflict_changes_nothing(store: StateStore) -> None:
    first = plan(store)
    store.commit_run("p", first.run_number, checkpoints={"orders": T0, "lineitem": T0}, metrics={})
    stale = plan(store)  # planned from run 1
    winner = plan(store)  # also planned from run 1, commits first
    later = T0 + timedelta(hours=1)
    store.commit_run("p", winner.run_number, checkpoints={"orders": later}, metrics={})
    before = store.checkpoints("p")

    with pytest.raises(CheckpointConflict) as info:
        store.commit_run("p", stale.run_number, checkpoints={"orders": later, "lineitem": later}, metrics={})
    message = str(info.value)
    assert "'orders'" in message and "run 1" in message and "run 3" in message and "'lineitem'" not in message
    assert f"loader runs abandon {stale.run_number}" in message
    assert store.checkpoints("p") == before  # lineitem, which had no conflict, did not move either
    assert store.run("p", stale.run_number) == stale


def test_checkpoint_never_moves_backwards(store: StateStore) -> None:
    store.commit_run("p", plan(store).run_number, checkpoints={"orders": T0, "lineitem": T0}, metrics={})
    replay = plan(store)
    store.commit_run("p", replay.run_number, checkpoints={"orders": T0 - timedelta(days=1)}, metrics={})
    orders = store.checkpoints("p")["orders"]
    assert (orders.cursor, orders.run_number) == (T0, replay.run_number)


def test_failed_run_stays_planned_and_is_replayed(store: StateStore) -> None:
    run = plan(store)
    store.fail_run("p", run.run_number, error="sink exploded")
    unfinished = store.unfinished_run("p")
    assert unfinished is not None and unfinished.status == "planned" and unfinished.error == "sink exploded"
    assert unfinished.finished_at is None and unfinished.windows == run.windows

    replay = store.record_attempt("p", run.run_number)
    assert replay.attempts == 2 and store.run("p", run.run_number) == replay
    store.commit_run("p", run.run_number, checkpoints={"orders": T0, "lineitem": T0}, metrics={})
    committed = store.run("p", run.run_number)
    assert committed is not None and committed.status == "committed" and committed.error is None
    store.fail_run("p", run.run_number, error="late")  # a committed run is never downgraded
    assert store.run("p", run.run_number) == committed


def test_committed_or_abandoned_run_cannot_be_committed(store: StateStore) -> None:
    run = plan(store)
    store.commit_run("p", run.run_number, checkpoints={"orders": T0}, metrics={})
    # The same commit again (its first acknowledgement lost, the retry finds it landed): success, no change.
    store.commit_run("p", run.run_number, checkpoints={"orders": T0}, metrics={})
    assert store.checkpoints("p")["orders"].run_number == run.run_number
    later = plan(store)
    store.commit_run("p", later.run_number, checkpoints={"orders": T0 + timedelta(hours=1)}, metrics={})
    # a later run moved the checkpoint since
    with pytest.raises(CheckpointConflict, match="already committed"):
        store.commit_run("p", run.run_number, checkpoints={"orders": T0}, metrics={})
    assert store.checkpoints("p")["orders"].run_number == later.run_number
    with pytest.raises(StateError, match="committed"):
        store.abandon_run("p", run.run_number)

    dropped = plan(store)
    store.abandon_run("p", dropped.run_number, reason="operator gave up")
    assert store.unfinished_run("p") is None
    abandoned = store.run("p", dropped.run_number)
    assert abandoned is not None and abandoned.status == "failed" and abandoned.error == "operator gave up"
    with pytest.raises(StateError, match="abandoned"):
        store.commit_run("p", dropped.run_number, checkpoints={"orders": T0}, metrics={})
    with pytest.raises(StateError, match="no run 99"):
        store.abandon_run("p", 99)


def test_backfill_runs_never_touch_checkpoints(store: StateStore) -> None:
    store.commit_run("p", plan(store).run_number, checkpoints={"orders": T0}, metrics={})
    before = store.checkpoints("p")
    backfill = store.begin_run(
        "p", mode="backfill", windows={"orders": Window(T0 - timedelta(days=30), T0)}, base_checkpoints={}
    )
    assert store.unfinished_run("p") is None
    assert store.unfinished_run("p", mode="backfill") == backfill
    with pytest.raises(ValueError, match="commit_backfill_run"):
        store.commit_run("p", backfill.run_number, checkpoints={"orders": T0}, metrics={})
    store.commit_backfill_run("p", backfill.run_number, metrics={"rows": 1})
    assert store.checkpoints("p") == before
    assert store.last_committed_run("p", mode="backfill") == store.run("p", backfill.run_number)
    assert store.last_committed_run("p", mode="incremental") == store.run("p", 1)


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [("windows", "{not json", "windows"), ("status", "exploded", "unknown status 'exploded'")],
)
def test_corrupt_ledger_row_is_reported_and_abandon_repairs_it(
    store: StateStore, tmp_path: Path, column: str, value: str, problem: str
) -> None:
    run = plan(store)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE runs SET {column} = :value WHERE run_number = :run"),
                     {"value": value, "run": run.run_number})
    for read in (lambda: store.runs("p"), lambda: store.run("p", 1), lambda: store.record_attempt("p", 1)):
        with pytest.raises(StateCorrupt) as info:
            read()
        message = str(info.value)
        assert "'p'" in message and "run 1" in message and problem in message
        assert "loader runs abandon 1" in message and "backup" in message

    store.abandon_run("p", 1)
    [repaired] = store.runs("p")
    assert repaired.status == "failed"
    if column == "windows":
        assert repaired.windows == {} and "{not json" in (repaired.error or "")


def test_unreachable_database_is_unavailable_with_masked_password(tmp_path: Path) -> None:
    with pytest.raises(StateUnavailable, match="writable"):
        StateStore.open(url_of(tmp_path))  # a folder, not a file
    with pytest.raises(StateUnavailable) as info:
        StateStore.open("postgresql://loader:s3cret@127.0.0.1:1/state")
    assert "s3cret" not in str(info.value) and "***" in str(info.value) and "reachable" in str(info.value)


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: FakeClock):
    s = StateStore.open(url_of(tmp_path / "state.db"), now=clock)
    yield s
    s.close()


def test_sqlite_writes_begin_immediate_and_reads_do_not(sqlite_store: StateStore) -> None:
    """SQLite's locking mode (PostgreSQL locks rows instead)."""
    store = sqlite_store
    seen: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN"):
            seen.append(statement)

    plan(store)
    store.runs("p")
    assert seen[-2:] == ["BEGIN IMMEDIATE", "BEGIN"]


# ---------------------------------------------------------------- leases


def test_lease_acquire_held_expire_renew_release(store: StateStore, clock: FakeClock) -> None:
    first = store.acquire_lease("p", holder="host-a:11:aaaa", ttl_seconds=60)
    assert first.expires_at == clock() + timedelta(seconds=60)
    assert store.lease("p") == first
    assert store.acquire_lease("other", holder="host-b:22:bbbb", ttl_seconds=60).pipeline == "other"

    clock.advance(30)
    with pytest.raises(LeaseHeld) as info:
        store.acquire_lease("p", holder="host-b:22:bbbb", ttl_seconds=60)
    message = str(info.value)
    assert "host-a:11:aaaa" in message and to_iso(first.acquired_at) in message
    assert to_iso(first.expires_at) in message and "expires by itself" in message

    again = store.acquire_lease("p", holder="host-a:11:aaaa", ttl_seconds=60)  # re-entrant for its holder
    assert again.expires_at == clock() + timedelta(seconds=60)
    assert store.renew_lease("p", holder="host-a:11:aaaa", ttl_seconds=60)
    assert store.lease("p").expires_at == clock() + timedelta(seconds=60)  # type: ignore[union-attr]

    clock.advance(61)  # holder died: the lease expires by itself
    taken = store.acquire_lease("p", holder="host-b:22:bbbb", ttl_seconds=60)
    assert taken.holder == "host-b:22:bbbb" and store.lease("p") == taken
    assert not store.renew_lease("p", holder="host-a:11:aaaa", ttl_seconds=60)  # lost
    assert not store.release_lease("p", holder="host-a:11:aaaa")
    assert store.lease("p") == taken

    assert store.release_lease("p", holder="host-b:22:bbbb")
    assert store.lease("p") is None
    assert store.acquire_lease("p", holder="host-c:33:cccc", ttl_seconds=1).holder == "host-c:33:cccc"


def _race(url: str, holder: str, action: str, barrier: Any, results: Any) -> None:
    """One competing process (module level so that spawn can import it)."""
    try:
        store = StateStore.open(url)
        barrier.wait(timeout=60)
        if action == "lease":
            results.put(("won", store.acquire_lease("p", holder=holder, ttl_seconds=300).holder))
        else:
            results.put(("run", plan(store).run_number))
        store.close()
    except LeaseHeld as err:
        results.put(("held", str(err)))
    except BaseException as err:
        results.put(("error", repr(err)))


@pytest.mark.parametrize("action", ["lease", "begin_run"])
def test_processes_racing_on_one_sqlite_file(tmp_path: Path, action: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    url = url_of(tmp_path / "state.db")  # not created yet: the migrations race as well
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(url, f"host:{i}:uuid{i}", action, barrier, results)) for i in range(4)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    assert not [o for o in outcomes if o[0] == "error"], outcomes
    with StateStore.open(url) as store:
        if action == "lease":
            winners = [o[1] for o in outcomes if o[0] == "won"]
            assert len(winners) == 1 and sum(o[0] == "held" for o in outcomes) == 3
            assert store.lease("p").holder == winners[0]  # type: ignore[union-attr]
            assert all(winners[0] in o[1] for o in outcomes if o[0] == "held")
        else:
            assert sorted(o[1] for o in outcomes) == [1, 2, 3, 4]
            assert [r.run_number for r in store.runs("p")] == [4, 3, 2, 1]


def test_importing_state_pulls_in_no_heavy_dependency() -> None:
    code = "import sys, state; print(sorted({'ray', 'pyarrow', 'deltalake', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_in_memory_database_works() -> None:
    with StateStore.open("sqlite://") as store:
        assert plan(store).run_number == 1


def test_a_version_1_ledger_migrates_and_keeps_its_runs(tmp_path: Path) -> None:
    """A state database written before runs kept their input: its planned run survives the upgrade
    (replayed by its windows, inputs None) and new runs record their input."""
    path = tmp_path / "state.db"
    engine = create_engine(url_of(path))
    migrate(engine, target=1)
    window = Window(lower=None, upper=T0)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (pipeline, run_number, mode, status, windows, base_checkpoints, started_at, "
            "metrics, attempts) "
            "VALUES ('p', 1, 'incremental', 'planned', :windows, '{\"orders\": null}', :at, '{}', 1)"),
            {"windows": json.dumps({"orders": window.to_json()}), "at": to_iso(T0)})
    engine.dispose()
    with StateStore.open(url_of(path)) as store:
        with store.engine.connect() as conn:
            assert current_version(conn) == SCHEMA_VERSION
        assert store.dimension_loads("p") == {}  # v3's table is there, empty
        old = store.unfinished_run("p")
        assert old is not None and old.windows == {"orders": window} and old.inputs is None
        recorded = {"planned_at": to_iso(T0), "sources": {"orders": {"files": [
            {"path": "a.parquet", "size": 10, "row_groups": [0, 2], "rows": 5}]}}}
        store.abandon_run("p", 1)
        new = store.begin_run("p", mode="incremental", windows={"orders": window},
                              base_checkpoints={"orders": None}, inputs=recorded)
        assert store.run("p", new.run_number).inputs == recorded  # type: ignore[union-attr]


def test_dimension_loads_are_recorded_per_pipeline_and_sink_and_replaced(tmp_path: Path) -> None:
    """The last load of each dimension to each sink: recorded after the sink applied it, replaced by the
    next one; `dimension_loads` is the newest of them per dimension."""
    now = [T0]
    with StateStore.open(url_of(tmp_path / "state.db"), now=lambda: now[0]) as store:
        store.record_dimension_load("p", "customer", sink="delta", fingerprint="a", cursor=None,
                                    changes={"mode": "scd2", "rows": 3,
                                             "sinks": {"delta": {"opened": 3, "closed": 0}}})
        now[0] = T0 + timedelta(seconds=1)
        store.record_dimension_load("p", "customer", sink="delta", fingerprint="b", cursor=T0,
                                    changes={"mode": "scd2", "rows": 3,
                                             "sinks": {"delta": {"opened": 1, "closed": 1}}})
        store.record_dimension_load("other", "customer", sink="delta", fingerprint="c", cursor=None,
                                    changes={})
        loads = store.dimension_loads("p")
        assert list(loads) == ["customer"]
        customer = loads["customer"]
        assert (customer.fingerprint, customer.cursor, customer.sink) == ("b", T0, "delta")
        assert loads["customer"].changes["sinks"]["delta"] == {"opened": 1, "closed": 1}
        assert store.dimension_loads("other")["customer"].fingerprint == "c"
        now[0] = T0 + timedelta(seconds=2)
        store.record_dimension_load("p", "customer", sink="parquet", fingerprint="b", cursor=T0, changes={})
        per_sink = store.dimension_sink_loads("p")["customer"]
        assert {s: load.fingerprint for s, load in per_sink.items()} == {"delta": "b", "parquet": "b"}
        assert store.dimension_loads("p")["customer"].sink == "parquet"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_version_4_dimension_loads_migrate_to_every_sink_of_the_time(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    """Loads recorded per pipeline (before v5) went to the sinks enabled then, which the state never
    knew: they keep sink '*' (ALL_SINKS); new loads are recorded per sink beside them."""
    url = url_of(tmp_path / "state.db") if backend == "sqlite" else \
        pg_database(request.getfixturevalue("pg_url"))
    engine = create_engine(url)
    migrate(engine, target=4)
    changes = {"mode": "scd2", "rows": 3, "sinks": {"delta": {"opened": 3, "closed": 0, "stale": 0}}}
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO dimension_loads (pipeline, dimension, fingerprint, cursor, loaded_at, changes) "
            "VALUES ('p', 'customer', 'f1', :cursor, :at, :changes)"),
            {"cursor": to_iso(T0), "at": to_iso(T0), "changes": json.dumps(changes)})
    engine.dispose()
    with StateStore.open(url) as store:
        with store.engine.connect() as conn:
            assert current_version(conn) == SCHEMA_VERSION == 6
        legacy = store.dimension_sink_loads("p")["customer"][ALL_SINKS]
        assert (legacy.fingerprint, legacy.cursor, legacy.loaded_at) == ("f1", T0, T0)
        assert legacy.changes == changes
        assert store.dimension_loads("p")["customer"].sink == ALL_SINKS
        store.record_dimension_load("p", "customer", sink="parquet", fingerprint="f2", cursor=None,
                                    changes={})
        assert sorted(store.dimension_sink_loads("p")["customer"]) == [ALL_SINKS, "parquet"]
        assert store.fact_gaps("p") == []  # v5's table is there, empty


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_version_5_lookup_versions_migrate_with_the_kept_one_as_the_first_base(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    """Versions recorded before deltas (v6) have none: the one whose prepared lookups are still kept
    stays whole for good (the base of the next version's delta); the others cannot be rebuilt."""
    url = url_of(tmp_path / "state.db") if backend == "sqlite" else \
        pg_database(request.getfixturevalue("pg_url"))
    engine = create_engine(url)
    migrate(engine, target=5)
    with engine.begin() as conn:
        for name, prepared in (("old", None), ("newest", b"prepared")):
            conn.execute(text("INSERT INTO lookup_versions "
                              "(pipeline, fingerprint, created_at, regions, prepared) "
                              "VALUES ('p', :name, :at, :regions, :prepared)"),
                         {"name": name, "at": to_iso(T0 if name == "old" else T0 + timedelta(hours=1)),
                          "regions": b"r", "prepared": prepared})
    engine.dispose()
    with StateStore.open(url) as store:
        assert [(v.fingerprint, v.whole, v.base) for v in store.lookup_chain("p")] == [
            ("old", False, None), ("newest", True, None)]
        store.record_lookup_version("p", "next", b"r2", b"prepared-2", base="newest", delta=b"d")
        assert store.drop_prepared_lookups("p", keep={"next"}) == 0  # "newest" has no delta: kept whole
        assert (store.prepared_lookups("p", "newest") == b"prepared"
                and store.lookup_delta("p", "next") == b"d")


def test_fact_gaps_are_recorded_replaced_and_forgotten(store: StateStore) -> None:
    store.record_fact_gap("p", sink="parquet", source="orders", start=T0, end=T0 + timedelta(days=1),
                          first_run=1, last_run=3)
    store.record_fact_gap("p", sink="parquet", source="orders", start=T0, end=T0 + timedelta(days=2),
                          first_run=1, last_run=4)
    store.record_fact_gap("other", sink="delta", source="orders", start=T0, end=T0, first_run=1, last_run=1)
    [gap] = store.fact_gaps("p")
    assert (gap.sink, gap.source, gap.start, gap.end, gap.first_run, gap.last_run) == (
        "parquet", "orders", T0, T0 + timedelta(days=2), 1, 4)
    store.forget_fact_gap("p", sink="parquet", source="orders")
    assert store.fact_gaps("p") == [] and len(store.fact_gaps("other")) == 1


def test_lookup_versions_keep_regions_and_deltas_for_good_and_whole_lookups_while_kept(
        store: StateStore) -> None:
    """A version's regions and its delta from a base, once recorded, stay; its whole prepared lookups
    are added once and dropped with every version's but those kept and those no delta rebuilds (the
    first version: the base of the others), per pipeline."""
    store.record_lookup_version("p", "v1", b"regions-1", b"prepared-1")
    # changes nothing recorded
    store.record_lookup_version("p", "v1", b"other", b"other", base="v0", delta=b"x")
    store.record_lookup_version("p", "v2", b"regions-2", base="v1", delta=b"delta-2")
    store.record_lookup_version("q", "v1", b"regions-q", b"prepared-q")
    assert (store.lookup_version("p", "v1") == b"regions-1"
            and store.prepared_lookups("p", "v1") == b"prepared-1")
    assert store.lookup_delta("p", "v1") is None and store.lookup_delta("p", "v2") == b"delta-2"
    assert store.has_lookup_version("p", "v2") and not store.has_lookup_version("p", "v2", prepared=True)
    store.record_lookup_version("p", "v2", b"ignored", b"prepared-2")  # what the first call lacked is added
    assert (store.lookup_version("p", "v2") == b"regions-2"
            and store.prepared_lookups("p", "v2") == b"prepared-2")
    store.record_lookup_version("p", "v3", b"regions-3", b"prepared-3", base="v2", delta=b"delta-3")
    assert [(v.fingerprint, v.whole, v.base) for v in store.lookup_chain("p")] == [
        ("v1", True, None), ("v2", True, "v1"), ("v3", True, "v2")]
    assert store.drop_prepared_lookups("p", keep={"v3"}) == 1  # v2's; v1 has no delta: kept
    assert store.prepared_lookups("p", "v2") is None and store.lookup_version("p", "v2") == b"regions-2"
    assert store.prepared_lookups("p", "v1") == b"prepared-1" and store.lookup_delta("p", "v2") == b"delta-2"
    assert (store.prepared_lookups("p", "v3") == b"prepared-3"
            and store.prepared_lookups("q", "v1") == b"prepared-q")
    assert [(v.fingerprint, v.whole) for v in store.lookup_chain("p")] == [
        ("v1", True), ("v2", False), ("v3", True)]
    assert store.lookup_version("p", "v4") is None and not store.has_lookup_version("p", "v4")


def test_open_read_only_makes_nothing_and_cannot_write(tmp_path: Path) -> None:
    """`loader doctor`'s way in: no folder or file made where there is no state yet, no -wal or -shm
    left beside a WAL file, the store's reads as usual, and any write refused."""
    path = tmp_path / "a" / "state.db"
    assert StateStore.open_read_only(url_of(path)) is None
    assert not (tmp_path / "a").exists()
    with StateStore.open(url_of(path)) as writer:
        writer.commit_run("p", plan(writer, "p", "orders").run_number, checkpoints={"orders": T0}, metrics={})
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["state.db"]
    reader = StateStore.open_read_only(url_of(path))
    assert reader is not None
    try:
        assert reader.schema_version() == SCHEMA_VERSION
        assert reader.checkpoints("p")["orders"].cursor == T0
        with pytest.raises(StateError):
            reader.acquire_lease("p", holder="doctor", ttl_seconds=60)
    finally:
        reader.close()
    assert sorted(p.name for p in path.parent.iterdir()) == files
    with StateStore.open(url_of(path)) as writer:  # a writer holds the file open: its -wal is read too
        writer.commit_run("p", plan(writer, "p", "orders", upper=T0 + timedelta(hours=1)).run_number,
                          checkpoints={"orders": T0 + timedelta(hours=1)}, metrics={})
        reader = StateStore.open_read_only(url_of(path))
        assert reader is not None
        try:
            assert reader.checkpoints("p")["orders"].cursor == T0 + timedelta(hours=1)
        finally:
            reader.close()
