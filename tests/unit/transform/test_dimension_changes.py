"""The pure dimension diff (loader/transform/dimension_changes.py), exact against expectations computed by
hand: SCD2 from full snapshots and from change files (a cursor column), merge, replace, and the row hash."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from loader.transform.dimension_changes import (
    IS_CURRENT,
    ROW_HASH,
    VALID_FROM,
    VALID_TO,
    DimensionChanges,
    DimensionSpec,
    diff,
    row_hashes,
    stored_schema,
)
from tests.support.dimension_rows import CURSOR, KEY, changes_of, snapshot

SCD2 = DimensionSpec("p", "customers", KEY, "scd2")
MERGE = DimensionSpec("p", "customers", KEY, "merge")
REPLACE = DimensionSpec("p", "customers", KEY, "replace")

T1 = datetime(2024, 6, 1, tzinfo=UTC)
T2 = datetime(2024, 6, 2, tzinfo=UTC)
T3 = datetime(2024, 6, 3, tzinfo=UTC)
US = timedelta(microseconds=1)


def d(text: str) -> Decimal:
    return Decimal(text)


def h(name: str | None, amount: str | None) -> str:
    """The documented hash of (name, amount), computed here: each value as text (null: NUL), joined
    with the unit separator, blake2b of 12 bytes."""
    parts = ["\x00" if v is None else v for v in (name, amount)]
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()






def version(key: int, name: str, amount: str, start: datetime, end: datetime | None,
            cursor: datetime | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": key, "name": name, "amount": d(amount)}
    if cursor is not None:
        row[CURSOR] = cursor
    return {**row, VALID_FROM: start, VALID_TO: end, IS_CURRENT: end is None, ROW_HASH: h(name, amount)}


def rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r["id"], r.get(VALID_FROM) or T1))


def scd2_table(versions: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(versions, schema=schema)


def apply(history: list[dict[str, Any]], changes: DimensionChanges) -> list[dict[str, Any]]:
    """What a sink holds after `changes` (scd2): closes replace the version with their key and
    valid_from, opens are added."""
    by_version = {(r["id"], r[VALID_FROM]): r for r in history}
    for row in [*changes.closes.to_pylist(), *changes.opens.to_pylist()]:
        by_version[(row["id"], row[VALID_FROM])] = row
    return sorted(by_version.values(), key=lambda r: (r["id"], r[VALID_FROM]))


def current_of(history: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([r for r in history if r[IS_CURRENT]], schema=schema)


# ------------------------------------------------------------------------------ SCD2 from snapshots

FIRST = {1: ("Ann", "10.00"), 2: ("Bob", "20.50"), 3: ("Cid", "9999999999999.99")}
SCD2_SCHEMA = stored_schema(snapshot(FIRST).schema, "scd2")


def first_versions() -> list[dict[str, Any]]:
    return [version(1, "Ann", "10.00", T1, None), version(2, "Bob", "20.50", T1, None),
            version(3, "Cid", "9999999999999.99", T1, None)]


def test_stored_schema_adds_the_version_columns_then_the_hash() -> None:
    assert stored_schema(snapshot(FIRST).schema, "scd2").names == [
        "id", "name", "amount", VALID_FROM, VALID_TO, IS_CURRENT, ROW_HASH]
    assert stored_schema(snapshot(FIRST).schema, "merge").names == ["id", "name", "amount", ROW_HASH]
    assert SCD2_SCHEMA.field(VALID_FROM).type == pa.timestamp("us", tz="UTC")


def test_scd2_first_load_opens_every_row_at_the_snapshot_time() -> None:
    changes = diff(snapshot(FIRST), None, SCD2, cursor=None, snapshot_time=T1, missing="close")
    assert changes.opens.schema == SCD2_SCHEMA
    assert rows(changes.opens) == first_versions()
    assert changes.closes.num_rows == 0
    assert changes.stale == 0
    assert not changes.empty


def test_scd2_unchanged_snapshot_is_empty() -> None:
    current = scd2_table(first_versions(), SCD2_SCHEMA)
    changes = diff(snapshot(FIRST), current, SCD2, cursor=None, snapshot_time=T2, missing="close")
    assert changes.empty
    assert changes.opens.num_rows == 0 and changes.closes.num_rows == 0


def test_scd2_changed_new_and_gone_keys_with_missing_close() -> None:
    current = scd2_table(first_versions(), SCD2_SCHEMA)
    second = {1: ("Ann", "10.00"), 2: ("Bob", "21.00"), 4: ("Dee", "-5.25")}
    changes = diff(snapshot(second), current, SCD2, cursor=None, snapshot_time=T2, missing="close")
    assert rows(changes.opens) == [version(2, "Bob", "21.00", T2, None), version(4, "Dee", "-5.25", T2, None)]
    assert rows(changes.closes) == [
        {**version(2, "Bob", "20.50", T1, T2)},
        {**version(3, "Cid", "9999999999999.99", T1, T2)},
    ]
    assert changes.closes.schema == SCD2_SCHEMA
    history = apply(first_versions(), changes)
    assert history == [
        version(1, "Ann", "10.00", T1, None),
        version(2, "Bob", "20.50", T1, T2), version(2, "Bob", "21.00", T2, None),
        version(3, "Cid", "9999999999999.99", T1, T2),
        version(4, "Dee", "-5.25", T2, None),
    ]


def test_scd2_gone_key_with_missing_keep_is_untouched() -> None:
    current = scd2_table(first_versions(), SCD2_SCHEMA)
    second = {1: ("Ann", "10.00"), 2: ("Bob", "21.00")}
    changes = diff(snapshot(second), current, SCD2, cursor=None, snapshot_time=T2, missing="keep")
    assert rows(changes.opens) == [version(2, "Bob", "21.00", T2, None)]
    assert rows(changes.closes) == [version(2, "Bob", "20.50", T1, T2)]
    # only key 3 absent, kept: nothing at all
    only_gone = diff(snapshot({1: FIRST[1], 2: FIRST[2]}), current, SCD2, cursor=None, snapshot_time=T2,
                     missing="keep")
    assert only_gone.empty


def test_scd2_key_back_after_being_closed_opens_a_new_version() -> None:
    history = [version(1, "Ann", "10.00", T1, None), version(3, "Cid", "9999999999999.99", T1, T2)]
    current = current_of(history, SCD2_SCHEMA)
    third = {1: ("Ann", "10.00"), 3: ("Cid", "1.00")}
    changes = diff(snapshot(third), current, SCD2, cursor=None, snapshot_time=T3, missing="close")
    assert rows(changes.opens) == [version(3, "Cid", "1.00", T3, None)]
    assert changes.closes.num_rows == 0
    assert apply(history, changes) == [
        version(1, "Ann", "10.00", T1, None),
        version(3, "Cid", "9999999999999.99", T1, T2), version(3, "Cid", "1.00", T3, None),
    ]
    # the same snapshot again: nothing (the closed version is no current one)
    again = diff(snapshot(third), current_of(apply(history, changes), SCD2_SCHEMA), SCD2, cursor=None,
                 snapshot_time=T3 + timedelta(hours=1), missing="close")
    assert again.empty


def test_scd2_snapshot_time_before_the_current_version_still_moves_forward() -> None:
    """A snapshot stamped earlier than the stored current version (a clock behind): the new version
    starts just after the old one, and the old one's valid_to is that same instant."""
    current = scd2_table([version(1, "Ann", "10.00", T2, None), version(2, "Bob", "20.50", T2, None)],
                         SCD2_SCHEMA)
    changes = diff(snapshot({1: ("Ann", "11.00"), 2: ("Bob", "20.50")}), current, SCD2, cursor=None,
                   snapshot_time=T1, missing="close")
    assert rows(changes.opens) == [version(1, "Ann", "11.00", T2 + US, None)]
    assert rows(changes.closes) == [version(1, "Ann", "10.00", T2, T2 + US)]


