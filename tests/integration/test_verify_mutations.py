"""The proof that `loader verify` proves something: one corruption at a time, applied by hand (pyarrow,
deltalake) to a loaded warehouse, each must make verify exit 1 naming exactly the table, the regions and
the sink it touched; the same warehouse untouched exits 0 (issue #26's mutation suite, Parquet and Delta;
Snowflake's is in test_verify_snowflake.py). A changed value that keeps key, cursor, region and mark
passes the default verify and fails `verify --deep`, which recomputes every column.

The warehouse: the demo zone loaded, then an append with updates, upstream deletes and customers that
moved nation (so a region check that assumed today's dimensions would fail an honest warehouse), loaded
again. Each test corrupts a copy of it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args

pytestmark = pytest.mark.integration

Names = set[tuple[str, str, str]]  # (table, region, sink)


def _loaded(folder: Path, mode: str) -> Path:
    deletes = {"column": "op", "values": ["D"], "mode": mode}
    raw_sources = {
        "orders": {"kind": "orders", "path": "orders", "format": "parquet", "cursor": "o_updated_at",
                   "primary_key": ["o_orderkey"], "lookback": "1h", "safety_lag": "0s", "deletes": deletes},
        "lineitem": {"kind": "lineitem", "path": "lineitem", "format": "parquet", "cursor": "l_updated_at",
                     "primary_key": ["l_orderkey", "l_linenumber"], "lookback": "1h", "safety_lag": "0s",
                     "deletes": deletes},
    }
    config = write_config(folder, sources=raw_sources)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    out = run_cli(config, "demo-data", "append", *append_args(config), "--orders", "200", "--updates", "100",
                  "--deletes", "30", "--customer-changes", "400").stdout
    assert "400 customers changed" in out and "30 deleted" in out, out
    run_json(config, "run", "--incremental")
    return config


@pytest.fixture(scope="module")
def hard_loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _pristine(_loaded(tmp_path_factory.mktemp("mutations-hard") / "project", "hard"))


@pytest.fixture(scope="module")
def soft_loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _pristine(_loaded(tmp_path_factory.mktemp("mutations-soft") / "project", "soft"))


def _pristine(config: Path) -> tuple[Path, Path]:
    """The loaded project and a copy of it: each test corrupts the project where it was loaded (the
    ledger records the landing files by path), and the copy puts it back afterwards, mtimes kept."""
    copy = config.parent.with_name("pristine")
    shutil.copytree(config.parent, copy)
    return config, copy


def _restored(loaded: tuple[Path, Path]) -> Iterator[Path]:
    config, copy = loaded
    yield config
    shutil.rmtree(config.parent)
    shutil.copytree(copy, config.parent)


@pytest.fixture
def hard(hard_loaded: tuple[Path, Path]) -> Iterator[Path]:
    yield from _restored(hard_loaded)


@pytest.fixture
def soft(soft_loaded: tuple[Path, Path]) -> Iterator[Path]:
    yield from _restored(soft_loaded)


def _copy(config: Path, _into: Path) -> Path:
    """The project to corrupt (put back as it was after the test)."""
    return config


def _failures(config: Path, *flags: str) -> tuple[Names, list[dict[str, Any]], str]:
    result = run_cli(config, "verify", "--json", *flags, check=False)
    assert result.returncode == 1, f"verify passed a corrupted warehouse:\n{result.stdout}\n{result.stderr}"
    bad = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    for check in bad:  # each named on stderr, table, region and sink
        assert (f"table {check['table']}, region {check['region']}, sink {check['sink']}"
                in result.stderr), result.stderr
    return {(c["table"], c["region"], c["sink"]) for c in bad}, bad, result.stderr


# ----------------------------------------------------------------------------- corrupting Delta


def _delta(config: Path, table: str) -> DeltaTable:
    return DeltaTable(str(config.parent / "warehouse" / "delta" / table))


def _delta_rows(config: Path, table: str) -> pa.Table:
    return _delta(config, table).to_pyarrow_table()


def _pick(rows: pa.Table, region: str, count: int = 1) -> pa.Table:
    return rows.filter(pc.equal(rows["region"], region)).sort_by("o_orderkey").slice(0, count)


def _keys_sql(keys: list[int]) -> str:
    return f"o_orderkey IN ({', '.join(str(k) for k in keys)})"


# ----------------------------------------------------------------------------- corrupting Parquet


def _parquet_files(config: Path, table: str, region: str) -> list[Path]:
    return sorted(
        (config.parent / "warehouse" / "parquet" / table / f"region={region}").rglob("run-*.parquet"))


def _parquet_log(config: Path) -> list[Path]:
    return sorted((config.parent / "warehouse" / "parquet" / "orders").rglob("run-*.parquet"))


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    rows = pq.read_table(path)
    pq.write_table(change(rows), path)


def _latest_parquet_row(config: Path, region: str) -> tuple[Path, int]:
    """A file of `region` and the row number in it of a key's newest version, live, of a key held once."""
    files = _parquet_files(config, "orders", region)
    every = pa.concat_tables([pq.read_table(f, columns=["o_orderkey"]) for f in files])
    counts = pc.value_counts(every["o_orderkey"])
    once = {k for k, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                              strict=True)
            if n == 1}
    for path in files:
        rows = pq.read_table(path)
        for index, (key, dead) in enumerate(zip(rows["o_orderkey"].to_pylist(), rows["_deleted"].to_pylist(),
                                                strict=True)):
            if key in once and not dead:
                return path, index
    raise AssertionError(f"no live version of a key held once in region {region}")


