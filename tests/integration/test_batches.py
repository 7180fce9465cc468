"""Runs in bounded, committed batches, through the real CLI: a load cut into many batches leaves every
sink (Parquet, Delta, Snowflake on the emulator) exactly as one batch does and as an independent
DuckDB computation says; versions of a key in different batches, late records, quarantined rows and a
cursor value heavier than the budget all land right; a replay reads exactly the input its run recorded
(a late file landed since is left to a later run, on both executors; a recorded file removed since is
left out, one rewritten since is read as it is now); a run killed after its third batch resumes at the
fourth; a backfill's chunks are cut into batches too.

Kills are SIGKILLs of in-process runs (a Ray driver killed leaves Ray's agent processes behind for a
while); the Ray executor replays one of them."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.gate import Gate, HeldProcess
from tests.support.readers import delta_rows, parquet_latest, parquet_versions, snowflake_rows
from tests.support.snowflake_emulator import new_database, password_env, sink_settings
from tests.support.warehouse import assert_snowflake_exact, assert_warehouse_exact

pytestmark = pytest.mark.integration

LEASE_TTL_S = 1
# 7,500 orders, 30,201 lineitems: a day's files are ~940 and ~3,800 rows, one row group each
SCALE, DAYS = "0.005", "8"
BUDGET = 7_000  # above every row group: the first load cuts into 6 batches of about this many rows
ONE_BATCH = 10**9
LOOKBACK = timedelta(hours=1)
FACTS = ("orders", "lineitem")
CURSOR = {"orders": "o_updated_at", "lineitem": "l_updated_at"}
KEYS = {"orders": "o_orderkey", "lineitem": "l_orderkey, l_linenumber"}


def _project(folder: Path, **overrides: Any) -> Path:
    return write_config(folder, state={"url": "sqlite:///state/loader.db", "lease_ttl": f"{LEASE_TTL_S}s"},
                        **overrides)


def _run(config: Path, budget: int, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return run_json(config, "run", "--incremental", "--max-batch-rows", str(budget), *extra, env=env)


@dataclass(frozen=True)
class Loaded:
    config: Path
    summary: dict[str, Any]  # the first load's `run --json`


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo landing zone of 8 ingest days (one file per day and table, one row group each)."""
    folder = tmp_path_factory.mktemp("batches-zone")
    run_cli(_project(folder), "demo-data", "init", "--scale", SCALE, *init_args(int(DAYS)))
    return folder / "landing"