def test_scd2_gone_key_closed_before_its_start_never_ends_before_it_starts() -> None:
    """The same clock behind, for a key absent from the snapshot: its closing time is no earlier
    than its valid_from (a version never ends before it starts)."""
    current = scd2_table([version(1, "Ann", "10.00", T2, None), version(2, "Bob", "20.50", T2, None)],
                         SCD2_SCHEMA)
    changes = diff(snapshot({1: ("Ann", "10.00")}), current, SCD2, cursor=None, snapshot_time=T1,
                   missing="close")
    assert changes.opens.num_rows == 0
    [closed] = changes.closes.to_pylist()
    assert closed["id"] == 2 and closed[IS_CURRENT] is False
    assert closed[VALID_TO] > closed[VALID_FROM], closed
    assert rows(changes.closes) == [version(2, "Bob", "20.50", T2, T2 + US)]


# -------------------------------------------------------------------------- SCD2 from change files

C0, C1, C2, C3 = (T1 + timedelta(minutes=m, microseconds=m) for m in range(4))
CHANGE_SCD2_SCHEMA = stored_schema(changes_of([(1, "a", "1.00", C0)]).schema, "scd2")


def test_scd2_changes_chain_several_versions_of_a_key_in_cursor_order() -> None:
    incoming = changes_of([(1, "C", "3.00", C3), (2, "Bob", "2.00", C1), (1, "A", "1.00", C1),
                           (1, "B", "2.00", C2)])  # out of cursor order on purpose
    changes = diff(incoming, None, SCD2, cursor=CURSOR, snapshot_time=None, missing="close")
    assert changes.opens.schema == CHANGE_SCD2_SCHEMA
    assert rows(changes.opens) == [
        version(1, "A", "1.00", C1, C2, C1), version(1, "B", "2.00", C2, C3, C2),
        version(1, "C", "3.00", C3, None, C3), version(2, "Bob", "2.00", C1, None, C1),
    ]
    assert changes.closes.num_rows == 0 and changes.stale == 0