def _set(rows: pa.Table, column: str, index: int, value: Any) -> pa.Table:
    values = rows[column].to_pylist()
    values[index] = value
    return rows.set_column(rows.schema.get_field_index(column), rows.schema.field(column),
                           pa.array(values, rows.schema.field(column).type))


# ----------------------------------------------------------------------------- the suite


def test_the_untouched_warehouse_passes_with_a_check_per_region(hard: Path, soft: Path) -> None:
    for config in (hard, soft):
        result = run_cli(config, "verify", "--json")
        report = json.loads(result.stdout)
        assert report["ok"] is True
        regions = {c["region"] for c in report["checks"] if c["table"] == "orders"}
        assert regions == {"AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"}
        assert "moved" not in result.stderr


def test_delta_missing_row(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    victim = _pick(_delta_rows(config, "orders"), "ASIA")["o_orderkey"][0].as_py()
    _delta(config, "orders").delete(f"o_orderkey = {victim}")
    names, bad, _ = _failures(config)
    assert names == {("orders", "ASIA", "delta")} and bad[0]["actual_rows"] == bad[0]["expected_rows"] - 1


def test_delta_extra_row(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    rows = _delta_rows(config, "orders")
    extra = _pick(rows, "EUROPE")
    extra = extra.set_column(extra.schema.get_field_index("o_orderkey"), extra.schema.field("o_orderkey"),
                             pa.array([pc.max(rows["o_orderkey"]).as_py() + 1],
                                      extra.schema.field("o_orderkey").type))
    write_deltalake(str(config.parent / "warehouse" / "delta" / "orders"), extra, mode="append")
    names, bad, _ = _failures(config)
    assert names == {("orders", "EUROPE", "delta")} and bad[0]["actual_rows"] == bad[0]["expected_rows"] + 1


def test_delta_duplicate_key(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    write_deltalake(str(config.parent / "warehouse" / "delta" / "orders"),
                    _pick(_delta_rows(config, "orders"), "AMERICA"),
                    mode="append")
    names, bad, stderr = _failures(config)
    assert names == {("orders", "AMERICA", "delta")} and bad[0]["duplicates"] == 1
    assert "1 duplicated key(s)" in stderr


def test_delta_stale_version(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    victim = _pick(_delta_rows(config, "orders"), "AFRICA")["o_orderkey"][0].as_py()
    _delta(config, "orders").update(updates={"o_updated_at": "o_updated_at - INTERVAL '1' DAY"},
                                    predicate=f"o_orderkey = {victim}")
    names, bad, stderr = _failures(config)
    assert names == {("orders", "AFRICA", "delta")}
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"] and "wrong or stale versions" in stderr


def test_delta_rows_under_the_wrong_region(hard: Path, tmp_path: Path) -> None:
    """Issue #26 case 1: ten AFRICA rows rewritten as ASIA, keys and cursors kept."""
    config = _copy(hard, tmp_path)
    keys = _pick(_delta_rows(config, "orders"), "AFRICA", 10)["o_orderkey"].to_pylist()
    _delta(config, "orders").update(updates={"region": "'ASIA'"}, predicate=_keys_sql(keys))
    names, bad, _ = _failures(config)
    assert names == {("orders", "AFRICA", "delta"), ("orders", "ASIA", "delta")}
    by_region = {c["region"]: c for c in bad}
    assert by_region["AFRICA"]["actual_rows"] == by_region["AFRICA"]["expected_rows"] - 10
    assert by_region["ASIA"]["actual_rows"] == by_region["ASIA"]["expected_rows"] + 10


def test_delta_soft_delete_mark_cleared(soft: Path, tmp_path: Path) -> None:
    config = _copy(soft, tmp_path)
    rows = _delta_rows(config, "orders")
    marked = rows.filter(pc.is_valid(rows["_deleted_at"])).sort_by("o_orderkey").slice(0, 1)
    assert marked.num_rows == 1
    _delta(config, "orders").update(updates={"_deleted_at": "NULL"},
                                    predicate=f"o_orderkey = {marked['o_orderkey'][0].as_py()}")
    names, bad, _ = _failures(config)
    assert names == {("orders", marked["region"][0].as_py(), "delta")}
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"]  # the row is there; its mark is wrong


def test_delta_hard_deleted_key_back(hard: Path, tmp_path: Path) -> None:
    """A key deleted upstream, live again in Delta (an old version written back)."""
    config = _copy(hard, tmp_path)
    parquet = pa.concat_tables(pq.read_table(path) for path in _parquet_log(config))
    dead = parquet.filter(parquet["_deleted"])["o_orderkey"].to_pylist()
    live = parquet.filter(pc.and_(pc.is_in(parquet["o_orderkey"], pa.array(dead)),
                                  pc.invert(parquet["_deleted"])))
    back = live.sort_by("o_orderkey").slice(0, 1)
    schema = _delta(config, "orders").schema().to_arrow()
    names_in = [f.name for f in schema]
    write_deltalake(str(config.parent / "warehouse" / "delta" / "orders"),
                    back.select(names_in).cast(pa.schema(schema)), mode="append")
    names, _, _ = _failures(config)
    assert names == {("orders", back["region"][0].as_py(), "delta")}


def test_parquet_missing_row(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    path, index = _latest_parquet_row(config, "EUROPE")
    _rewrite(path, lambda rows: pa.concat_tables([rows.slice(0, index), rows.slice(index + 1)]))
    names, _, _ = _failures(config)
    assert names == {("orders", "EUROPE", "parquet")}


def test_parquet_extra_row(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    path, index = _latest_parquet_row(config, "ASIA")
    _rewrite(path, lambda rows: pa.concat_tables([rows,
                                                  _set(rows, "o_orderkey", index, 10**9).slice(index, 1)]))
    names, bad, _ = _failures(config)
    assert names == {("orders", "ASIA", "parquet")} and bad[0]["actual_rows"] == bad[0]["expected_rows"] + 1


def test_parquet_duplicate_version(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    path, index = _latest_parquet_row(config, "AMERICA")
    _rewrite(path, lambda rows: pa.concat_tables([rows, rows.slice(index, 1)]))
    names, bad, _ = _failures(config)
    assert names == {("orders", "AMERICA", "parquet")} and bad[0]["duplicates"] == 1


def test_parquet_stale_version(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    path, index = _latest_parquet_row(config, "AFRICA")
    _rewrite(path, lambda rows: _set(rows, "o_updated_at", index,
                                     rows["o_updated_at"][index].as_py().replace(year=2023)))
    names, _, _ = _failures(config)
    assert names == {("orders", "AFRICA", "parquet")}


def test_parquet_rows_under_the_wrong_region_column(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    path = _parquet_files(config, "orders", "AFRICA")[0]
    moved = pq.read_metadata(path).num_rows
    _rewrite(path, lambda rows: rows.set_column(
        rows.schema.get_field_index("region"), rows.schema.field("region"),
        pa.array(["ASIA"] * rows.num_rows, rows.schema.field("region").type)))
    names, bad, stderr = _failures(config)
    assert names == {("orders", "AFRICA", "parquet"), ("orders", "ASIA", "parquet")}
    asia = next(c for c in bad if c["region"] == "ASIA")
    assert asia["misfiled"] == moved and "region= folder of another region" in stderr


def test_parquet_file_in_another_regions_folder(hard: Path, tmp_path: Path) -> None:
    """Issue #26 case 1: a whole file moved from region=AFRICA/ to region=ASIA/, its column untouched."""
    config = _copy(hard, tmp_path)
    path = _parquet_files(config, "orders", "AFRICA")[0]
    moved = pq.read_metadata(path).num_rows
    target = Path(str(path.with_name("moved.parquet")).replace("region=AFRICA", "region=ASIA"))
    assert not target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    names, bad, _ = _failures(config)
    assert names == {("orders", "AFRICA", "parquet")} and bad[0]["misfiled"] == moved


def test_parquet_tombstone_made_live(hard: Path, tmp_path: Path) -> None:
    """Issue #26 case 2: a tombstone rewritten with `_deleted = false`, key and cursor kept."""
    config = _copy(hard, tmp_path)
    for path in _parquet_log(config):
        rows = pq.read_table(path)
        dead = [i for i, d in enumerate(rows["_deleted"].to_pylist()) if d]
        if dead:
            region = path.parent.parent.name.removeprefix("region=")
            _rewrite(path, lambda r, i=dead[0]: _set(r, "_deleted", i, False))
            break
    else:
        raise AssertionError("no tombstone in the Parquet log")
    names, bad, stderr = _failures(config)
    assert names == {("orders", region, "parquet")}
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"] and "delete mark" in stderr


def test_dimension_table_missing_from_one_sink(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    shutil.rmtree(config.parent / "warehouse" / "delta" / "supplier")
    names, _, _ = _failures(config)
    assert names == {("supplier", "-", "delta")}


def test_dimension_version_missing(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    table = _delta(config, "customer")
    current = table.to_pyarrow_table(filters=[("is_current", "=", True)]).sort_by("c_custkey")
    table.delete(f"c_custkey = {current['c_custkey'][0].as_py()} AND is_current")
    names, bad, _ = _failures(config)
    assert names == {("customer", "-", "delta")} and bad[0]["actual_rows"] == bad[0]["expected_rows"] - 1



def test_dimension_version_extra(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    table = _delta(config, "customer")
    current = table.to_pyarrow_table(filters=[("is_current", "=", True)]).sort_by("c_custkey")
    write_deltalake(str(config.parent / "warehouse" / "delta" / "customer"), current.slice(1, 1),
                    mode="append")
    names, bad, _ = _failures(config)
    assert names == {("customer", "-", "delta")} and bad[0]["duplicates"] == 1


# ----------------------------------------------------------------------------- --deep: every value


def test_deep_passes_the_untouched_warehouse_enriching_each_row_from_its_own_version(
    hard: Path, soft: Path
) -> None:
    """400 customers moved between the two loads: the first load's rows must be recomputed with the first
    version's lookups (rebuilt from the state store's changes), the second's with the second's."""
    for config in (hard, soft):
        result = run_cli(config, "verify", "--deep", "--json")
        checks = json.loads(result.stdout)["checks"]
        values = {(c["table"], c["region"], c["sink"]) for c in checks if c["compared"] == "values"}
        assert values == {(t, r, s) for t in ("orders", "lineitem") for s in ("parquet", "delta")
                          for r in ("AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST")}
        assert all(c["ok"] and c["expected_rows"] > 0 for c in checks if c["compared"] == "values")
        assert "unchecked" not in result.stderr


def _first_version_forgotten(config: Path) -> None:
    import sqlite3

    with sqlite3.connect(config.parent / "state" / "loader.db") as db:
        (first,) = db.execute(
            "SELECT fingerprint FROM lookup_versions ORDER BY created_at LIMIT 1").fetchone()
        db.execute("UPDATE lookup_versions SET prepared = NULL, delta = NULL WHERE fingerprint = ?", (first,))


def test_deep_leaves_out_rows_whose_version_was_not_kept(hard: Path, tmp_path: Path) -> None:
    """The first version's lookups gone (as a pipeline loaded by an older loader): its rows are left out of
    --deep on both sides and a note counts them; the second load's rows are still checked, and pass."""
    config = _copy(hard, tmp_path)
    _first_version_forgotten(config)
    result = run_cli(config, "verify", "--deep", "--json")
    assert "orders: --deep left" in result.stderr and "row(s) unchecked" in result.stderr, result.stderr
    values = [c for c in json.loads(result.stdout)["checks"] if c["compared"] == "values"]
    assert values and all(c["ok"] for c in values) and sum(c["expected_rows"] for c in values) > 0


def test_deep_delta_changed_enrichment_value(hard: Path, tmp_path: Path) -> None:
    """A customer's phone on one ASIA order (key, cursor, region kept): the default verify cannot see it;
    --deep names exactly the table, region and sink."""
    config = _copy(hard, tmp_path)
    victim = _pick(_delta_rows(config, "orders"), "ASIA")["o_orderkey"][0].as_py()
    _delta(config, "orders").update(updates={"c_phone": "'00-000-000-0000'"},
                                    predicate=f"o_orderkey = {victim}")
    assert run_cli(config, "verify", "--json").returncode == 0
    names, bad, stderr = _failures(config, "--deep")
    assert names == {("orders", "ASIA", "delta")} and bad[0]["compared"] == "values"
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"] and "a wrong value" in stderr


def test_deep_parquet_changed_amount_in_the_newest_version_only(hard: Path, tmp_path: Path) -> None:
    """An amount changed in the newest version of a key fails --deep; the same change in a superseded
    version (which no reader of the latest rows sees) does not."""
    config = _copy(hard, tmp_path)
    path, index = _latest_parquet_row(config, "EUROPE")
    _rewrite(path, lambda rows: _set(rows, "amount_local", index, None))
    names, bad, _ = _failures(config, "--deep")
    assert names == {("orders", "EUROPE", "parquet")} and bad[0]["compared"] == "values"


def test_deep_ignores_a_changed_superseded_parquet_version(hard: Path, tmp_path: Path) -> None:
    config = _copy(hard, tmp_path)
    for path in _parquet_log(config):
        rows = pq.read_table(path)
        every = pa.concat_tables([pq.read_table(p, columns=["o_orderkey", "o_updated_at"])
                                  for p in _parquet_log(config)])
        newest = every.group_by("o_orderkey").aggregate([("o_updated_at", "max")])
        newer = dict(zip(newest["o_orderkey"].to_pylist(), newest["o_updated_at_max"].to_pylist(),
                         strict=True))
        old = [i for i, (k, t) in enumerate(zip(rows["o_orderkey"].to_pylist(),
                                                 rows["o_updated_at"].to_pylist(),
                                                 strict=True)) if newer[k] > t]
        if old:
            _rewrite(path, lambda r, i=old[0]: _set(r, "amount_local", i, None))
            break
    else:
        raise AssertionError("no superseded version in the Parquet log")
    assert run_cli(config, "verify", "--deep", "--json").returncode == 0


# ----------------------------------------------------------------------------- key-hash parts


def test_verify_in_key_parts_gives_the_same_checks_and_catches_the_same_corruption(hard: Path, soft: Path,
                                                                                  tmp_path: Path) -> None:
    """A table verified in key-hash parts (bounded memory) adds up to the same counts and checksums as
    one pass, deep included; a key stored twice still counts once as a duplicate (both copies fall in one
    part)."""
    for config in (hard, soft):
        whole = json.loads(run_cli(config, "verify", "--deep", "--json").stdout)["checks"]
        parted = json.loads(run_cli(config, "verify", "--deep", "--json", "--parts", "3").stdout)["checks"]
        assert parted == whole
    config = _copy(hard, tmp_path)
    write_deltalake(str(config.parent / "warehouse" / "delta" / "orders"),
                    _pick(_delta_rows(config, "orders"), "AMERICA"),
                    mode="append")
    names, bad, _ = _failures(config, "--parts", "3")
    assert names == {("orders", "AMERICA", "delta")} and bad[0]["duplicates"] == 1