@pytest.fixture(scope="module")
def loaded(zone: Path, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """The zone's first load in batches of BUDGET rows (Parquet and Delta)."""
    folder = tmp_path_factory.mktemp("batches-loaded")
    shutil.copytree(zone, folder / "landing")
    config = _project(folder)
    return Loaded(config, _run(config, BUDGET))


def _copy(loaded: Loaded, target: Path) -> Path:
    """A private copy of the loaded project: landing zone, state and warehouse."""
    for part in ("landing", "state", "warehouse"):
        shutil.copytree(loaded.config.parent / part, target / part)
    return _project(target)


def _fresh(zone: Path, target: Path, **overrides: Any) -> Path:
    shutil.copytree(zone, target / "landing")
    return _project(target, **overrides)


def _landing(config: Path) -> Path:
    return config.parent / "landing"


def _warehouse(config: Path) -> Path:
    return config.parent / "warehouse"


def _verify_ok(config: Path, env: dict[str, str] | None = None) -> None:
    result = run_cli(config, "verify", check=False, env=env)
    assert result.returncode == 0, (f"loader verify exited {result.returncode}\n"
                                    f"{result.stdout}\n{result.stderr}")


def _max_cursor(landing: Path, table: str, *, skip: tuple[Path, ...] = ()) -> datetime:
    files = _files(landing, table, skip=skip)
    return (duckdb.sql(f"SELECT max({CURSOR[table]}) FROM read_parquet({files})").fetchall()[0][0]
            .astimezone(UTC))


def _files(landing: Path, table: str, *, skip: tuple[Path, ...] = ()) -> list[str]:
    return sorted(str(p) for p in (landing / table).rglob("*.parquet") if p not in skip)


def _keys_in_window(landing: Path, table: str, window: dict[str, str | None], *,
                    skip: tuple[Path, ...] = ()) -> int:
    """Distinct keys with a version in the window (what a batch reading it loads, after its dedupe),
    from the landing files, `skip` left out."""
    where = f"{CURSOR[table]} <= TIMESTAMPTZ '{window['upper']}'"
    if window["lower"] is not None:
        where += f" AND {CURSOR[table]} > TIMESTAMPTZ '{window['lower']}'"
    sql = (f"SELECT count(*) FROM (SELECT DISTINCT {KEYS[table]} "
           f"FROM read_parquet({_files(landing, table, skip=skip)}) WHERE {where})")
    return duckdb.sql(sql).fetchall()[0][0]


def _at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _assert_batches_chain(summary: dict[str, Any], *,
                          start: dict[str, datetime | None] | None = None) -> None:
    """Consecutive run numbers; per source, each batch's window continues the previous one's."""
    batches = summary["batches"]
    assert summary["run_numbers"] == [b["run_number"] for b in batches]
    first = batches[0]["run_number"]
    assert summary["run_numbers"] == list(range(first, first + len(batches)))
    assert (summary["rows"] == sum(b["rows"] for b in batches)
            == sum(t["rows"] for t in summary["tables"].values()))
    for table in FACTS:
        windows = [b["windows"][table] for b in batches if table in b["windows"]]
        if start is not None:
            assert _at(windows[0]["lower"]) == start[table], f"{table}: first window {windows[0]}"
        for before, after in zip(windows, windows[1:], strict=False):
            assert after["lower"] == before["upper"], f"{table}: windows {before} then {after}"
            assert _at(after["upper"]) > _at(after["lower"])
        assert summary["tables"][table]["window"] == {"lower": windows[0]["lower"],
                                                      "upper": windows[-1]["upper"]}


def _checkpoints(config: Path, env: dict[str, str] | None = None) -> dict[str, tuple[datetime, int]]:
    sources = run_json(config, "status", env=env)["sources"]
    return {name: (_at(s["checkpoint"]), s["checkpoint_run"]) for name, s in sources.items()}


def _ledger(config: Path) -> dict[int, dict[str, Any]]:
    """The state store's run ledger, read with plain sqlite3: run number -> status, windows, inputs."""
    with sqlite3.connect(config.parent / "state" / "loader.db") as conn:
        rows = conn.execute("SELECT run_number, status, windows, inputs, attempts FROM runs").fetchall()
    return {n: {"status": s, "windows": json.loads(w), "inputs": None if i is None else json.loads(i),
                "attempts": a}
            for n, s, w, i, a in rows}


def _input_files(inputs: dict[str, Any]) -> dict[str, list[str]]:
    return {name: [Path(f["path"]).as_posix() for f in info["files"]]
            for name, info in inputs["sources"].items()}


def _sorted(table: pa.Table, name: str) -> pa.Table:
    keys = KEYS[name].split(", ")
    return table.sort_by([(k, "ascending") for k in keys])


def _assert_same_tables(a: Path, b: Path) -> None:
    """Two warehouses hold the same Delta rows and the same newest Parquet versions."""
    for table in FACTS:
        left, right = delta_rows(a, table), delta_rows(b, table)
        assert left.num_rows > 0 and left.equals(right.select(left.column_names)), f"delta/{table} differs"
        left, right = parquet_latest(a, table), parquet_latest(b, table)
        assert _sorted(left, table).equals(
            _sorted(right.select(left.column_names), table)), f"parquet/{table} differs"


def _assert_parquet_versions_once(warehouse: Path) -> None:
    for table in FACTS:
        keys = [*KEYS[table].split(", "), CURSOR[table]]
        versions = parquet_versions(warehouse, table).select(keys)
        grouped = versions.group_by(keys).aggregate([([], "count_all")])
        twice = grouped.filter(pc.greater(grouped["count_all"], 1))
        assert twice.num_rows == 0, (f"parquet/{table}: {twice.num_rows} (key, cursor) version(s) "
                                     "written twice")


# ------------------------------------------------------------------------------ 1. first load in batches


def test_first_load_in_batches_equals_one_batch_in_every_sink(
    zone: Path, tmp_path: Path, snowflake_server: dict[str, Any]
) -> None:
    env = password_env(snowflake_server)
    configs, summaries, databases = {}, {}, {}
    for name, budget in (("many", BUDGET), ("one", ONE_BATCH)):
        databases[name] = new_database()
        sinks = {"parquet": {"enabled": True}, "delta": {"enabled": True},
                 "snowflake": sink_settings(snowflake_server, databases[name])}
        configs[name] = _fresh(zone, tmp_path / name, sinks=sinks)
        summaries[name] = _run(configs[name], budget, env=env)

    many, one = summaries["many"], summaries["one"]
    assert many["status"] == one["status"] == "committed"
    assert len(many["batches"]) >= 5 and len(one["batches"]) == 1, [b["rows"] for b in many["batches"]]
    # the first batch's run; every one in run_numbers
    assert many["run_numbers"][0] == many["run_number"] == 1
    assert not many["replayed"] and not any(b["replayed"] for b in many["batches"])
    _assert_batches_chain(many, start={"orders": None, "lineitem": None})
    # A first load reads every row once: the batches' rows add up to the landing zone's rows.
    landing_rows = {t: pq.ParquetDataset(_files(zone, t)).read(columns=[CURSOR[t]]).num_rows for t in FACTS}
    assert ({t: many["tables"][t]["rows"] for t in FACTS} == {t: one["tables"][t]["rows"] for t in FACTS}
            == landing_rows)
    assert all(b["rows"] <= 1.5 * BUDGET for b in many["batches"]), [b["rows"] for b in many["batches"]]
    for name, summary in summaries.items():
        for table in FACTS:
            sinks = summary["tables"][table]["sinks"]
            assert {s: w["rows"] for s, w in sinks.items()} == dict.fromkeys(
                ("parquet", "delta", "snowflake"), landing_rows[table]), (name, table)

    top = {t: _max_cursor(zone, t) for t in FACTS}
    for name, config in configs.items():
        assert _checkpoints(config, env) == {t: (top[t], summaries[name]["run_numbers"][-1]) for t in FACTS}
        assert_warehouse_exact(_warehouse(config), zone)
        _verify_ok(config, env)
    _assert_same_tables(_warehouse(configs["many"]), _warehouse(configs["one"]))
    for database in databases.values():
        assert_snowflake_exact(snowflake_server, database, zone)
    for table in FACTS:
        assert parquet_versions(_warehouse(configs["many"]), table).num_rows == landing_rows[table]
        held = {name: snowflake_rows(snowflake_server, database, table, zone)
                for name, database in databases.items()}
        assert held["many"].equals(held["one"]), f"snowflake/{table} differs between one batch and many"
    # `loader history` shows each batch as the run it is, with its place in the run.
    history = run_json(configs["many"], "history", "--limit", "100", env=env)
    total = len(many["batches"])
    assert sorted((e["run_number"], e["batch"]["index"], e["batch"]["of"]) for e in history) == [
        (number, index, total) for index, number in enumerate(many["run_numbers"], start=1)]
    # one run's batches
    assert len({e["batch"]["series"] for e in history}) == 1 and history[0]["batch"]["series"]
    assert _run(configs["many"], BUDGET, env=env)["status"] == "nothing_new"


# ------------------------------------------------------------------------- 2. keys updated across batches


def test_keys_updated_across_batch_boundaries_end_newest(loaded: Loaded, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p")
    landing = _landing(config)
    # Updates pick among every order here (fewer than 100,000): the second batch of updates re-sends
    # many keys the first one re-sent, or created, a day earlier.
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "500", "--updates", "2500", "--late", "0")
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "500", "--updates", "2500", "--late", "0")
    summary = _run(config, 2_000)
    assert summary["status"] == "committed" and len(summary["batches"]) >= 3, summary["batches"]
    _assert_batches_chain(summary)

    # The premise: keys with versions in different batches of this one run.
    bounds = [(_at(b["windows"]["orders"]["lower"]), _at(b["windows"]["orders"]["upper"]))
              for b in summary["batches"] if "orders" in b["windows"]]
    versions = duckdb.sql(f"SELECT o_orderkey, o_updated_at FROM read_parquet({_files(landing, 'orders')}) "
                          f"WHERE o_updated_at > TIMESTAMPTZ '{bounds[0][0].isoformat()}'").fetchall()
    batches_of: dict[int, set[int]] = {}
    for key, cursor in versions:
        index = next(i for i, (low, high) in enumerate(bounds) if low < cursor <= high)
        batches_of.setdefault(key, set()).add(index)
    assert sum(len(b) > 1 for b in batches_of.values()) >= 200

    assert_warehouse_exact(_warehouse(config), landing)
    _assert_parquet_versions_once(_warehouse(config))
    _verify_ok(config)


