"""The demo landing-zone generator: layout contract, determinism, and what each append adds."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from loader.demo import generator as dd
from loader.errors import EXIT_USAGE, BadSourceData, ConfigError
from tests.support.cli import run_cli, write_config
from tests.support.demo_clock import DEMO_START, append_args, append_now, init_now

SCALE = 0.01
DAYS = 5


@pytest.fixture(scope="module")
def base_zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base") / "landing"
    dd.init_landing_zone(root, now=init_now(DAYS), scale=SCALE, seed=7, days=DAYS)
    return root


@pytest.fixture
def zone(base_zone: Path, tmp_path: Path) -> Path:
    """A private copy of the initialized zone (init runs once per module)."""
    root = tmp_path / "landing"
    shutil.copytree(base_zone, root)
    return root


def fact_files(root: Path, table: str) -> list[Path]:
    return sorted((root / table).glob("ingest_date=*/part-*.parquet"))


def read_fact(root: Path, table: str) -> pa.Table:
    """The whole fact table with its hive column, as a loader would see it."""
    return ds.dataset(root / table, format="parquet", partitioning="hive").to_table()


def latest_orders(root: Path) -> dict[int, dict]:
    rows = read_fact(root, "orders").sort_by([("o_orderkey", "ascending"), ("o_updated_at", "ascending")])
    return {r["o_orderkey"]: r for r in rows.to_pylist()}


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def append(root: Path, **options: Any) -> dd.AppendSummary:
    """One append filling the whole day after the last ingest day, in a folder of its own (the pinned
    layout of tests/support/demo_clock.py)."""
    return dd.append_batch(root, now=append_now(root), **options)


# ------------------------------------------------------------------------------------------ layout


def test_init_layout_schema_and_summary(tmp_path: Path) -> None:
    root = tmp_path / "lz"
    summary = dd.init_landing_zone(root, now=init_now(DAYS), scale=SCALE, seed=1, days=DAYS)

    assert summary.root == root
    assert summary.rows == {
        "customer": 1500,
        "supplier": 100,
        "nation": 25,
        "region": 5,
        "orders": 15000,
        "lineitem": 60175,
    }
    assert summary.ingest_days == DAYS
    assert summary.first_ingest_date == date(2024, 1, 1)
    assert summary.last_ingest_date == date(2024, 1, DAYS)
    assert not any(p.name.startswith(("_tpchgen", ".")) for p in root.iterdir())  # temp folder cleaned up

    for table in ("orders", "lineitem"):
        files = fact_files(root, table)
        assert [f.relative_to(root / table).as_posix() for f in files] == [
            f"ingest_date=2024-01-0{d}/part-0000{d}.parquet" for d in range(1, DAYS + 1)
        ]
        for f in files:
            meta = pq.ParquetFile(f).metadata
            assert pq.read_schema(f).remove_metadata().equals(dd.SCHEMAS[table])  # no ingest_date column
            for i in range(meta.num_row_groups):
                rg = meta.row_group(i)
                assert rg.num_rows <= dd.ROW_GROUP_SIZE
                assert rg.column(0).compression == "ZSTD"
                cursor = rg.column(dd.SCHEMAS[table].get_field_index(dd.CURSOR_COLUMNS[table]))
                assert cursor.statistics is not None and cursor.statistics.has_min_max
    for table in dd.DIMENSION_TABLES:
        schema = pq.read_schema(root / table / f"{table}.parquet").remove_metadata()
        assert schema.equals(dd.SCHEMAS[table])
        assert pa.string_view() not in schema.types

    assert pq.read_table(root / "orders").num_rows == 15000
    state = dd.read_demo_state(root)
    assert state.seed == 1 and state.next_batch == DAYS + 1 and state.last_ingest_date == date(2024, 1, DAYS)
    assert state.max_orderkey == pc.max(pq.read_table(root / "orders")["o_orderkey"]).as_py()
    assert state.max_cursor == summary.max_cursor


def test_init_spreads_orders_by_key_with_cursors_inside_their_day(base_zone: Path) -> None:
    previous_max_key = 0
    for f in fact_files(base_zone, "orders"):
        day = date.fromisoformat(f.parent.name.split("=")[1])
        t = pq.read_table(f)
        cursors = t["o_updated_at"].to_pylist()
        assert cursors == sorted(cursors)  # sorted by cursor inside the file
        assert min(cursors) >= utc_midnight(day) and max(cursors) < utc_midnight(day + timedelta(days=1))
        keys = t["o_orderkey"].to_numpy()
        assert keys.min() > previous_max_key  # earlier keys on earlier days
        previous_max_key = keys.max()
    assert (
        dd.read_demo_state(base_zone).max_cursor
        == pc.max(read_fact(base_zone, "orders")["o_updated_at"]).as_py()
    )


def test_lineitems_carry_their_order_cursor_and_day(base_zone: Path) -> None:
    orders = read_fact(base_zone, "orders").select(["o_orderkey", "o_updated_at", "ingest_date"])
    orders = orders.rename_columns(["o_orderkey", "o_updated_at", "o_ingest_date"])
    items = read_fact(base_zone, "lineitem")
    joined = items.join(orders, keys="l_orderkey", right_keys="o_orderkey", join_type="left outer")
    assert joined.num_rows == items.num_rows == 60175
    assert pc.all(pc.equal(joined["l_updated_at"], joined["o_updated_at"])).as_py()
    assert pc.all(pc.equal(joined["ingest_date"], joined["o_ingest_date"])).as_py()
    for f in fact_files(base_zone, "lineitem"):
        cursors = pq.read_table(f)["l_updated_at"].to_pylist()
        assert cursors == sorted(cursors)


# ------------------------------------------------------------------------------------ determinism


def test_same_seed_and_calls_give_identical_files(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        dd.init_landing_zone(root, now=init_now(3), scale=SCALE, seed=3, days=3)
        append(root, orders=100, updates=50, late=10)
        append(root, orders=30, updates=20, late=5)
    files = [sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) for root in roots]
    assert files[0] == files[1]
    for rel in files[0]:
        assert (roots[0] / rel).read_bytes() == (roots[1] / rel).read_bytes(), rel
    for table in ("orders", "lineitem"):
        assert read_fact(roots[0], table).equals(read_fact(roots[1], table))

    other = tmp_path / "c"
    dd.init_landing_zone(other, now=init_now(3), scale=SCALE, seed=4, days=3)
    assert not read_fact(other, "orders")["o_updated_at"].equals(
        pq.read_table(roots[0] / "orders" / "ingest_date=2024-01-01")["o_updated_at"]
    )


def test_append_replaces_leftovers_of_a_crashed_append(zone: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    shutil.copytree(zone, clean)
    next_day = dd.read_demo_state(zone).last_ingest_date + timedelta(days=1)
    junk = dd.fact_partition_dir(zone, "orders", next_day)
    junk.mkdir(parents=True)
    pq.write_table(pq.read_table(fact_files(zone, "orders")[0]), junk / "part-99999.parquet")

    append(zone, orders=50, updates=10, late=5)
    append(clean, orders=50, updates=10, late=5)
    for table in ("orders", "lineitem"):
        assert [p.name for p in fact_files(zone, table)] == [p.name for p in fact_files(clean, table)]
        assert read_fact(zone, table).equals(read_fact(clean, table))


# ------------------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def tpch_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tpchgen-cli's own output at SCALE, as init reads it."""
    out = tmp_path_factory.mktemp("tpchgen")
    dd._run_tpchgen(dd.find_tpchgen_cli(), scale=SCALE, out=out)
    return out


