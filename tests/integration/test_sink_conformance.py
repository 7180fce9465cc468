"""Sink conformance: the behaviour every sink (Parquet, Delta, Snowflake) promises the runner, checked
with one set of tests on the real sinks (files in tmp_path; fakesnow's server over the real connector).
The runner relies on exactly this: a run lands exactly, a replay changes nothing, the latest version
of a key wins whatever order runs bring versions in, an empty run commits, bad data is refused
terminally without touching what is stored, and a run interrupted mid-way lands exactly when replayed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loader import failpoints
from loader.errors import LoaderError, SinkRejected, SinkUnavailable, is_transient
from loader.sinks.base import SinkWrite, TableBatch
from loader.transform.tables import dedupe_latest
from tests.support.conformance import (
    CURSOR,
    DELETED,
    DELETED_AT,
    DELETES_SCHEMA,
    KEY,
    REGIONS,
    SCHEMA,
    SINKS,
    SOFT_SCHEMA,
    TABLE,
    UNKNOWN,
    Deletes,
    SinkUnderTest,
    batch_of,
    live,
    make_sink,
    row,
    sort_state,
    table_of,
    tombstone,
)
from tests.support.gate import Gate
from tests.support.readers import latest_versions
from tests.support.snowflake_emulator import PASSWORD_ENV, new_database

pytestmark = pytest.mark.integration

# Run 1: keys 1-6, version 1. Run 2: newer versions of 2, 3, 5 and new keys 7, 8, 9, across every
# region and two days (several Parquet partitions, a Delta merge and an append).
FIRST = {k: 1 for k in range(1, 7)}
SECOND = {2: 2, 3: 2, 5: 2, 7: 1, 8: 1, 9: 1}


def rows_of(versions: dict[int, int]) -> pa.Table:
    return table_of(row(k, v) for k, v in sorted(versions.items()))


def state_after(*runs: dict[int, int]) -> pa.Table:
    """The latest version of every key written by `runs` (the newest version wins, whatever the order)."""
    latest: dict[int, int] = {}
    for versions in runs:
        for key, version in versions.items():
            latest[key] = max(version, latest.get(key, version))
    return rows_of(latest)


def assert_state(sut: SinkUnderTest, want: pa.Table) -> None:
    got, want = sut.latest(), sort_state(want)
    assert got.schema == want.schema, f"{sut.name}: schema\n{got.schema}\nexpected\n{want.schema}"
    assert got.num_rows == want.num_rows, f"{sut.name}: {got.num_rows} rows, expected {want.num_rows}"
    for g, w in zip(got.to_pylist(), want.to_pylist(), strict=True):
        assert g == w, f"{sut.name}: row differs\n got      {g}\n expected {w}"


def assert_write(result: SinkWrite, sut: SinkUnderTest, data: pa.Table) -> None:
    """Not skipped, every row of `data` counted, per region (counted here, not by the sink's helper)."""
    assert (result.sink, result.table, result.skipped) == (sut.name, TABLE, False), result
    assert result.rows == data.num_rows, result
    assert result.regions == dict(Counter(data["region"].to_pylist())), result


def assert_replay_of_landed(sut: SinkUnderTest, again: SinkWrite, landed: SinkWrite) -> None:
    """A replay of a run that landed (`landed`: what its write reported) does exactly what the sink
    declares (`Capabilities.replay_of_landed`): skips it, counting nothing, or writes it again, counting
    the same rows, regions and deletes."""
    if sut.sink.capabilities.replay_of_landed == "skips":
        assert (again.skipped, again.rows, again.regions, again.deleted) == (True, 0, {}, 0), (again, landed)
    else:
        assert not again.skipped, (again, landed)
        counts = (again.rows, again.regions, again.deleted)
        assert counts == (landed.rows, landed.regions, landed.deleted), (again, landed)


@pytest.fixture(params=SINKS)
def sut(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SinkUnderTest:
    """The sink under test, alone in its config; Snowflake on a database of its own."""
    snowflake = None
    if request.param == "snowflake":
        server: dict[str, Any] = request.getfixturevalue("snowflake_server")
        monkeypatch.setenv(PASSWORD_ENV, server["password"])  # read by the config's ${SNOWFLAKE_PASSWORD}
        snowflake = (server, new_database())
    return make_sink(request.param, tmp_path / "project", snowflake)


@pytest.fixture
def failpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    """arm("point=action") switches a failpoint on in this process; arm(None) and teardown switch all off."""

    def arm(spec: str | None) -> None:
        if spec is None:
            monkeypatch.delenv(failpoints.ENV, raising=False)
        else:
            monkeypatch.setenv(failpoints.ENV, spec)
        failpoints.reload()

    yield arm
    arm(None)


def test_first_write_lands_every_row_exactly(sut: SinkUnderTest) -> None:
    data = rows_of(FIRST)
    assert set(data["region"].to_pylist()) == set(REGIONS)
    result = sut.write(batch_of(1, data))
    assert_write(result, sut, data)
    assert_state(sut, data)


def test_replaying_a_landed_run_changes_nothing(sut: SinkUnderTest) -> None:
    """The runner replays a run whose attempt died after some sinks committed: those sinks must skip it
    or write it again identically, as each declares, never twice."""
    sut.write(batch_of(1, rows_of(FIRST)))
    second = sut.write(batch_of(2, rows_of(SECOND)))
    stored = sut.stored()
    for _ in range(2):
        again = sut.write(batch_of(2, rows_of(SECOND), replay=True))
        assert_replay_of_landed(sut, again, second)
        assert sut.stored().equals(stored), f"{sut.name}: the replay changed what is stored"
    assert_state(sut, state_after(FIRST, SECOND))


def test_scan_gives_read_backs_rows_in_pieces(sut: SinkUnderTest) -> None:
    """`scan` (verify --deep's bounded read) holds exactly `read_back`'s rows, values and types; a
    table that does not exist yields nothing."""
    assert (list(sut.sink.scan(TABLE, [*KEY, CURSOR])) == []
            and sut.sink.read_back(TABLE, [*KEY, CURSOR]) is None)
    sut.write(batch_of(1, rows_of(FIRST)))
    sut.write(batch_of(2, rows_of(SECOND)))
    columns = [*KEY, CURSOR, "amount", "note"]
    whole = sut.sink.read_back(TABLE, columns)
    pieces = list(sut.sink.scan(TABLE, columns))
    assert whole is not None and pieces
    scanned = pa.concat_tables(pieces)
    assert scanned.schema == whole.schema
    order = [(name, "ascending") for name in (*KEY, CURSOR)]
    assert scanned.sort_by(order).equals(whole.sort_by(order))


def test_later_run_newest_version_wins(sut: SinkUnderTest) -> None:
    sut.write(batch_of(1, rows_of(FIRST)))
    data = rows_of(SECOND)
    result = sut.write(batch_of(2, data))
    assert_write(result, sut, data)
    assert_state(sut, state_after(FIRST, SECOND))


def test_key_moving_to_another_region_is_stored_once(sut: SinkUnderTest) -> None:
    """Region is a column like the others (looked up from a dimension at load time, which may change):
    a newer version in another region replaces the old one; the key is not kept in both regions."""
    sut.write(batch_of(1, rows_of(FIRST)))
    moved = {**row(3, 2), "region": next(r for r in REGIONS if r != row(3)["region"])}
    sut.write(batch_of(2, table_of([moved, row(7)])))
    want = [moved if k == 3 else row(k, v) for k, v in sorted({**FIRST, 7: 1}.items())]
    assert_state(sut, table_of(want))


def test_stale_or_already_landed_version_keeps_the_newer_one(sut: SinkUnderTest) -> None:
    """Late-arriving records: a version older than the stored one (keys 2, 5) and the stored version
    itself (key 1: the lookback re-reads it) must leave the stored newest version in place (Parquet,
    a version log, may keep the old one as history: its latest-per-key view must not change)."""
    sut.write(batch_of(1, table_of(row(k, 3) for k in range(1, 7))))
    late = table_of([row(1, 3), row(2, 1), row(5, 2), row(7, 1)])
    sut.write(batch_of(2, late))
    assert_state(sut, state_after({k: 3 for k in range(1, 7)}, {7: 1}))


def test_empty_run_commits_and_changes_nothing(sut: SinkUnderTest) -> None:
    sut.write(batch_of(1, rows_of(FIRST)))
    stored = sut.stored()
    result = sut.write(batch_of(2, SCHEMA.empty_table()))
    assert (result.rows, result.regions) == (0, {}), result
    assert sut.stored().equals(stored), f"{sut.name}: an empty run changed what is stored"
    # The empty run left the sink usable: the next run lands normally.
    data = rows_of(SECOND)
    assert_write(sut.write(batch_of(3, data)), sut, data)
    assert_state(sut, state_after(FIRST, SECOND))


_AMOUNT_AS_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "numeric-text": lambda r: f"{r['amount']}5",  # parses, but has 3 decimals: coercing it would round
    "free-text": lambda r: "n/a",
}


@pytest.mark.parametrize("text", list(_AMOUNT_AS_TEXT))
def test_type_conflict_is_refused_terminally(sut: SinkUnderTest, text: str) -> None:
    """The source sends `amount` (decimal(15,2)) as a string: retrying cannot help, so the error must be
    terminal (not retried for minutes), and nothing may be stored: no coerced values, no mixed types."""
    sut.write(batch_of(1, rows_of(FIRST)))
    stored = sut.stored()
    schema = SCHEMA.set(SCHEMA.get_field_index("amount"), pa.field("amount", pa.string()))
    rows = [{**row(k, v), "amount": _AMOUNT_AS_TEXT[text](row(k, v))} for k, v in sorted(SECOND.items())]
    with pytest.raises(LoaderError) as caught:
        result = sut.write(batch_of(2, table_of(rows, schema)))
        pytest.fail(f"{sut.name}: accepted `amount` as string: {result}")
    assert not is_transient(caught.value), (f"{sut.name}: a type conflict is reported as transient: "
                                            f"{caught.value!r}")
    assert isinstance(caught.value, SinkRejected), repr(caught.value)
    assert sut.stored().equals(stored), f"{sut.name}: the refused run changed what is stored"


# Where each sink can be interrupted mid-write (points added later to loader/failpoints.py are used too).
_MID_WRITE_POINTS: dict[str, list[str]] = {
    "parquet": ["parquet.write"],  # some partition files written, not all
    "delta": ["delta.write"],  # the merge committed, the append (the run's last commit) not
    "snowflake": [p for p in ("snowflake.write", "snowflake.merge") if p in failpoints.POINTS],
    "iceberg": ["iceberg.write"],  # the batch's files written, its one commit not made
}
# Run 3 (after the failpoint test's second point): more updates, a key updated twice, new keys.
THIRD = {1: 2, 3: 3, 4: 3, 7: 2, 10: 1, 11: 1}


def test_run_failing_mid_way_lands_exactly_when_replayed(
    sut: SinkUnderTest, failpoint: Callable[[str | None], None]
) -> None:
    """A transient fault inside the sink (Parquet: some partition files written; Delta: the merge
    committed, the append not; Snowflake: files staged and copied, or inside its transaction), then the
    runner's retry: the same run number with replay=True must land the run exactly, every key once.
    The fault stays on until disarmed, so a sink that retries inside `write` still gives up."""
    sut.write(batch_of(1, rows_of(FIRST)))
    landed = [FIRST]
    for run_number, (point, versions) in enumerate(zip(_MID_WRITE_POINTS[sut.name], (SECOND, THIRD),
                                                       strict=False), 2):
        failpoint(f"{point}=transient")
        with pytest.raises(SinkUnavailable) as caught:
            sut.write(batch_of(run_number, rows_of(versions)))
        assert is_transient(caught.value) and "injected" in str(caught.value), repr(caught.value)
        failpoint(None)
        retry = sut.write(batch_of(run_number, rows_of(versions), replay=True))
        assert not retry.skipped, (f"{sut.name}: the run interrupted at {point} was recorded as landed: "
                                   f"{retry}")
        landed.append(versions)
        assert_state(sut, state_after(*landed))


def _parts_of(data: pa.Table, keys_per_part: int) -> list[pa.Table]:
    """Key-disjoint parts, as the Ray executor hands them over (each sorted by key)."""
    return [data.slice(i, keys_per_part) for i in range(0, data.num_rows, keys_per_part)]


def test_run_written_in_parts_lands_like_one_write(sut: SinkUnderTest) -> None:
    """The Ray executor's path: key-disjoint parts written one by one (Delta) or side by side (the
    others), then one commit. The rows and regions add up, the state is the one write's, the replay
    finds the run landed (or writes it identically), and an empty part is harmless."""
    from loader.sinks.table_writes import write_table

    sut.write(batch_of(1, rows_of(FIRST)))
    data = rows_of(SECOND)
    parts = [*_parts_of(data, 2), data.schema.empty_table()]
    head = batch_of(2, data.schema.empty_table())
    [(result, _)] = write_table([sut.sink], head, parts)
    assert_write(result, sut, data)
    assert_state(sut, state_after(FIRST, SECOND))
    stored = sut.stored()
    [(again, _)] = write_table([sut.sink], batch_of(2, data.schema.empty_table(), replay=True), parts)
    assert_replay_of_landed(sut, again, result)
    assert sut.stored().equals(stored), (f"{sut.name}: replaying the run written in parts changed what "
                                         "is stored")


def test_run_failing_between_parts_lands_exactly_when_replayed(
    sut: SinkUnderTest, failpoint: Callable[[str | None], None]
) -> None:
    """A fault after some parts are written (for Delta: some parts' merges committed without the run's
    transaction), then the runner's replay of the whole run: exact, every key once, not reported landed,
    counting what the sink declares (`replay_of_interrupted`): every row, or only those the commits
    before the fault had not written (Delta: the fault is in the last part, so the parts before it landed)."""
    from loader.sinks.table_writes import write_table

    sut.write(batch_of(1, rows_of(FIRST)))
    point = _MID_WRITE_POINTS[sut.name][-1]
    data = rows_of(SECOND)
    failpoint(f"{point}=transient")
    with pytest.raises(SinkUnavailable):
        write_table([sut.sink], batch_of(2, data.schema.empty_table()), _parts_of(data, 2))
    failpoint(None)
    [(retry, _)] = write_table([sut.sink], batch_of(2, data.schema.empty_table(), replay=True),
                               _parts_of(data, 4))
    assert not retry.skipped, retry
    if sut.sink.capabilities.replay_of_interrupted == "rest":  # the parts before the last one committed
        assert_write(retry, sut, _parts_of(data, 2)[-1])
    else:
        assert_write(retry, sut, data)
    assert_state(sut, state_after(FIRST, SECOND))


# ------------------------------------------------------------------------------------ upstream deletes
# A source with `deletes` hands the sinks rows with a `_deleted` flag, one row per key (the newest
# version in the batch), tombstones carrying the key, the cursor and a region (UNKNOWN where none was
# found). Parquet logs tombstones as versions; Delta and Snowflake remove the key (hard) or mark it
# (soft, `_deleted_at`) where the stored version is no newer than the tombstone. The expected state is
# computed here by a small model, apart from the sinks: the newest version of each key decides.

Run = list[dict[str, Any]]


@pytest.fixture(params=["hard", "soft"])
def mode(request: pytest.FixtureRequest) -> Deletes:
    return request.param  # type: ignore[no-any-return]


def _newest(runs: list[Run]) -> dict[int, dict[str, Any]]:
    """The newest version of each key over `runs` (a tombstone wins a tie with a live version)."""
    newest: dict[int, dict[str, Any]] = {}
    for run in runs:
        for r in run:
            held = newest.get(r["id"])
            if held is None or (r[CURSOR], r[DELETED]) > (held[CURSOR], held[DELETED]):
                newest[r["id"]] = r
    return newest


def model(runs: list[Run], *, log: bool, deletes: Deletes) -> dict[int, dict[str, Any]]:
    """What a sink holds after `runs`, per key. A version log (Parquet): the newest version, flag and all.
    Hard: the newest version where it is live. Soft: every key ever live, with the values of its newest
    live version and `_deleted_at` = the cursor of its newest version where that is a tombstone."""
    newest = _newest(runs)
    if log:
        return newest
    if deletes == "hard":
        return {k: {c: v for c, v in r.items() if c != DELETED} for k, r in newest.items() if not r[DELETED]}
    lives = _newest([[r for r in run if not r[DELETED]] for run in runs])
    return {k: {**{c: v for c, v in r.items() if c != DELETED},
                DELETED_AT: newest[k][CURSOR] if newest[k][DELETED] else None} for k, r in lives.items()}


def deleted_by(runs: list[Run], *, log: bool, deletes: Deletes) -> int:
    """What the last run's `deleted` counts: tombstone versions it adds to the log (Parquet: one it does
    not hold yet, a live version at its cursor notwithstanding), or keys its tombstones removed or
    marked (the others): those whose state the tombstone changed."""
    *before, last = runs
    if log:
        seen = {(r["id"], r[CURSOR], r[DELETED]) for run in before for r in run}
        return sum(1 for r in last if r[DELETED] and (r["id"], r[CURSOR], True) not in seen)
    was, now = model(before, log=False, deletes=deletes), model(runs, log=False, deletes=deletes)
    return sum(1 for r in last if r[DELETED] and was.get(r["id"]) != now.get(r["id"]))


def write_run(sut: SinkUnderTest, run_number: int, run: Run, deletes: Deletes, *,
              replay: bool = False) -> SinkWrite:
    return sut.write(batch_of(run_number, table_of(run, DELETES_SCHEMA), replay=replay, deletes=deletes))


def assert_deletes_state(sut: SinkUnderTest, runs: list[Run], deletes: Deletes) -> None:
    """What the sink holds is exactly the model's state (Parquet: its latest version per key)."""
    assert sut.stored_all is not None
    got = sut.stored_all()
    want = model(runs, log=sut.version_log, deletes=deletes)
    schema = DELETES_SCHEMA if sut.version_log else SOFT_SCHEMA if deletes == "soft" else SCHEMA
    if sut.version_log:  # a version: (key, cursor, tombstone or not); on a tie the tombstone is the latest
        versions = list(zip(*(got[c].to_pylist() for c in ("id", CURSOR, DELETED)), strict=True))
        assert len(versions) == len(set(versions)), f"{sut.name}: a (key, cursor, _deleted) version twice"
        got = latest_versions(got, KEY, CURSOR)
    elif got.num_rows:  # what the table holds: `_deleted` never, `_deleted_at` only when soft
        assert sorted(got.column_names) == sorted(schema.names), (f"{sut.name} ({deletes}): "
                                                                  f"columns {got.column_names}")
    if not sut.version_log and sut.name != "snowflake" and deletes == "soft":
        assert got.schema.field(DELETED_AT).type == SOFT_SCHEMA.field(DELETED_AT).type, got.schema
    got = sort_state(got.select(schema.names).cast(schema)) if got.num_rows else schema.empty_table()
    expected = sort_state(table_of([want[k] for k in sorted(want)], schema))
    assert got.num_rows == expected.num_rows, (
        f"{sut.name} ({deletes}): keys {got['id'].to_pylist()}, expected {expected['id'].to_pylist()}")
    for g, w in zip(got.to_pylist(), expected.to_pylist(), strict=True):
        assert g == w, f"{sut.name} ({deletes}): row differs\n got      {g}\n expected {w}"


def assert_deleted(result: SinkWrite, sut: SinkUnderTest, runs: list[Run], deletes: Deletes) -> None:
    want = deleted_by(runs, log=sut.version_log, deletes=deletes)
    assert (result.skipped, result.deleted) == (False, want), (f"{sut.name} ({deletes}): {result}, "
                                                               f"expected deleted={want}")


FIRST_LIVE: Run = [live(k) for k in range(1, 7)]


def test_delete_of_a_stored_key(sut: SinkUnderTest, mode: Deletes) -> None:
    """Key 2's tombstone carries its region, key 4's UNKNOWN (no region found): both reach the stored row."""
    runs = [FIRST_LIVE, [tombstone(2, 2), tombstone(4, 2, region=UNKNOWN)]]
    write_run(sut, 1, runs[0], mode)
    result = write_run(sut, 2, runs[1], mode)
    assert_deleted(result, sut, runs, mode)
    assert result.rows == (2 if sut.version_log else 0), result
    assert_deletes_state(sut, runs, mode)


def test_tombstone_older_than_the_stored_version_is_ignored(sut: SinkUnderTest, mode: Deletes) -> None:
    """Late tombstones (keys 1 and 3: versions before the stored 3rd) change nothing; one at the stored
    version's own cursor (key 2) deletes it (t.cursor <= s.cursor; Parquet logs it beside the live one)."""
    stored: Run = [live(k, 3) for k in range(1, 5)]
    late = [tombstone(1, 2), tombstone(3, 1, region=UNKNOWN), tombstone(2, 3)]
    runs = [stored, late]
    write_run(sut, 1, stored, mode)
    result = write_run(sut, 2, late, mode)
    assert_deleted(result, sut, runs, mode)
    assert_deletes_state(sut, runs, mode)


def test_delete_then_reinsert_in_a_later_run(sut: SinkUnderTest, mode: Deletes) -> None:
    """A newer live version after the delete brings the key back (soft: revived, `_deleted_at` null)."""
    runs = [FIRST_LIVE, [tombstone(3, 2, region=UNKNOWN), tombstone(5, 2)], [live(3, 3), live(7, 1)]]
    for number, run in enumerate(runs, 1):
        write_run(sut, number, run, mode)
        assert_deletes_state(sut, runs[:number], mode)
    assert model(runs, log=False, deletes="hard").keys() == {1, 2, 3, 4, 6, 7}  # the model agrees


def test_tombstone_for_an_unknown_key_changes_nothing(sut: SinkUnderTest, mode: Deletes) -> None:
    """Tombstones of keys never stored: in the table's first run (no table yet), inside the stored keys'
    range (key 4) and beyond it (key 20, region UNKNOWN). Nothing is inserted, nothing deleted."""
    runs = [[live(k) for k in (1, 2, 3, 5, 6)] + [tombstone(9, 1)],
            [tombstone(4, 2), tombstone(20, 1, region=UNKNOWN)]]
    first = write_run(sut, 1, runs[0], mode)
    assert_deleted(first, sut, runs[:1], mode)
    result = write_run(sut, 2, runs[1], mode)
    assert_deleted(result, sut, runs, mode)
    assert_deletes_state(sut, runs, mode)
    if not sut.version_log:
        assert set(sut.stored_all()["id"].to_pylist()) == {1, 2, 3, 5, 6}


# Run 2 of the mixed tests: updates (1, 6), inserts (7, 8), tombstones of stored keys in their region
# (2) and UNKNOWN (4, 9), a late tombstone older than the stored version (5) and one of an unknown key (30).
MIXED_FIRST: Run = [live(k) for k in (1, 2, 3, 4, 6, 9, 10)] + [live(5, 3)]
MIXED_SECOND: Run = [
    live(1, 2), tombstone(2, 2), tombstone(4, 3, region=UNKNOWN), tombstone(5, 2), live(6, 2), live(7),
    live(8), tombstone(9, 2, region=UNKNOWN), tombstone(30, 1),
]


def test_replay_after_a_crash_has_no_double_effect(
    sut: SinkUnderTest, mode: Deletes, failpoint: Callable[[str | None], None]
) -> None:
    """A fault mid-write (Delta: the merge with the tombstones committed, the run's commit not), then the
    runner's replay (same run number, replay=True): the run lands exactly once; replaying it again once
    landed changes nothing."""
    runs = [MIXED_FIRST, MIXED_SECOND]
    write_run(sut, 1, MIXED_FIRST, mode)
    failpoint(f"{_MID_WRITE_POINTS[sut.name][-1]}=transient")
    with pytest.raises(SinkUnavailable):
        write_run(sut, 2, MIXED_SECOND, mode)
    failpoint(None)
    retry = write_run(sut, 2, MIXED_SECOND, mode, replay=True)
    assert not retry.skipped, retry
    want = deleted_by(runs, log=sut.version_log, deletes=mode)
    # "rest" (Delta): the merge before the fault (the append of new keys 7, 8 comes after it) applied
    # every tombstone; the replay finds them done and counts only the append
    if sut.sink.capabilities.replay_of_interrupted == "rest":
        assert (retry.deleted, retry.rows) == (0, 2), retry
    else:
        assert retry.deleted == want, retry
    assert_deletes_state(sut, runs, mode)
    assert sut.stored_all is not None
    stored = sut.stored_all()
    again = write_run(sut, 2, MIXED_SECOND, mode, replay=True)
    assert_replay_of_landed(sut, again, retry)
    assert sut.stored_all().equals(stored), f"{sut.name}: replaying the landed run changed what is stored"
    assert_deletes_state(sut, runs, mode)


def test_batch_mixing_updates_inserts_and_tombstones(sut: SinkUnderTest, mode: Deletes) -> None:
    """One batch of every kind of row, written in key-disjoint parts (the Ray executor's path), then a
    third run reviving one deleted key and deleting an updated one. A late live version older than the
    key's tombstone (key 4) leaves the key deleted: soft, it updates the values and the mark stays;
    hard, the key stays absent (the sink remembers the tombstone); Parquet logs it as an older version."""
    from loader.sinks.table_writes import write_table

    third: Run = [live(2, 3), tombstone(6, 3, region=UNKNOWN), live(11), live(4, 2)]
    runs = [MIXED_FIRST, MIXED_SECOND, third]
    write_run(sut, 1, MIXED_FIRST, mode)
    data = table_of(sorted(MIXED_SECOND, key=lambda r: r["id"]), DELETES_SCHEMA)
    parts = [data.slice(i, 3) for i in range(0, data.num_rows, 3)]
    head = batch_of(2, data.schema.empty_table(), deletes=mode)
    [(result, _)] = write_table([sut.sink], head, parts)
    assert_deleted(result, sut, runs[:2], mode)
    assert_deletes_state(sut, runs[:2], mode)
    result = write_run(sut, 3, third, mode)
    assert_deleted(result, sut, runs, mode)
    assert_deletes_state(sut, runs, mode)


# A tombstone at the cursor of a live version: one rule in every sink (loader/sinks/base.py), the tie
# deletes. Hard: the key is removed; soft: marked at that cursor; Parquet: the tombstone is logged beside
# the live version and is the latest (its readers break the tie so).


def test_tombstone_at_the_stored_versions_cursor_deletes_it(sut: SinkUnderTest, mode: Deletes) -> None:
    """The tie arriving in a later run than the live version: tombstones at the stored versions' own
    cursors (key 2 in its region, key 7 UNKNOWN) delete them. A third run re-reading a live version at
    its tombstone's cursor (the lookback: key 2) leaves the key deleted; a newer one (7) revives it.
    Each run, replayed once landed, changes nothing."""
    runs: list[Run] = [
        [*FIRST_LIVE, live(7, 2)],
        [tombstone(2, 1), tombstone(7, 2, region=UNKNOWN), live(3, 2)],
        [live(2, 1), live(7, 3)],
    ]
    for number, run in enumerate(runs, 1):
        result = write_run(sut, number, run, mode)
        assert_deleted(result, sut, runs[:number], mode)
        assert_deletes_state(sut, runs[:number], mode)
        assert sut.stored_all is not None
        stored = sut.stored_all()
        assert_replay_of_landed(sut, write_run(sut, number, run, mode, replay=True), result)
        assert sut.stored_all().equals(stored), f"{sut.name}: replaying run {number} changed what is stored"
    assert model(runs[:2], log=False, deletes="hard").keys() == {1, 3, 4, 5, 6}  # the model agrees
    assert deleted_by(runs[:2], log=sut.version_log, deletes=mode) == 2


def test_tombstone_at_a_live_versions_cursor_in_one_batch_deletes_it(sut: SinkUnderTest,
                                                                       mode: Deletes) -> None:
    """The tie within one batch: run 2's landing rows hold a live version and a tombstone at one cursor,
    in either order: the stored version re-read by the lookback beside its tombstone (key 2, tombstone
    first; key 4, tombstone last, UNKNOWN), a new version and its tombstone (key 5) and a key never
    stored (8). The stage chain's dedupe (`dedupe_latest` with the tombstone mask) keeps the tombstones,
    and every sink deletes the keys: Parquet, whose log holds live (2, v1) and (4, v1), writes the
    tombstones at those cursors all the same."""
    landing: Run = [
        tombstone(2, 1), live(2, 1), live(3, 2), live(4, 1), tombstone(4, 1, region=UNKNOWN),
        tombstone(5, 2), live(5, 2), live(8, 1), tombstone(8, 1),
    ]
    rows = table_of(landing, DELETES_SCHEMA)
    batch = dedupe_latest(rows, key=list(KEY), cursor=CURSOR, tombstones=rows[DELETED])
    assert batch.filter(batch[DELETED])["id"].to_pylist() == [2, 4, 5, 8], batch.to_pylist()
    runs = [FIRST_LIVE, batch.to_pylist()]
    write_run(sut, 1, FIRST_LIVE, mode)
    result = sut.write(batch_of(2, batch, deletes=mode))
    assert_deleted(result, sut, runs, mode)
    assert_deletes_state(sut, runs, mode)
    assert model([FIRST_LIVE, landing], log=False, deletes="hard").keys() == {1, 3, 6}  # the model agrees
    assert deleted_by(runs, log=sut.version_log, deletes=mode) == (4 if sut.version_log else 3)


# Hard deletes remove the row, so the sink must remember the tombstone elsewhere (Delta: a side table,
# Snowflake: a table in the MERGE's transaction): a later run bringing a live version OLDER than the
# tombstone must leave the key deleted; a NEWER one brings it back. Run 1 creates the table with a
# tombstone of a key it never held (9); run 2 deletes stored keys (3, 5) and one never held (20).
LATE_RUNS: list[Run] = [
    [*FIRST_LIVE, tombstone(9, 3)],
    [tombstone(3, 3, region=UNKNOWN), tombstone(5, 3), tombstone(20, 3), live(6, 2)],
    [live(3, 2), live(5, 1), live(9, 2), live(20, 1), live(1, 2)],  # late: every deleted key stays deleted
    # newer than 3's and 9's tombstones: back; 5 at its tombstone's cursor: not
    [live(3, 4), live(9, 4), live(5, 3)],
]


def test_late_live_version_older_than_a_hard_delete_stays_deleted(sut: SinkUnderTest) -> None:
    """Per key the newest version by cursor decides, across runs: after a hard delete, a later run's
    live version older than (or at) the tombstone's cursor does not insert the key again (Parquet: the
    log holds both versions, the newest is the tombstone); a newer one does. Every run is checked, and a
    replay of each landed run changes nothing."""
    runs = LATE_RUNS  # Parquet logs live(5, 3) beside its tombstone at that cursor, which stays the latest
    for number, run in enumerate(runs, 1):
        result = write_run(sut, number, run, "hard")
        assert_deleted(result, sut, runs[:number], "hard")
        assert_deletes_state(sut, runs[:number], "hard")
        assert sut.stored_all is not None
        stored = sut.stored_all()
        again = write_run(sut, number, run, "hard", replay=True)
        assert_replay_of_landed(sut, again, result)
        assert sut.stored_all().equals(stored), f"{sut.name}: replaying run {number} changed what is stored"
    latest = model(runs[:3], log=False, deletes="hard")
    assert {3, 5, 9, 20}.isdisjoint(latest) and {1, 2, 4, 6} <= latest.keys()  # the model agrees
    assert {3, 9} <= model(runs, log=False, deletes="hard").keys()
    if not sut.version_log:
        assert set(sut.stored_all()["id"].to_pylist()) == {1, 2, 3, 4, 6, 9}


def test_replay_after_a_crash_between_remembering_and_committing_deletes(
    sut: SinkUnderTest, failpoint: Callable[[str | None], None]
) -> None:
    """Hard deletes, a fault after the sink remembered a run's tombstones and revivals but before the
    table's commit (Delta: the side table committed, the run's only table commit, an append, not;
    Snowflake: inside its transaction, rolled back whole; Parquet: some files written). The replay
    lands the run exactly: the late version (2) is dropped again, the revived key (4) is written though
    its tombstone is already forgotten, the new tombstone (20) is remembered once; later runs agree."""
    runs: list[Run] = [
        FIRST_LIVE,
        [tombstone(2, 3), tombstone(4, 3, region=UNKNOWN)],
        [live(2, 2), live(4, 4), tombstone(20, 3)],  # no row for the merge: the append is the table's commit
        [live(20, 2), live(2, 2), live(6, 2)],  # late again (Parquet holds live(2, 2) already)
        [live(2, 4)],
    ]
    for number, run in enumerate(runs[:2], 1):
        write_run(sut, number, run, "hard")
    failpoint(f"{_MID_WRITE_POINTS[sut.name][-1]}=transient")
    with pytest.raises(SinkUnavailable):
        write_run(sut, 3, runs[2], "hard")
    failpoint(None)
    retry = write_run(sut, 3, runs[2], "hard", replay=True)
    assert not retry.skipped, retry
    assert_deletes_state(sut, runs[:3], "hard")
    assert sut.stored_all is not None
    stored = sut.stored_all()
    again = write_run(sut, 3, runs[2], "hard", replay=True)
    assert_replay_of_landed(sut, again, retry)
    assert sut.stored_all().equals(stored), f"{sut.name}: replaying the landed run changed what is stored"
    for number, run in enumerate(runs[3:], 4):
        write_run(sut, number, run, "hard")
        assert_deletes_state(sut, runs[:number], "hard")
    if not sut.version_log:
        assert set(sut.stored_all()["id"].to_pylist()) == {1, 2, 3, 4, 5, 6}


def _write_two_at_once(sut: SinkUnderTest, failpoint: Callable[[str | None], None], tmp_path: Path,
                       older: TableBatch, newer: TableBatch) -> None:
    """`older` held inside its write (the sink's last mid-write failpoint: after it read what is stored,
    before its last commit) while `newer` is written from another thread, as a parallel backfill's
    chunks are; then `older` goes on. Both must end without error."""
    gate = Gate(tmp_path)
    failpoint(gate.failpoint(_MID_WRITE_POINTS[sut.name][-1], "*1"))  # the first writer to get there waits
    errors: list[BaseException] = []

    def write(batch: TableBatch) -> None:
        try:
            sut.write(batch)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    held = threading.Thread(target=write, args=(older,))
    held.start()
    while not gate.waiting():
        assert held.is_alive(), f"{sut.name}: the first run ended before its failpoint: {errors}"
        time.sleep(0.01)
    second = threading.Thread(target=write, args=(newer,))
    second.start()
    second.join(timeout=3)  # it finishes, or waits for the held writer: both must end right
    gate.open()
    held.join(timeout=120)
    second.join(timeout=120)
    assert not held.is_alive() and not second.is_alive() and not errors, errors


def test_two_runs_written_at_once_by_one_process_store_each_key_once(
        sut: SinkUnderTest, failpoint: Callable[[str | None], None], tmp_path: Path) -> None:
    """A parallel backfill writes its chunks from threads of one process, and two chunks may hold
    versions of one key no file stores yet. The older run is held inside its write (after it read what
    is stored, before its commit) while the newer one writes: each key must end stored once, newest
    version winning (Delta once appended such a key from both, since appends never conflict)."""
    sut.write(batch_of(1, rows_of(FIRST)))
    older, newer = {10: 1, 11: 1}, {10: 2, 11: 3, 12: 1}  # keys no file stores yet
    _write_two_at_once(sut, failpoint, tmp_path, batch_of(2, rows_of(older), mode="backfill"),
                       batch_of(3, rows_of(newer), mode="backfill"))
    assert_state(sut, state_after(FIRST, older, newer))


@pytest.mark.parametrize("sut", ["parquet", "delta", "snowflake", "iceberg"], indirect=True)
def test_two_runs_with_hard_deletes_written_at_once_by_one_process(
        sut: SinkUnderTest, failpoint: Callable[[str | None], None], tmp_path: Path) -> None:
    """The same with hard deletes, whose tombstones the sink remembers apart from the table (Delta: the
    `_tombstones` side table, committed inside the table's writer lock with the main commits, so the
    second chunk reads it only once the held one has committed both; Snowflake: its `__TOMBSTONES`
    table, in the MERGE's transaction, one run of a table at a time in a process). The held chunk deletes
    key 3 and a key no file stores (10); the other revives 3 with a newer version, brings 10 late (older
    than its tombstone: it stays deleted) and deletes 4. The state is the newest version's, whatever the
    order."""
    write_run(sut, 1, FIRST_LIVE, "hard")
    older: Run = [tombstone(3, 2), tombstone(10, 2), live(11, 1)]
    newer: Run = [live(3, 3), tombstone(4, 2, region=UNKNOWN), live(10, 1), live(11, 2)]
    _write_two_at_once(sut, failpoint, tmp_path,
                       batch_of(2, table_of(older, DELETES_SCHEMA), deletes="hard", mode="backfill"),
                       batch_of(3, table_of(newer, DELETES_SCHEMA), deletes="hard", mode="backfill"))
    assert_deletes_state(sut, [FIRST_LIVE, older, newer], "hard")
    if not sut.version_log:
        assert set(sut.stored_all()["id"].to_pylist()) == {1, 2, 3, 5, 6, 11}