# ------------------------------------------------------------------------------------- 3. late records


def test_late_records_between_runs_load_in_batches(loaded: Loaded, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p")
    landing, warehouse = _landing(config), _warehouse(config)
    for orders, updates, late in ((1000, 250, 400), (750, 150, 200)):
        checkpoints = {t: cursor for t, (cursor, _run_number) in _checkpoints(config).items()}
        checkpoint = checkpoints["orders"]
        run_cli(config, "demo-data", "append", *append_args(config),
                "--orders", str(orders), "--updates", str(updates), "--late", str(late))
        newest = sorted((landing / "orders").glob("ingest_date=*"))[-1]
        file = pq.read_table(newest)
        late_keys = set(file.filter(pc.less(file["o_updated_at"],
                                            pa.scalar(checkpoint, file["o_updated_at"].type)))
                        ["o_orderkey"].to_pylist())
        assert len(late_keys) == late  # the late records are older than the checkpoint, inside the lookback
        summary = _run(config, 2_000)
        assert len(summary["batches"]) >= 2, summary["batches"]
        _assert_batches_chain(summary, start={t: checkpoints[t] - LOOKBACK for t in FACTS})
        held = set(delta_rows(warehouse, "orders")["o_orderkey"].to_pylist())
        assert late_keys <= held
        assert_warehouse_exact(warehouse, landing)
        _verify_ok(config)


# --------------------------------------------------------------------------------------- 4. quarantine

VALID_KEY, FUTURE_KEY, NO_REGION_KEY = 10**9 + 1, 10**9 + 3, 10**9 + 4
NO_CUSTOMER = 10**8


def _order(template: pa.Table, key: int | None, cursor: datetime, custkey: int | None = None) -> pa.Table:
    """The template's first order as a new one: `key`, `cursor` (and `custkey`) replaced."""
    row = template.slice(0, 1)
    row = row.set_column(row.schema.get_field_index("o_orderkey"), "o_orderkey", pa.array([key], pa.int64()))
    row = row.set_column(row.schema.get_field_index("o_updated_at"), "o_updated_at",
                         pa.array([cursor], row["o_updated_at"].type))
    if custkey is not None:
        row = row.set_column(row.schema.get_field_index("o_custkey"), "o_custkey",
                             pa.array([custkey], pa.int64()))
    return row


def _new_day(landing: Path, back: int = 1) -> tuple[Path, datetime, pa.Table]:
    """The `back`-th newest orders folder, its day's midnight and its demo file (a template row)."""
    folder = sorted((landing / "orders").glob("ingest_date=*"))[-back]
    day = datetime.combine(datetime.fromisoformat(folder.name.split("=")[1]).date(), datetime.min.time(), UTC)
    return folder, day, pq.read_table(next(folder.glob("part-*.parquet")))


def _quarantined(warehouse: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f)
                             for f in sorted((warehouse / "quarantine" / "orders").glob("*.parquet"))])