def reference_init(tpch: Path, *, seed: int, days: int, start: datetime) -> dict[str, pa.Table]:
    """The initial fact files computed with whole tables in memory: relative path -> rows."""
    orders = dd._read_tpch(tpch / "orders.parquet", dd.ORDERS_SCHEMA)
    lineitem = dd._read_tpch(tpch / "lineitem.parquet", dd.LINEITEM_SCHEMA)
    n = orders.num_rows
    day = np.arange(n) * days // n
    rng = np.random.default_rng([seed, dd._INIT_STREAM])
    cursor = int((start - dd._EPOCH) / timedelta(microseconds=1)) + day * 86_400_000_000
    cursor = cursor + rng.integers(0, 86_400_000_000, n, dtype=np.int64)
    pos = np.searchsorted(orders["o_orderkey"].to_numpy(), lineitem["l_orderkey"].to_numpy())
    out = {}
    for table, data, row_day, row_cursor in (
        ("orders", orders, day, cursor),
        ("lineitem", lineitem, day[pos], cursor[pos]),
    ):
        cursor_name = dd.CURSOR_COLUMNS[table]
        data = data.append_column(dd.SCHEMAS[table].field(cursor_name), pa.array(row_cursor, dd.CURSOR_TYPE))
        data = data.append_column(dd.SCHEMAS[table].field(dd.OP_COLUMN),
                                  pa.array(["I"] * data.num_rows, pa.string()))
        for d in np.unique(row_day):
            rel = f"{table}/ingest_date={(start + timedelta(days=int(d))).date()}/part-{d + 1:05d}.parquet"
            keys = [(cursor_name, "ascending")] + [(k, "ascending") for k in dd.PRIMARY_KEYS[table]]
            out[rel] = data.filter(pa.array(row_day == d)).sort_by(keys)
    return out


@pytest.mark.parametrize("days", [1, 7])
def test_streamed_init_equals_whole_tables_in_memory(
    tpch_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, days: int
) -> None:
    """Small read batches: days start and end inside batches, and one day spans many batches."""
    monkeypatch.setattr(dd, "_READ_BATCH_ROWS", 997)
    root = tmp_path / "lz"
    rows, state = dd._write_initial(root, tpch_files, seed=5, scale=SCALE, days=days, now=init_now(days))

    expected = reference_init(tpch_files, seed=5, days=days, start=DEMO_START)
    written = sorted(p.relative_to(root).as_posix() for t in dd.FACT_TABLES for p in fact_files(root, t))
    assert written == sorted(expected)
    for rel, table in expected.items():
        assert pq.read_table(root / rel).equals(table), rel
    assert rows["orders"] == 15000 and rows["lineitem"] == 60175
    orders = [t for rel, t in expected.items() if rel.startswith("orders/")]
    assert state.max_cursor == max(pc.max(t["o_updated_at"]).as_py() for t in orders)
    assert state.max_orderkey == pc.max(pq.read_table(tpch_files / "orders.parquet")["o_orderkey"]).as_py()