def test_scd2_changes_close_the_stored_current_version_at_the_first_new_one() -> None:
    history = [version(1, "X", "0.50", C0, None, C0)]
    current = current_of(history, CHANGE_SCD2_SCHEMA)
    incoming = changes_of([(1, "B", "2.00", C2), (1, "A", "1.00", C1)])
    changes = diff(incoming, current, SCD2, cursor=CURSOR, snapshot_time=None, missing="close")
    assert rows(changes.closes) == [version(1, "X", "0.50", C0, C1, C0)]
    assert rows(changes.opens) == [version(1, "A", "1.00", C1, C2, C1), version(1, "B", "2.00", C2, None, C2)]


def test_scd2_changes_repeated_values_collapse() -> None:
    history = [version(1, "X", "0.50", C0, None, C0)]
    current = current_of(history, CHANGE_SCD2_SCHEMA)
    # key 1: a repeat of the stored values, then A twice, then B; key 2 (new): Q twice
    incoming = changes_of([(1, "X", "0.50", C1), (1, "A", "1.00", C2), (1, "A", "1.00", C3),
                           (2, "Q", "7.00", C1), (2, "Q", "7.00", C2)])
    changes = diff(incoming, current, SCD2, cursor=CURSOR, snapshot_time=None, missing="close")
    assert rows(changes.opens) == [version(1, "A", "1.00", C2, None, C2),
                                   version(2, "Q", "7.00", C1, None, C1)]
    assert rows(changes.closes) == [version(1, "X", "0.50", C0, C2, C0)]
    assert changes.stale == 0
    # only repeats of what is stored: nothing
    only_repeat = diff(changes_of([(1, "X", "0.50", C1), (1, "X", "0.50", C2)]), current, SCD2, cursor=CURSOR,
                       snapshot_time=None, missing="close")
    assert only_repeat.empty and only_repeat.stale == 0


def test_scd2_changes_no_newer_than_the_current_version_are_stale() -> None:
    history = [version(1, "X", "0.50", C2, None, C2)]
    current = current_of(history, CHANGE_SCD2_SCHEMA)
    late = changes_of([(1, "A", "1.00", C1), (1, "B", "2.00", C2)])  # older, and as old as the current
    changes = diff(late, current, SCD2, cursor=CURSOR, snapshot_time=None, missing="close")
    assert changes.empty and changes.stale == 2
    mixed = changes_of([(1, "A", "1.00", C1), (1, "C", "3.00", C3), (1, "B", "2.00", C2)])
    changes = diff(mixed, current, SCD2, cursor=CURSOR, snapshot_time=None, missing="close")
    assert changes.stale == 2
    assert rows(changes.opens) == [version(1, "C", "3.00", C3, None, C3)]
    assert rows(changes.closes) == [version(1, "X", "0.50", C2, C3, C2)]


def test_scd2_changes_replayed_after_applying_are_empty() -> None:
    history = [version(1, "X", "0.50", C0, None, C0), version(3, "Z", "9.00", C0, None, C0)]
    incoming = changes_of([(1, "A", "1.00", C1), (1, "B", "2.00", C2), (2, "Bob", "2.00", C1)])
    changes = diff(incoming, current_of(history, CHANGE_SCD2_SCHEMA), SCD2, cursor=CURSOR, snapshot_time=None,
                   missing="close")
    history = apply(history, changes)
    assert history == [
        version(1, "X", "0.50", C0, C1, C0), version(1, "A", "1.00", C1, C2, C1),
        version(1, "B", "2.00", C2, None, C2), version(2, "Bob", "2.00", C1, None, C1),
        version(3, "Z", "9.00", C0, None, C0),
    ]
    replay = diff(incoming, current_of(history, CHANGE_SCD2_SCHEMA), SCD2, cursor=CURSOR, snapshot_time=None,
                  missing="close")
    assert replay.empty
    assert replay.stale == 3