def _batch_of(summary: dict[str, Any], cursor: datetime) -> int:
    return next(i for i, b in enumerate(summary["batches"])
                if _at(b["windows"]["orders"]["lower"]) < cursor <= _at(b["windows"]["orders"]["upper"]))


def test_quarantined_rows_in_a_multi_batch_run(loaded: Loaded, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p")
    landing, warehouse = _landing(config), _warehouse(config)
    for _ in range(2):
        run_cli(config, "demo-data", "append", *append_args(config),
                "--orders", "1000", "--updates", "1000", "--late", "0")
    folder, day, template = _new_day(landing, back=2)  # the first of the two new days
    # A null key and a future cursor in a file whose one row group spans the batches from the first
    # new day's 20:00 on (all of them re-read it); an order of no known customer early that day, in a
    # file of its own. (Not named part-*: the demo generator, which reads its own files, leaves them be.)
    late_evening, morning = day + timedelta(hours=20), day + timedelta(hours=1)
    odd, stray = folder / "extra-odd.parquet", folder / "extra-stray.parquet"
    pq.write_table(pa.concat_tables([
        _order(template, VALID_KEY, late_evening),
        _order(template, None, late_evening),  # null key
        _order(template, FUTURE_KEY, datetime(2099, 1, 1, tzinfo=UTC)),  # cursor in the future
    ]), odd)
    pq.write_table(_order(template, NO_REGION_KEY, morning, custkey=NO_CUSTOMER), stray)

    summary = _run(config, 2_000)
    assert summary["status"] == "committed", summary
    reading = [b for b in summary["batches"] if _at(b["windows"]["orders"]["upper"]) >= late_evening]
    assert len(reading) >= 2, summary["batches"]  # the premise: several batches read the odd row group
    # (and the stray row's batch is not one of them: the test below has that case)
    assert _at(summary["batches"][_batch_of(summary, morning)]["windows"]["orders"]["upper"]) < late_evening
    _assert_batches_chain(summary)
    want = {"null key o_orderkey": 1, "cursor in the future": 1, "no region": 1}
    assert summary["tables"]["orders"]["quarantined"] == want
    stored = _quarantined(warehouse)
    assert sorted(stored["reason"].to_pylist()) == sorted(want)  # each bad row once, in all the batches
    assert set(stored["run_number"].to_pylist()) <= set(summary["run_numbers"])
    # not dragged to 2099
    assert _checkpoints(config)["orders"][0] == _max_cursor(landing, "orders", skip=(odd,))

    # The sinks hold the landing zone without the bad rows (the valid row of the odd file included).
    clean = tmp_path / "clean"
    shutil.copytree(landing, clean, ignore=shutil.ignore_patterns(odd.name, stray.name))
    pq.write_table(_order(template, VALID_KEY, late_evening), clean / "orders" / folder.name / odd.name)
    assert_warehouse_exact(warehouse, clean)
    _verify_ok(config)

    # The next run reads the odd file again (lookback, same row group): nothing quarantined twice.
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "100", "--updates", "10", "--late", "5")
    again = _run(config, 2_000)
    assert again["tables"]["orders"]["quarantined"] == {}
    assert _quarantined(warehouse).num_rows == 3