@pytest.mark.parametrize("table", ["orders", "lineitem"])
def test_init_refuses_tpchgen_output_out_of_key_order(tpch_files: Path, tmp_path: Path, table: str) -> None:
    tpch = tmp_path / "tpch"
    shutil.copytree(tpch_files, tpch)
    data = dd._read_tpch(tpch / f"{table}.parquet", dd.SCHEMAS[table])
    pq.write_table(data.take(np.arange(data.num_rows)[::-1]), tpch / f"{table}.parquet")
    with pytest.raises(BadSourceData, match=f"{table}.parquet with its order keys not"):
        dd._write_initial(tmp_path / "lz", tpch, seed=1, scale=SCALE, days=3, now=init_now(3))


def test_many_row_groups_per_file_give_the_same_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At large scales a file has many row groups: append reads single row groups back (the rows it
    clones and updates, the lineitems it copies) and must find the same rows as with one group a file."""
    calls = [
        {"orders": 200, "updates": 300, "late": 20},
        {"orders": 50, "updates": 100, "late": 5, "recent": 50},
    ]
    zones = {}
    for name, group_rows in (("one", dd.ROW_GROUP_SIZE), ("many", 700)):
        monkeypatch.setattr(dd, "ROW_GROUP_SIZE", group_rows)
        zones[name] = tmp_path / name
        dd.init_landing_zone(zones[name], now=init_now(3), scale=SCALE, seed=9, days=3)
        for call in calls:
            append(zones[name], **call)
    for table in dd.FACT_TABLES:
        files = fact_files(zones["one"], table)
        assert [f.relative_to(zones["one"]) for f in files] == [
            f.relative_to(zones["many"]) for f in fact_files(zones["many"], table)
        ]
        for f in files:
            many = zones["many"] / f.relative_to(zones["one"])
            assert pq.read_table(f).equals(pq.read_table(many)), f
        assert pq.ParquetFile(fact_files(zones["many"], table)[0]).metadata.num_row_groups > 5
    assert dd.read_demo_state(zones["one"]) == dd.read_demo_state(zones["many"])


# ----------------------------------------------------------------------------------------- append


def test_append_new_orders_get_new_keys_lineitems_and_the_next_day(zone: Path) -> None:
    before = dd.read_demo_state(zone)
    customers = set(pq.read_table(zone / "customer")["c_custkey"].to_pylist())

    summary = append(zone, orders=300, updates=0, late=0)

    assert summary.batch == before.next_batch == DAYS + 1
    assert summary.ingest_date == before.last_ingest_date + timedelta(days=1)
    day = f"ingest_date={summary.ingest_date.isoformat()}"
    assert summary.files == (
        zone / "orders" / day / f"part-{summary.batch:05d}.parquet",
        zone / "lineitem" / day / f"part-{summary.batch:05d}.parquet",
    )
    new = pq.read_table(summary.files[0])
    keys = new["o_orderkey"].to_numpy()
    assert sorted(keys) == list(range(before.max_orderkey + 1, before.max_orderkey + 301))
    assert set(new["o_custkey"].to_pylist()) <= customers
    cursors = new["o_updated_at"].to_pylist()
    assert cursors == sorted(cursors)
    assert min(cursors) >= utc_midnight(summary.ingest_date) > before.max_cursor
    assert max(cursors) < utc_midnight(summary.ingest_date + timedelta(days=1))
    assert new.schema.remove_metadata().equals(dd.ORDERS_SCHEMA)

    items = pq.read_table(summary.files[1])
    assert items.schema.remove_metadata().equals(dd.LINEITEM_SCHEMA)
    assert items.num_rows == summary.lineitems > 0
    assert set(items["l_orderkey"].to_pylist()) == set(keys.tolist())  # every new order has lineitems
    cursor_of = dict(zip(keys.tolist(), cursors, strict=True))
    assert all(
        cursor_of[k] == c
        for k, c in zip(items["l_orderkey"].to_pylist(), items["l_updated_at"].to_pylist(), strict=True)
    )
    pairs = read_fact(zone, "lineitem").select(["l_orderkey", "l_linenumber"]).to_pylist()
    assert len({(p["l_orderkey"], p["l_linenumber"]) for p in pairs}) == len(pairs)  # lineitem key unique

    after = dd.read_demo_state(zone)
    assert after.next_batch == before.next_batch + 1
    assert after.max_orderkey == before.max_orderkey + 300 == summary.max_orderkey
    assert after.max_cursor == max(cursors) == summary.max_cursor
    assert after.last_ingest_date == summary.ingest_date


def test_append_updates_change_status_and_price_keep_keys_and_move_cursors(zone: Path) -> None:
    previous = latest_orders(zone)
    before = dd.read_demo_state(zone)

    summary = append(zone, orders=0, updates=150, late=0)

    assert summary.updated_orders == 150 and summary.lineitems == 0
    assert summary.files == (summary.files[0],)  # orders only: no lineitem file for this batch
    assert not dd.fact_partition_dir(zone, "lineitem", summary.ingest_date).exists()
    updated = pq.read_table(summary.files[0]).to_pylist()
    assert len({r["o_orderkey"] for r in updated}) == 150
    for row in updated:
        old = previous[row["o_orderkey"]]
        assert row["o_orderstatus"] != old["o_orderstatus"]
        assert row["o_totalprice"] == (old["o_totalprice"] * Decimal("1.05")).quantize(
            Decimal("0.01"), ROUND_HALF_UP
        )
        assert row["o_updated_at"] > before.max_cursor
        changed = ("o_orderstatus", "o_totalprice", "o_updated_at", "ingest_date", "op")  # op: I -> U
        assert {k: v for k, v in row.items() if k not in changed} == {
            k: v for k, v in old.items() if k not in changed
        }

    # A second round of updates starts from the newest version of each order.
    latest = latest_orders(zone)
    again = append(zone, orders=0, updates=15000, late=0)  # every order once
    for row in pq.read_table(again.files[0]).to_pylist():
        old = latest[row["o_orderkey"]]
        assert row["o_orderstatus"] != old["o_orderstatus"]
        assert row["o_totalprice"] == (old["o_totalprice"] * Decimal("1.05")).quantize(
            Decimal("0.01"), ROUND_HALF_UP
        )


def test_append_late_orders_are_older_than_the_newest_cursor_by_under_30_minutes(zone: Path) -> None:
    append(zone, orders=20, updates=5, late=0)
    before = dd.read_demo_state(zone)

    summary = append(zone, orders=100, updates=20, late=40)

    orders = pq.read_table(summary.files[0])
    late = orders.filter(pc.less(orders["o_updated_at"], pa.scalar(before.max_cursor, dd.CURSOR_TYPE)))
    assert late.num_rows == summary.late_orders == 40
    cursors = late["o_updated_at"].to_pylist()
    assert all(
        before.max_cursor - dd.MAX_LATENESS < c <= before.max_cursor - timedelta(minutes=1) for c in cursors
    )
    assert min(cursors) == summary.min_late_cursor
    assert summary.previous_max_cursor == before.max_cursor < summary.max_cursor
    assert min(late["o_orderkey"].to_pylist()) > before.max_orderkey  # new keys, not updates

    items = pq.read_table(summary.files[1])
    late_items = items.filter(pc.is_in(items["l_orderkey"], late["o_orderkey"]))
    assert set(late_items["l_orderkey"].to_pylist()) == set(late["o_orderkey"].to_pylist())
    cursor_of = dict(zip(late["o_orderkey"].to_pylist(), cursors, strict=True))
    assert all(
        cursor_of[k] == c
        for k, c in zip(
            late_items["l_orderkey"].to_pylist(), late_items["l_updated_at"].to_pylist(), strict=True
        )
    )
    assert dd.read_demo_state(zone).max_orderkey == before.max_orderkey + 140


def test_every_record_is_inside_or_before_its_ingest_day(zone: Path) -> None:
    """The pruning contract: no cursor is later than the end of its ingest day."""
    for _ in range(3):
        append(zone, orders=50, updates=50, late=30)
    for table in ("orders", "lineitem"):
        t = read_fact(zone, table)
        end = pc.add(
            pc.cast(pc.cast(t["ingest_date"], pa.date32()), pa.timestamp("us", tz="UTC")),
            pa.scalar(timedelta(days=1), pa.duration("us")),
        )
        assert pc.all(pc.less(t[dd.CURSOR_COLUMNS[table]], end)).as_py()
        files = fact_files(zone, table)
        assert len(files) == DAYS + 3
        for f in files:
            c = pq.read_table(f)[dd.CURSOR_COLUMNS[table]].to_numpy()
            assert bool(np.all(np.diff(c.astype("int64")) >= 0))


# ----------------------------------------------------------------------------------------- errors


def test_init_refuses_an_existing_landing_zone(base_zone: Path) -> None:
    with pytest.raises(ConfigError, match="use a new folder or delete it"):
        dd.init_landing_zone(base_zone, now=init_now(), scale=SCALE)


def test_append_and_state_refuse_a_folder_that_is_not_a_landing_zone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loader demo-data init"):
        dd.append_batch(tmp_path, now=init_now())
    with pytest.raises(ConfigError, match="loader demo-data init"):
        dd.read_demo_state(tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 0},
        {"days": 0},
        {"seed": -1},
        {"now": datetime(2024, 1, 31)},  # naive
        {"now": "2024-01-31T00:00:00Z"},  # not a datetime
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError,
                       match="must be" if "now" not in kwargs else "now must be a timezone-aware"):
        dd.init_landing_zone(tmp_path / "lz", **{"now": init_now(), **kwargs})
    assert not (tmp_path / "lz").exists()


@pytest.mark.parametrize(
    "kwargs", [{"orders": -1}, {"orders": 0, "updates": 0, "late": 0}, {"updates": 10**9}, {"late": 1.5}]
)
def test_append_rejects_bad_counts(zone: Path, kwargs: dict) -> None:
    before = (zone / dd.STATE_FILE).read_text()
    with pytest.raises(ConfigError):
        append(zone, **kwargs)
    assert (zone / dd.STATE_FILE).read_text() == before


def test_now_moves_the_history(tmp_path: Path) -> None:
    now = datetime(2023, 6, 3, tzinfo=UTC)  # midnight: the two days before it, whole
    summary = dd.init_landing_zone(tmp_path / "lz", now=now, scale=SCALE, days=2)
    assert summary.first_ingest_date == date(2023, 6, 1) and summary.last_ingest_date == date(2023, 6, 2)
    assert now - timedelta(days=1) <= summary.max_cursor < now


# ----------------------------------------------------------------------------------------- deletes


def test_init_writes_op_insert_on_every_fact_row(base_zone: Path) -> None:
    for table in dd.FACT_TABLES:
        data = read_fact(base_zone, table)
        assert data.schema.field(dd.OP_COLUMN).type == pa.string()
        assert set(data[dd.OP_COLUMN].to_pylist()) == {"I"}, table


def test_append_deletes_write_tombstones_for_orders_and_their_lineitems(zone: Path) -> None:
    before = latest_orders(zone)
    items_before = read_fact(zone, "lineitem")
    state = dd.read_demo_state(zone)
    summary = append(zone, orders=30, updates=20, late=3, deletes=25)
    assert (summary.deleted_orders, summary.new_orders, summary.updated_orders) == (25, 30, 20)

    orders = pq.read_table(summary.files[0])
    assert orders.schema.remove_metadata().equals(dd.ORDERS_SCHEMA)
    ops = orders[dd.OP_COLUMN].to_pylist()
    assert (ops.count("I"), ops.count("U"), ops.count("D")) == (33, 20, 25)
    dead = [r for r in orders.to_pylist() if r[dd.OP_COLUMN] == "D"]
    updated = {r["o_orderkey"] for r in orders.to_pylist() if r[dd.OP_COLUMN] == "U"}
    assert not updated & {r["o_orderkey"] for r in dead}  # an order is updated or deleted, not both
    for row in dead:  # the before-image: the order's latest row, a new cursor in the batch's day
        old = before[row["o_orderkey"]]
        assert {k: v for k, v in row.items() if k not in ("o_updated_at", "op")} == {
            k: v for k, v in old.items() if k not in ("o_updated_at", "op", "ingest_date")}
        assert utc_midnight(summary.ingest_date) <= row["o_updated_at"] > state.max_cursor

    items = pq.read_table(summary.files[1])
    gone = items.filter(pc.equal(items[dd.OP_COLUMN], "D"))
    assert gone.num_rows == summary.deleted_lineitems > summary.deleted_orders
    cursor_of = {r["o_orderkey"]: r["o_updated_at"] for r in dead}
    assert set(gone["l_orderkey"].to_pylist()) == set(cursor_of)
    assert all(cursor_of[r["l_orderkey"]] == r["l_updated_at"] for r in gone.to_pylist())
    every = items_before.filter(pc.is_in(items_before["l_orderkey"], pa.array(list(cursor_of), pa.int64())))
    assert gone.num_rows == every.num_rows  # every lineitem of a deleted order
    assert summary.max_cursor >= max(cursor_of.values())


def test_deleted_orders_are_never_picked_again(zone: Path) -> None:
    first = append(zone, orders=0, updates=0, late=0, deletes=200)
    deleted = set(pq.read_table(first.files[0])["o_orderkey"].to_pylist())
    second = append(zone, orders=500, updates=3000, late=0, deletes=3000, update_from="any")
    later = pq.read_table(second.files[0])
    assert not deleted & set(later["o_orderkey"].to_pylist())
    with pytest.raises(ConfigError, match="deletes=15000"):  # fewer live orders are left than that
        append(zone, orders=0, updates=0, late=0, deletes=15000)


def _appended_twice(base_zone: Path, tmp_path: Path, *appends: dict[str, Any]) -> list[Path]:
    """Two copies of `base_zone` (a/, b/), each given the same `appends` in order."""
    zones = []
    for name in ("a", "b"):
        root = tmp_path / name
        shutil.copytree(base_zone, root)
        for options in appends:
            append(root, **options)
        zones.append(root)
    return zones


def test_appends_with_deletes_are_deterministic(base_zone: Path, tmp_path: Path) -> None:
    zones = _appended_twice(base_zone, tmp_path, dict(orders=40, updates=10, late=2, deletes=15),
                            dict(orders=5, updates=5, late=0, deletes=7))
    for table in dd.FACT_TABLES:
        for a, b in zip(fact_files(zones[0], table), fact_files(zones[1], table), strict=True):
            assert a.read_bytes() == b.read_bytes(), a


def test_a_batch_without_deletes_draws_as_before(base_zone: Path, tmp_path: Path) -> None:
    """--deletes draws last: asking for none leaves the other records of the batch as they were."""
    plain, with_deletes = tmp_path / "plain", tmp_path / "deletes"
    for root in (plain, with_deletes):
        shutil.copytree(base_zone, root)
    append(plain, orders=40, updates=10, late=2)
    summary = append(with_deletes, orders=40, updates=10, late=2, deletes=5)
    want = pq.read_table(fact_files(plain, "orders")[-1])
    got = pq.read_table(summary.files[0])
    assert got.filter(pc.not_equal(got["op"], "D")).equals(want)


def test_a_zone_made_before_op_is_refused_with_the_fix(zone: Path) -> None:
    state = dd.read_demo_state(zone)
    (zone / dd.STATE_FILE).write_text(json.dumps({**state.to_json(), "version": 1}))
    with pytest.raises(ConfigError, match="recreate it with `loader demo-data init`"):
        append(zone, orders=1, updates=0, late=0)


# ------------------------------------------------------------------------------------ customer changes

CHANGING = ("c_mktsegment", "c_phone", "c_nationkey")


def customers(root: Path) -> pa.Table:
    return pq.read_table(root / "customer" / "customer.parquet")


def test_customer_changes_rewrite_the_snapshot_changing_only_those_customers(zone: Path) -> None:
    path = zone / "customer" / "customer.parquet"
    before = customers(zone)
    summary = append(zone, orders=10, updates=5, late=1, customer_changes=5)
    after = customers(zone)

    assert summary.changed_customers == 5
    assert path in summary.files
    assert pq.read_schema(path).remove_metadata().equals(dd.CUSTOMER_SCHEMA)
    assert after.num_rows == before.num_rows
    keys = after["c_custkey"].to_pylist()
    assert keys == before["c_custkey"].to_pylist()  # same rows, same order
    assert len(set(keys)) == len(keys)
    for name in dd.CUSTOMER_SCHEMA.names:  # no other column differs
        if name not in CHANGING:
            assert after[name].equals(before[name]), name
    old, new = before.to_pylist(), after.to_pylist()
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    assert len(changed) == 5
    for i in changed:
        assert any(old[i][c] != new[i][c] for c in CHANGING)
        assert new[i]["c_mktsegment"] in dd.MARKET_SEGMENTS
        assert 0 <= new[i]["c_nationkey"] < dd.NATION_KEYS
    assert not any(p.name.startswith((".", "_")) for p in path.parent.iterdir())  # no temp file left behind


def test_customer_changes_vary_the_fields_each_customer_changes(zone: Path) -> None:
    before = customers(zone).to_pylist()
    append(zone, orders=0, updates=0, late=0, customer_changes=200)
    after = customers(zone).to_pylist()
    patterns = {tuple(a[c] != b[c] for c in CHANGING) for a, b in zip(before, after, strict=True) if a != b}
    assert (False, False, False) not in patterns
    assert len(patterns) == 7  # every non-empty subset of segment, phone, nation occurs
    for a, b in zip(before, after, strict=True):
        if a["c_phone"] != b["c_phone"]:  # a new phone carries its nation's country code
            assert b["c_phone"].startswith(f"{b['c_nationkey'] + 10:02d}-")


def test_customer_changes_are_deterministic_for_a_seed(base_zone: Path, tmp_path: Path) -> None:
    zones = _appended_twice(base_zone, tmp_path, dict(orders=20, updates=5, late=1, customer_changes=7),
                            dict(orders=0, updates=0, late=0, customer_changes=3))
    a, b = (root / "customer" / "customer.parquet" for root in zones)
    assert a.read_bytes() == b.read_bytes()
    assert customers(zones[0]).equals(customers(zones[1]))


def test_customer_changes_draw_last(base_zone: Path, tmp_path: Path) -> None:
    """The fact files of a batch are the same with or without customer changes."""
    plain, changed = tmp_path / "plain", tmp_path / "changed"
    for root in (plain, changed):
        shutil.copytree(base_zone, root)
    append(plain, orders=40, updates=10, late=2, deletes=3)
    append(changed, orders=40, updates=10, late=2, deletes=3, customer_changes=4)
    for table in dd.FACT_TABLES:
        assert fact_files(plain, table)[-1].read_bytes() == fact_files(changed, table)[-1].read_bytes()


def test_no_customer_changes_leave_the_customer_file_untouched(zone: Path) -> None:
    path = zone / "customer" / "customer.parquet"
    mtime, data = path.stat().st_mtime_ns, path.read_bytes()
    summary = append(zone, orders=10, updates=5, late=1)
    assert summary.changed_customers == 0 and path not in summary.files
    assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data


def test_too_many_customer_changes_are_refused_naming_the_count(zone: Path) -> None:
    before = (zone / dd.STATE_FILE).read_text()
    n = customers(zone).num_rows
    with pytest.raises(dd.TooManyCustomerChanges, match=f"holds only {n} customers"):
        append(zone, orders=0, updates=0, late=0, customer_changes=n + 1)
    assert (zone / dd.STATE_FILE).read_text() == before
    with pytest.raises(ConfigError, match="customer_changes must be"):
        append(zone, customer_changes=-1)


def test_cli_customer_changes_help_error_and_summary(zone: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", landing_zone=str(zone))
    helped = run_cli(config, "demo-data", "append", "--help").stdout
    assert "--customer-changes" in helped and "c_mktsegment" in helped and "snapshot" in helped

    n = customers(zone).num_rows
    failed = run_cli(config, "demo-data", "append", *append_args(config), "--customer-changes", str(n + 1),
                     check=False)
    assert failed.returncode == EXIT_USAGE, failed.stderr
    assert "--customer-changes" in failed.stderr and f"holds only {n} customers" in failed.stderr

    done = run_cli(config, "demo-data", "append", *append_args(config), "--orders", "0", "--updates", "0",
                   "--late", "0", "--customer-changes", "3").stdout
    assert "3 customers changed" in done


# ----------------------------------------------------------------------------------------- the clock

SMALL = 0.002  # 3,000 orders: the clock tests need a zone, not a big one


def cursors_and_days(root: Path, table: str) -> tuple[list[datetime], list[date]]:
    """Every cursor of a fact table, and the ingest day of its row."""
    data = read_fact(root, table)
    days = [d if isinstance(d, date) else date.fromisoformat(str(d)) for d in data["ingest_date"].to_pylist()]
    return data[dd.CURSOR_COLUMNS[table]].to_pylist(), days


def assert_before_now_and_day_end(root: Path, now: datetime) -> None:
    """No cursor after `now`, none at or after the end of its ingest day."""
    for table in dd.FACT_TABLES:
        cursors, days = cursors_and_days(root, table)
        assert max(cursors) < now, table
        assert all(c < utc_midnight(d + timedelta(days=1)) for c, d in zip(cursors, days, strict=True)), table


def test_init_with_the_real_clock_ends_within_the_last_day(tmp_path: Path) -> None:
    from loader.demo import landing_zone

    before = datetime.now(UTC)
    summary = landing_zone.init(str(tmp_path / "lz"), scale=SMALL, seed=1, days=2)  # no now: the clock
    after = datetime.now(UTC)
    assert before - timedelta(days=1) < summary.max_cursor <= after
    assert summary.last_ingest_date in {(before - timedelta(microseconds=1)).date(),
                                        (after - timedelta(microseconds=1)).date()}
    assert summary.first_ingest_date == summary.last_ingest_date - timedelta(days=1)
    assert_before_now_and_day_end(tmp_path / "lz", after)
    newest = max(pc.max(read_fact(tmp_path / "lz", t)[dd.CURSOR_COLUMNS[t]]).as_py() for t in dd.FACT_TABLES)
    assert newest == summary.max_cursor == dd.read_demo_state(tmp_path / "lz").max_cursor


def test_init_at_a_fixed_now_is_deterministic_and_ends_just_before_it(tmp_path: Path) -> None:
    now = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)  # not midnight: each batch holds 24 hours
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        summary = dd.init_landing_zone(root, now=now, scale=SMALL, seed=11, days=3)
    files = [sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) for root in roots]
    assert files[0] == files[1]
    for rel in files[0]:
        assert (roots[0] / rel).read_bytes() == (roots[1] / rel).read_bytes(), rel

    assert now - timedelta(days=1) < summary.max_cursor < now
    assert (summary.first_ingest_date, summary.last_ingest_date) == (date(2025, 3, 12), date(2025, 3, 14))
    assert [f.parent.name for f in fact_files(roots[0], "orders")] == [
        "ingest_date=2025-03-12", "ingest_date=2025-03-13", "ingest_date=2025-03-14"]
    assert_before_now_and_day_end(roots[0], now)
    for day, f in enumerate(fact_files(roots[0], "orders")):  # batch d: the 24 hours before it arrived
        arrived = now - timedelta(days=2 - day)
        cursors = pq.read_table(f)["o_updated_at"].to_pylist()
        assert arrived - timedelta(days=1) <= min(cursors) and max(cursors) < arrived
    state = dd.read_demo_state(roots[0])
    assert (state.first_ingest_date, state.last_ingest_date) == (date(2025, 3, 12), date(2025, 3, 14))


def test_init_refuses_a_now_without_a_zone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="now must be a timezone-aware datetime.*UTC offset"):
        dd.init_landing_zone(tmp_path / "lz", now=datetime(2025, 1, 1), scale=SMALL)
    assert not (tmp_path / "lz").exists()


def test_append_continues_from_the_newest_cursor_up_to_now(zone: Path) -> None:
    before = dd.read_demo_state(zone)
    now = before.max_cursor + timedelta(hours=2)
    summary = dd.append_batch(zone, now=now, orders=200, updates=50, late=5, deletes=10)

    assert summary.ingest_date == (now - timedelta(microseconds=1)).date()
    orders = pq.read_table(summary.files[0])
    fresh = orders.filter(pc.greater(orders["o_updated_at"], pa.scalar(before.max_cursor, dd.CURSOR_TYPE)))
    assert fresh.num_rows == 200 + 50 + 10  # everything but the late orders
    assert all(before.max_cursor < c < now for c in fresh["o_updated_at"].to_pylist())
    assert before.max_cursor < summary.max_cursor < now
    assert_before_now_and_day_end(zone, now)
    state = dd.read_demo_state(zone)
    assert state.max_cursor == summary.max_cursor and state.last_ingest_date == summary.ingest_date


def test_append_after_a_long_gap_holds_the_last_day_before_now(zone: Path) -> None:
    now = dd.read_demo_state(zone).max_cursor + timedelta(days=10, hours=5)
    summary = dd.append_batch(zone, now=now, orders=100, updates=20, late=0)
    cursors = pq.read_table(summary.files[0])["o_updated_at"].to_pylist()
    assert all(now - timedelta(days=1) <= c < now for c in cursors)
    assert summary.ingest_date == (now - timedelta(microseconds=1)).date()


def test_appends_on_one_day_share_its_folder_and_keep_every_batch(zone: Path) -> None:
    start = dd.read_demo_state(zone).max_cursor + timedelta(hours=1)
    first = dd.append_batch(zone, now=start, orders=50, updates=10, late=2)
    kept = {p: p.read_bytes() for p in first.files}
    second = dd.append_batch(zone, now=start + timedelta(hours=1), orders=60, updates=10, late=2, deletes=3)

    assert first.ingest_date == second.ingest_date == start.date()
    assert second.batch == first.batch + 1
    for table in dd.FACT_TABLES:
        folder = dd.fact_partition_dir(zone, table, first.ingest_date)
        assert sorted(p.name for p in folder.iterdir()) == [f"part-{first.batch:05d}.parquet",
                                                              f"part-{second.batch:05d}.parquet"]
    assert all(p.read_bytes() == data for p, data in kept.items())  # the earlier batch untouched
    later = pq.read_table(second.files[0]).filter(pc.not_equal(pq.read_table(second.files[0])["op"], "I"))
    assert min(later["o_updated_at"].to_pylist()) > first.max_cursor  # updates and deletes: after batch 1
    assert read_fact(zone, "orders").num_rows == 15000 + (50 + 10 + 2) + (60 + 10 + 2 + 3)


def test_a_crashed_append_on_a_shared_day_removes_only_its_own_files(zone: Path, tmp_path: Path) -> None:
    start = dd.read_demo_state(zone).max_cursor + timedelta(hours=1)
    first = dd.append_batch(zone, now=start, orders=50, updates=10, late=2)
    clean = tmp_path / "clean"
    shutil.copytree(zone, clean)
    kept = {p: p.read_bytes() for p in first.files}
    folder = dd.fact_partition_dir(zone, "orders", first.ingest_date)  # the crash: batch 2 half-written
    shutil.copy(first.files[0], folder / f"part-{first.batch + 1:05d}.parquet")
    shutil.copy(first.files[0], folder / f".part-{first.batch + 1:05d}.parquet.tmp")
    later = dd.fact_partition_dir(zone, "lineitem", first.ingest_date + timedelta(days=1))
    later.mkdir(parents=True)
    shutil.copy(first.files[1], later / f"part-{first.batch + 1:05d}.parquet")

    for root in (zone, clean):
        dd.append_batch(root, now=start + timedelta(hours=1), orders=30, updates=5, late=1)
    assert all(p.read_bytes() == data for p, data in kept.items())
    assert not later.exists()
    for root in (zone, clean):
        assert not any(p.name.startswith(".") for p in root.rglob("*"))
    for table in dd.FACT_TABLES:
        assert [p.relative_to(zone) for p in fact_files(zone, table)] == [
            p.relative_to(clean) for p in fact_files(clean, table)]
        assert read_fact(zone, table).equals(read_fact(clean, table))


@pytest.mark.parametrize("ahead", [timedelta(0), timedelta(microseconds=1), -timedelta(hours=3)])
def test_append_at_or_before_the_newest_cursor_is_refused(zone: Path, ahead: timedelta) -> None:
    state = dd.read_demo_state(zone)
    before = (zone / dd.STATE_FILE).read_text()
    with pytest.raises(ConfigError, match=re.escape(f"newest cursor is {state.max_cursor.isoformat()}")
                       + ".*--now. later"):
        dd.append_batch(zone, now=state.max_cursor + ahead, orders=10, updates=0, late=0)
    assert (zone / dd.STATE_FILE).read_text() == before
    with pytest.raises(ConfigError, match="timezone-aware"):
        dd.append_batch(zone, now=datetime(2030, 1, 1), orders=10)


def test_append_with_the_real_clock_lands_in_the_last_day(zone: Path) -> None:
    from loader.demo import landing_zone

    before = datetime.now(UTC)
    summary = landing_zone.append(str(zone), orders=30, updates=5, late=1, recent=1000, update_from="newest")
    after = datetime.now(UTC)
    assert before - timedelta(days=1) <= summary.max_cursor < after
    assert summary.ingest_date in {(t - timedelta(microseconds=1)).date() for t in (before, after)}


def test_cli_now_pins_the_clock_and_refuses_a_bad_one(zone: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", landing_zone=str(zone))
    assert "Pin the clock, for reproducible zones; default: the current time" in " ".join(
        run_cli(config, "demo-data", "init", "--help").stdout.split())
    bad = run_cli(config, "demo-data", "append", "--now", "2030-13-01", check=False)
    assert bad.returncode == EXIT_USAGE and "--now" in bad.stderr and "2030-13-01" in bad.stderr, bad.stderr
    newest = dd.read_demo_state(zone).max_cursor
    early = run_cli(config, "demo-data", "append", "--now", newest.isoformat(), check=False)
    assert early.returncode == EXIT_USAGE and "--now" in early.stderr and newest.isoformat() in early.stderr
    done = run_cli(config, "demo-data", "append", "--now", "2024-01-07T06:00:00Z", "--orders", "5").stdout
    assert "ingest_date=2024-01-07" in done and (
        dd.read_demo_state(zone).max_cursor < datetime(2024, 1, 7, 6, tzinfo=UTC))