# ------------------------------------------------------------------------------------------ merge

MERGE_SCHEMA = stored_schema(snapshot(FIRST).schema, "merge")


def merge_rows(data: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"id": k, "name": n, "amount": d(a), ROW_HASH: h(n, a)} for k, (n, a) in sorted(data.items())]


def test_merge_first_load_unchanged_and_upsert_and_delete() -> None:
    first = diff(snapshot(FIRST), None, MERGE, cursor=None, snapshot_time=T1, missing="close")
    assert rows(first.opens) == merge_rows(FIRST) and first.closes.num_rows == 0
    current = pa.Table.from_pylist(merge_rows(FIRST), schema=MERGE_SCHEMA)
    assert diff(snapshot(FIRST), current, MERGE, cursor=None, snapshot_time=T2, missing="close").empty

    second = {1: ("Ann", "10.00"), 2: ("Bob", "21.00"), 4: ("Dee", "-5.25")}
    changes = diff(snapshot(second), current, MERGE, cursor=None, snapshot_time=T2, missing="close")
    assert rows(changes.opens) == merge_rows({2: second[2], 4: second[4]})
    assert rows(changes.closes) == merge_rows({3: FIRST[3]})  # the deleted key's stored row

    kept = diff(snapshot(second), current, MERGE, cursor=None, snapshot_time=T2, missing="keep")
    assert rows(kept.opens) == merge_rows({2: second[2], 4: second[4]})
    assert kept.closes.num_rows == 0


# ---------------------------------------------------------------------------------------- replace


def test_replace_unchanged_is_empty_and_a_change_rewrites_the_whole_table() -> None:
    first = diff(snapshot(FIRST), None, REPLACE, cursor=None, snapshot_time=T1, missing="close")
    assert rows(first.opens) == merge_rows(FIRST) and first.closes.num_rows == 0
    # order is no change
    current = pa.Table.from_pylist(list(reversed(merge_rows(FIRST))), schema=MERGE_SCHEMA)
    assert diff(snapshot(FIRST), current, REPLACE, cursor=None, snapshot_time=T2, missing="close").empty

    second = {**FIRST, 2: ("Bob", "21.00")}
    changes = diff(snapshot(second), current, REPLACE, cursor=None, snapshot_time=T2, missing="close")
    assert rows(changes.opens) == merge_rows(second)
    assert changes.closes.num_rows == 0
    fewer = diff(snapshot({1: FIRST[1]}), current, REPLACE, cursor=None, snapshot_time=T2, missing="close")
    assert rows(fewer.opens) == merge_rows({1: FIRST[1]})


# --------------------------------------------------------------------------------------- row hash


def test_row_hash_is_a_known_stable_digest() -> None:
    data = pa.table({"name": ["a"], "amount": pa.array([d("12.30")], pa.decimal128(15, 2))})
    assert row_hashes(data, ["name", "amount"]).to_pylist() == ["58068b42dd53ff44965fa55e"]
    assert h("a", "12.30") == "58068b42dd53ff44965fa55e"


def test_row_hash_tells_null_from_empty_text_and_depends_on_column_order() -> None:
    data = pa.table({"a": pa.array([None, "", "x"], pa.string()),
                     "b": pa.array(["x", "x", None], pa.string())})
    null, empty, swapped = row_hashes(data, ["a", "b"]).to_pylist()
    assert null != empty
    assert len({null, empty, swapped}) == 3
    assert row_hashes(data, ["a", "b"]).to_pylist() != row_hashes(data, ["b", "a"]).to_pylist()
    same = pa.table({"a": ["p"], "b": ["q"]})
    assert row_hashes(same, ["a", "b"]).to_pylist() != row_hashes(same, ["b", "a"]).to_pylist()
    # the separator: ("ab", "") is no ("a", "b")
    split = pa.table({"a": ["ab", "a"], "b": ["", "b"]})
    first, second = row_hashes(split, ["a", "b"]).to_pylist()
    assert first != second


@pytest.mark.parametrize("rows_", [0, 3])
def test_row_hash_has_one_digest_per_row(rows_: int) -> None:
    data = pa.table({"a": pa.array([str(i) for i in range(rows_)], pa.string())})
    assert len(row_hashes(data, ["a"])) == rows_