def test_a_bad_row_re_read_beside_a_no_region_row_is_quarantined_once(loaded: Loaded, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p")
    landing, warehouse = _landing(config), _warehouse(config)
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "1000", "--updates", "1000", "--late", "0")
    folder, day, template = _new_day(landing)
    early, late = day + timedelta(hours=1), day + timedelta(hours=23)
    pq.write_table(pa.concat_tables([  # one row group: every batch from the early row on reads both rows
        _order(template, None, early),  # null key: quarantined by the first batch reading the file
        _order(template, NO_REGION_KEY, late, custkey=NO_CUSTOMER),  # no region: in a later batch's window
    ]), folder / "extra-odd.parquet")
    summary = _run(config, 2_000)
    assert summary["status"] == "committed"
    assert _batch_of(summary, early) < _batch_of(summary, late), summary["batches"]  # the premise
    stored = _quarantined(warehouse)
    assert sorted(stored["reason"].to_pylist()) == ["no region", "null key o_orderkey"], stored.to_pylist()
    assert summary["tables"]["orders"]["quarantined"] == {"null key o_orderkey": 1, "no region": 1}


# ------------------------------------------------------------------------ 5. one cursor value too heavy


def test_a_cursor_value_heavier_than_the_budget_loads_whole(loaded: Loaded, tmp_path: Path) -> None:
    config = _copy(loaded, tmp_path / "p")
    landing, warehouse = _landing(config), _warehouse(config)
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "750", "--updates", "150", "--late", "0")
    folder = sorted((landing / "orders").glob("ingest_date=*"))[-1]
    day = datetime.combine(datetime.fromisoformat(folder.name.split("=")[1]).date(), datetime.min.time(), UTC)
    heavy_at = day + timedelta(hours=12, microseconds=123)  # in the middle of the new day's rows
    # 4,500 new orders (copies of history, new keys) all stamped with one cursor value, in row groups of
    # 500 rows: heavier than the largest row group (a day's lineitem file), so heavier than the budget.
    heavy = pq.ParquetDataset(_files(landing, "orders")[:5]).read().slice(0, 4_500)
    heavy = heavy.set_column(heavy.schema.get_field_index("o_orderkey"), "o_orderkey",
                             pa.array(range(10**8, 10**8 + heavy.num_rows), pa.int64()))
    heavy = heavy.set_column(heavy.schema.get_field_index("o_updated_at"), "o_updated_at",
                             pa.array([heavy_at] * heavy.num_rows, heavy["o_updated_at"].type))
    pq.write_table(heavy, folder / "extra-heavy.parquet", row_group_size=500)
    groups = [pq.ParquetFile(f).metadata.row_group(i).num_rows
              for t in FACTS for f in _files(landing, t) for i in range(pq.ParquetFile(f).num_row_groups)]
    assert 500 < max(groups) < 4_500

    done = run_cli(config, "run", "--incremental", "--max-batch-rows", "500", "--json")
    summary = json.loads(done.stdout)
    assert summary["status"] == "committed"
    assert "smaller than a row group" in done.stderr and "run.max_batch_rows=500" in done.stderr
    warned = [line for line in done.stderr.splitlines()
              if "cursor value" in line and "more than the batch budget" in line]
    assert len(warned) == 1 and heavy_at.isoformat() in warned[0] and "4,500 rows" in warned[0], (
        warned or done.stderr)
    # The heavy value is a batch of its own, loaded whole, between batches before and after it.
    at = [i for i, b in enumerate(summary["batches"])
          if b["windows"].get("orders", {}).get("upper") == heavy_at.isoformat()]
    assert len(at) == 1 and 0 < at[0] < len(summary["batches"]) - 1, summary["batches"]
    assert summary["batches"][at[0]]["tables"]["orders"] >= 4_500
    _assert_batches_chain(summary)
    assert_warehouse_exact(warehouse, landing)
    _verify_ok(config)


# ------------------------------------------------------------------------------ 6. a replay's input


def _kill_an_increment(config: Path) -> tuple[int, dict[str, Any]]:
    """Land a batch of new, updated and late orders; kill its run (one batch) after Delta committed
    orders. The killed run's number and its ledger row."""
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "200", "--updates", "60", "--late", "5")
    killed = run_cli(config, "run", "--incremental", "--max-batch-rows", str(ONE_BATCH), check=False,
                     env={"LOADER_FAILPOINTS": "delta.commit@orders=crash"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(LEASE_TTL_S + 0.5)  # the dead run's lease expires by itself
    unfinished = run_json(config, "status")["unfinished_run"]
    assert unfinished is not None
    number = unfinished["run_number"]
    return number, _ledger(config)[number]


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_replay_reads_exactly_its_recorded_input(loaded: Loaded, tmp_path: Path, executor: str) -> None:
    config = _copy(loaded, tmp_path / "p")
    landing, warehouse = _landing(config), _warehouse(config)
    number, row = _kill_an_increment(config)
    recorded = _input_files(row["inputs"])
    assert row["status"] == "planned" and recorded["orders"] and recorded["lineitem"]

    # Late records land inside the killed run's window, in a file its plan never saw.
    before = set(landing.rglob("*.parquet"))
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "0", "--updates", "0", "--late", "20")
    late_files = tuple(sorted(set(landing.rglob("*.parquet")) - before))
    assert {p.parent.parent.name for p in late_files} == set(FACTS)
    late = pq.read_table(next(p for p in late_files if p.parent.parent.name == "orders"))
    assert late.num_rows == 20
    for table in FACTS:
        window = row["windows"][table]
        cursors = pq.read_table(next(p for p in late_files if p.parent.parent.name == table))[CURSOR[table]]
        assert (_at(window["lower"]) < pc.min(cursors).as_py()
                and pc.max(cursors).as_py() <= _at(window["upper"]))

    replay = _run(config, ONE_BATCH, "--executor", executor)
    assert replay["replayed"] is True and replay["executor"] == executor
    # Nothing is newer than the replayed window: the run is the replay alone.
    assert replay["run_numbers"] == [number] and [b["replayed"] for b in replay["batches"]] == [True]
    batch = replay["batches"][0]
    assert batch["windows"] == row["windows"]
    for table in FACTS:  # the rows of the recorded files, none of the late file's
        assert batch["tables"][table] == _keys_in_window(landing, table, row["windows"][table],
                                                         skip=late_files), table
    # the ledger still names the same input
    assert _input_files(_ledger(config)[number]["inputs"]) == recorded
    assert _ledger(config)[number]["status"] == "committed"
    # Right after the replay every sink holds the landing zone as the run saw it, without the late file.
    _verify_ok(config)
    seen = tmp_path / "seen"
    shutil.copytree(landing, seen,
                    ignore=lambda folder, names: [n for n in names if Path(folder, n) in late_files])
    assert_warehouse_exact(warehouse, seen)
    held = set(delta_rows(warehouse, "orders")["o_orderkey"].to_pylist())
    assert not held & set(late["o_orderkey"].to_pylist())

    # Newer data arrives: the next run's lookback reads the late file.
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "50", "--updates", "0", "--late", "0")
    after = _run(config, ONE_BATCH)
    assert after["replayed"] is False and after["run_numbers"] == [number + 1]
    assert _at(after["tables"]["orders"]["window"]["lower"]) < pc.min(late["o_updated_at"]).as_py()
    assert set(late["o_orderkey"].to_pylist()) <= set(
        delta_rows(warehouse, "orders")["o_orderkey"].to_pylist())
    assert_warehouse_exact(warehouse, landing)
    _verify_ok(config)


def _kill_before_writing(config: Path) -> tuple[int, dict[str, Any], Path]:
    """Land a batch of new orders and updates and kill its run once recorded, before any write: the
    killed run's number, its ledger row and the new orders file its input names."""
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "200", "--updates", "60", "--late", "5")
    killed = run_cli(config, "run", "--incremental", "--max-batch-rows", str(ONE_BATCH), check=False,
                     env={"LOADER_FAILPOINTS": "plan.recorded=crash"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(LEASE_TTL_S + 0.5)
    unfinished = run_json(config, "status")["unfinished_run"]
    assert unfinished is not None
    number = unfinished["run_number"]
    row = _ledger(config)[number]
    newest = Path(max(_input_files(row["inputs"])["orders"]))  # the appended file: it holds the new rows
    assert newest.is_file() and _landing(config) in newest.parents
    return number, row, newest


def test_a_replay_leaves_out_a_recorded_file_removed_since(loaded: Loaded, tmp_path: Path) -> None:
    """Removing a file that broke a run is the documented fix: the replay reads the rest of its input."""
    config = _copy(loaded, tmp_path / "p")
    number, _row, newest = _kill_before_writing(config)
    newest.unlink()
    done = run_cli(config, "run", "--incremental", "--max-batch-rows", str(ONE_BATCH), "--json")
    replay = json.loads(done.stdout)
    assert replay["replayed"] is True and replay["run_numbers"][0] == number
    assert str(newest) in done.stderr and "is gone" in done.stderr
    assert _ledger(config)[number]["status"] == "committed"
    # The checkpoint stays on data that exists: the newest orders cursor still in the landing zone.
    assert _checkpoints(config)["orders"][0] == _max_cursor(_landing(config), "orders")
    assert_warehouse_exact(_warehouse(config), _landing(config))
    _verify_ok(config)


@dataclass(frozen=True)
class Rewritten:
    config: Path
    number: int
    file: Path
    replay: dict[str, Any]
    stderr: str


@pytest.fixture(scope="module")
def rewritten(loaded: Loaded, tmp_path_factory: pytest.TempPathFactory) -> Rewritten:
    """A run killed before writing, the appended orders file of its input rewritten since (the same
    rows, another size: as a writer re-sending a file would), and the replay."""
    config = _copy(loaded, tmp_path_factory.mktemp("batches-rewritten"))
    number, _row, newest = _kill_before_writing(config)
    size = newest.stat().st_size
    pq.write_table(pq.read_table(newest), newest, compression="none")
    assert newest.stat().st_size != size
    done = run_cli(config, "run", "--incremental", "--max-batch-rows", str(ONE_BATCH), "--json")
    return Rewritten(config, number, newest, json.loads(done.stdout), done.stderr)


def test_a_replay_reads_a_recorded_file_rewritten_since_as_it_is_now(rewritten: Rewritten) -> None:
    assert rewritten.replay["replayed"] is True and rewritten.replay["run_numbers"][0] == rewritten.number
    warned = [line for line in rewritten.stderr.splitlines() if "changed since run" in line]
    assert len(warned) == 1 and str(rewritten.file) in warned[0], rewritten.stderr
    assert_warehouse_exact(_warehouse(rewritten.config), _landing(rewritten.config))


def test_verify_agrees_with_a_replay_that_read_a_rewritten_file(rewritten: Rewritten) -> None:
    _verify_ok(rewritten.config)


# --------------------------------------------------------------------------------------------- 7. resume


def test_a_run_killed_after_its_third_batch_resumes_at_the_fourth(
    zone: Path, loaded: Loaded, tmp_path: Path
) -> None:
    reference = loaded.summary["batches"]  # the same landing zone and budget: the same cut
    assert len(reference) >= 5
    config = _fresh(zone, tmp_path / "p")
    killed = run_cli(config, "run", "--incremental", "--max-batch-rows", str(BUDGET), check=False,
                     env={"LOADER_FAILPOINTS": "checkpoint.after=crash+2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    third = {t: _at(reference[2]["windows"][t]["upper"]) for t in FACTS}
    assert _checkpoints(config) == {t: (third[t], 3) for t in FACTS}
    time.sleep(LEASE_TTL_S + 0.5)
    # `loader status` tells the run was cut short after 3 of its batches, with the rows committed so far.
    status = run_json(config, "status")["batches"]
    assert status == {"state": "interrupted", "batches_done": 3, "batches_total": len(reference),
                      "rows_done": sum(b["rows"] for b in reference[:3]),
                      "rows_planned": status["rows_planned"], "batch_in_flight": None}
    assert "run unfinished after 3 of" in run_cli(config, "status").stdout

    resumed = _run(config, BUDGET)
    assert resumed["replayed"] is False and resumed["run_numbers"][0] == 4  # batches 1..3 committed
    _assert_batches_chain(resumed, start={t: third[t] - LOOKBACK for t in FACTS})
    remaining = sum(b["rows"] for b in reference[3:])
    assert remaining <= resumed["rows"] <= remaining + BUDGET, (resumed["rows"], remaining)
    assert resumed["rows"] < sum(b["rows"] for b in reference)
    assert_warehouse_exact(_warehouse(config), zone)
    _verify_ok(config)


def test_each_delta_table_is_opened_once_per_run_however_many_batches(
    zone: Path, loaded: Loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's sinks live as long as the run: a Delta table's log is replayed once, and each later
    batch reads only the commits made since (`update_incremental`), not the whole log again."""
    import deltalake

    from loader.config import load_config
    from loader.protocol.incremental import run_incremental

    opened: dict[str, int] = {}

    class Counted(deltalake.DeltaTable):
        def __init__(self, uri: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(uri, *args, **kwargs)  # a table not there yet raises: not an open
            opened[Path(str(uri)).name] = opened.get(Path(str(uri)).name, 0) + 1

    config = _fresh(zone, tmp_path / "p")
    monkeypatch.chdir(config.parent)
    monkeypatch.setattr(deltalake, "DeltaTable", Counted)
    summary = run_incremental(load_config(config).overridden(max_batch_rows=BUDGET))
    assert len(summary.batches) == len(loaded.summary["batches"]) >= 5
    # The first batch creates each table (nothing to open); the second opens it; the rest update it.
    assert {t: opened.get(t, 0) for t in FACTS} == dict.fromkeys(FACTS, 1), opened
    assert_warehouse_exact(_warehouse(config), zone)


def test_a_batch_that_cannot_be_read_ahead_leaves_the_batches_before_it_committed(
    zone: Path, loaded: Loaded, tmp_path: Path
) -> None:
    """Batch k's orders are read while batch k-1's lineitems are written (run.read_ahead). A page of an
    orders file that only later batches read is corrupt (its footer intact, so planning passes): the
    batches before the first that reads it commit; that one is recorded, fails before any write, and
    holds the error; once the file is fixed, the next run replays it (it wrote nothing, so the fixed file
    is read) and loads the rest exactly."""
    reference = _ledger(loaded.config)
    numbers = sorted(reference)
    last = _input_files(reference[numbers[-1]]["inputs"])["orders"][-1]
    first_reader = min(n for n in numbers if last in _input_files(reference[n]["inputs"]).get("orders", []))
    assert first_reader >= 3, "the file must be read by a later batch, after some have committed"
    config = _fresh(zone, tmp_path / "p")
    broken = _landing(config) / Path(last).relative_to(_landing(loaded.config))
    good = broken.read_bytes()
    broken.write_bytes(good[:4] + b"\xff" * 600 + good[604:])  # the first data page, not the footer

    failed = run_cli(config, "run", "--incremental", "--max-batch-rows", str(BUDGET), check=False)
    assert failed.returncode != 0 and broken.name in failed.stderr, failed.stderr[-2000:]
    ledger = _ledger(config)
    assert {n: ledger[n]["status"] for n in ledger} == {
        **{n: "committed" for n in range(1, first_reader)}, first_reader: "planned"}
    committed_upper = {t: _at(w["upper"]) for t, w in ledger[first_reader - 1]["windows"].items()}
    assert {t: c for t, (c, _) in _checkpoints(config).items()} == committed_upper

    broken.write_bytes(good)
    time.sleep(LEASE_TTL_S + 0.5)
    resumed = _run(config, BUDGET)
    assert resumed["replayed"] and resumed["run_numbers"][0] == first_reader
    assert_warehouse_exact(_warehouse(config), zone)
    _assert_parquet_versions_once(_warehouse(config))
    _verify_ok(config)


# ------------------------------------------------------------------------------------------- 8. backfill


def test_backfill_chunks_are_cut_into_batches(zone: Path, loaded: Loaded, tmp_path: Path) -> None:
    config = _fresh(zone, tmp_path / "p")
    end = run_json(loaded.config, "status")["sources"]["orders"]["checkpoint"]
    result = run_json(config, "backfill", "--start", "2023-12-31", "--end", end, "--chunk", "2d",
                      "--max-batch-rows", "3000")
    chunks = result["chunks"]
    assert (result["chunks_total"] == result["chunks_loaded"] == len(chunks) == 5
            and result["checkpoints_moved"] is False)
    for chunk in chunks:
        assert chunk["status"] == "loaded" and len(chunk["run_numbers"]) == chunk["batches"] >= 1
        assert chunk["run_number"] == chunk["run_numbers"][-1]
    assert sum(c["batches"] >= 2 for c in chunks) >= 3, [c["batches"] for c in chunks]
    runs = [n for c in chunks for n in c["run_numbers"]]
    assert runs == list(range(runs[0], runs[0] + len(runs)))  # each batch a ledger run of its own
    for table in FACTS:
        assert sum(c["tables"][table]["rows"] for c in chunks if table in c["tables"]) == \
            loaded.summary["tables"][table]["rows"]
    _assert_same_tables(_warehouse(config), _warehouse(loaded.config))
    assert_warehouse_exact(_warehouse(config), zone)
    assert all(s["checkpoint"] is None for s in run_json(config, "status")["sources"].values())
    ledger = _ledger(config)
    assert all(ledger[n]["status"] == "committed" and ledger[n]["inputs"] for n in runs)


def test_status_shows_a_run_in_progress_and_the_batch_in_flight(
    zone: Path, loaded: Loaded, tmp_path: Path
) -> None:
    """While a run waits after its second batch, `loader status` says it is running, with 2 of n
    batches and their rows; killed with its third batch recorded, the batch in flight is named."""
    reference = loaded.summary["batches"]
    config = _fresh(zone, tmp_path / "p")
    waiting = HeldProcess(config, "run", "--incremental", "--max-batch-rows", str(BUDGET),
                          failpoints=Gate(tmp_path).failpoint("checkpoint.after", "+1"))
    try:
        waiting.held()
        status = run_json(config, "status")["batches"]
        assert status["state"] == "running" and status["batches_done"] == 2
        assert status["batches_total"] == len(reference)
        assert status["rows_done"] == sum(b["rows"] for b in reference[:2])
        assert "run in progress: 2 of" in run_cli(config, "status").stdout
    finally:
        waiting.kill()  # never let go: it dies at the gate, its lease left to expire
    time.sleep(LEASE_TTL_S + 0.5)
    # the next batch recorded, nothing written
    killed = run_cli(config, "run", "--incremental", "--max-batch-rows", str(BUDGET), check=False,
                     env={"LOADER_FAILPOINTS": "plan.recorded=crash"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(LEASE_TTL_S + 0.5)
    status = run_json(config, "status")
    assert status["batches"]["state"] == "interrupted" and status["batches"]["batch_in_flight"]["index"] == 1
    assert status["unfinished_run"]["run_number"] == status["batches"]["batch_in_flight"]["run_number"]
    assert "replays the batch in flight" in run_cli(config, "status").stdout
