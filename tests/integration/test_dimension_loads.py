"""Dimension tables end to end, through the real command line on the demo landing zone: the first run
loads customer, supplier, nation and region into every sink; `demo-data append --customer-changes M`
changes M customers and the next run closes and opens exactly their versions; an unchanged run writes
nothing; change files (a dimension with a cursor) chain their versions; bad dimension input fails the
run before anything is written, naming the key and the file. The expected history is computed in
tests/support/dimensions.py, independently of the loader. (Kills inside each sink's dimension step:
tests/integration/test_kill_matrix.py.)"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.dimensions import (
    Snapshot,
    assert_customer_history,
    assert_history,
    customer_regions,
    expected_history,
    masked,
    snapshot_of,
)
from tests.support.readers import (
    delta_dimension_versions,
    delta_table_version,
    parquet_dimension_files,
    parquet_dimension_versions,
    read_delta,
)

pytestmark = pytest.mark.integration


def _project(tmp_path: Path, **dimensions: Any) -> Path:
    raw = yaml.safe_load((Path(__file__).parents[2] / "configs" / "local.yaml").read_text())
    dims = {**raw["dimensions"], **dimensions}
    return write_config(tmp_path, dimensions=dims)


def test_customer_changes_land_as_new_versions_in_every_sink(tmp_path: Path) -> None:
    config = _project(tmp_path)
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    first = snapshot_of(landing / "customer")
    loaded = run_json(config, "run", "--incremental")["dimensions"]
    assert set(loaded) == {"customer", "supplier", "nation", "region"}
    customers = len(first.rows)
    assert loaded["customer"]["sinks"] == {
        s: {"opened": customers, "closed": 0, "stale": 0} for s in ("parquet", "delta")}
    assert_customer_history(warehouse, landing, [first])
    # nation and region are replaced: the table is the snapshot (with its row hash)
    nation = read_delta(warehouse / "delta" / "nation")
    assert nation is not None and sorted(nation.drop_columns(["row_hash"]).to_pylist(),
                                         key=lambda r: r["n_nationkey"]) == \
        sorted(pq.read_table(landing / "nation").to_pylist(), key=lambda r: r["n_nationkey"])

    out = run_cli(config, "demo-data", "append", *append_args(config), "--orders", "30", "--updates", "5",
                  "--customer-changes", "8").stdout
    assert "8 customers changed" in out, out
    second = snapshot_of(landing / "customer")
    summary = run_json(config, "run", "--incremental")
    assert list(summary["dimensions"]) == ["customer"]  # the other files did not change: not even read
    expected = expected_history([first, second], customer_regions(landing))
    changed = sum(len(v) - 1 for v in expected.values())
    assert 0 < changed <= 8  # a change of a masked value alone is no visible change
    assert summary["dimensions"]["customer"]["sinks"] == {
        s: {"opened": changed, "closed": changed, "stale": 0} for s in ("parquet", "delta")}
    assert_customer_history(warehouse, landing, [first, second])

    # Nothing changed: nothing read, nothing written (no new Delta version, no new Parquet file).
    files, version = (parquet_dimension_files(warehouse / "parquet" / "customer"),
                      delta_table_version(warehouse / "delta" / "customer"))
    again = run_json(config, "run", "--incremental")
    assert again["status"] == "nothing_new" and again["dimensions"] == {}
    assert parquet_dimension_files(warehouse / "parquet" / "customer") == files
    assert delta_table_version(warehouse / "delta" / "customer") == version
    status = run_json(config, "status")["dimensions"]["customer"]
    assert status["mode"] == "scd2" and status["sinks"]["delta"] == {
        "opened": changed, "closed": changed, "stale": 0}

    # verify: every dimension checked in every sink (region "-"); orders of a customer who moved nation
    # keep the region they loaded with, and verify still checks each region on its own (the region of
    # each row is the one its batch's recorded dimension version gives)
    verified = run_cli(config, "verify", "--json")
    checks = json.loads(verified.stdout)["checks"]
    assert {(c["table"], c["sink"]) for c in checks if c["region"] == "-"} == {
        (d, s) for d in ("customer", "supplier", "nation", "region") for s in ("parquet", "delta")}
    assert all(c["ok"] for c in checks)
    assert {c["region"] for c in checks if c["table"] == "orders"} == {
        "AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"}
    assert "today's dimension files" not in verified.stderr, verified.stderr

    # a current version removed behind the loader's back: verify names the dimension, region "-" and the sink
    from deltalake import DeltaTable

    victim = second.rows[0]["c_custkey"]
    DeltaTable(str(warehouse / "delta" / "customer")).delete(f"c_custkey = {victim} AND is_current")
    broken = run_cli(config, "verify", check=False)
    assert broken.returncode == 1
    assert ("mismatch: table customer, region -, sink delta: 1,499 rows, expected 1,500"
            in broken.stderr), broken.stderr


def test_a_forgotten_fingerprint_compares_again_and_writes_nothing(tmp_path: Path) -> None:
    """The fingerprint only saves work: with the state's record of the loads gone (a new state store
    over the same warehouse), the comparison finds every sink up to date."""
    config = _project(tmp_path)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    first = snapshot_of(tmp_path / "landing" / "customer")
    run_json(config, "run", "--incremental")
    raw = yaml.safe_load(config.read_text())
    raw["state"]["url"] = "sqlite:///state/other.db"
    config.write_text(yaml.safe_dump(raw))
    loaded = run_json(config, "run", "--incremental")["dimensions"]
    assert {s: c["opened"] + c["closed"] for d in loaded.values() for s, c in d["sinks"].items()} == {
        "parquet": 0, "delta": 0}
    assert_customer_history(tmp_path / "warehouse", tmp_path / "landing", [first])


def _customer_rows(landing: Path) -> pa.Table:
    return pq.read_table(landing / "customer" / "customer.parquet")


def test_change_files_chain_versions_by_their_cursor(tmp_path: Path) -> None:
    """customer as change files with `c_updated_at`: each row a version at its cursor; several versions
    of a key in one load chain; the region lookup takes each key's newest version."""
    config = _project(tmp_path,
                      customer={"path": "customer_changes", "mode": "scd2", "cursor": "c_updated_at"})
    landing = tmp_path / "landing"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    base = _customer_rows(landing)
    t1 = datetime(2024, 3, 1, tzinfo=UTC)
    folder = landing / "customer_changes"
    folder.mkdir()
    stamp = lambda rows, at: rows.append_column(  # noqa: E731
        "c_updated_at", pa.array([at] * rows.num_rows, pa.timestamp("us", tz="UTC")))
    pq.write_table(stamp(base, t1), folder / "part-1.parquet")
    run_json(config, "run", "--incremental")

    rows = base.slice(0, 3).to_pylist()
    t2, t3 = t1 + timedelta(days=1), t1 + timedelta(days=2)
    v2 = [{**r, "c_mktsegment": "MACHINERY" if r["c_mktsegment"] != "MACHINERY" else "BUILDING"}
          for r in rows]
    v3 = {**v2[0], "c_acctbal": v2[0]["c_acctbal"] + 1}
    same = {**rows[2]}  # key 3 sent again unchanged at t3: no new version
    # before the last load: never a version
    late = {**base.slice(3, 1).to_pylist()[0], "c_phone": "00-000-000-0000"}
    changes = pa.Table.from_pylist([*v2[:2], v3, same, late], schema=base.schema)
    at = pa.array([t2, t2, t3, t3, t1 - timedelta(hours=1)], pa.timestamp("us", tz="UTC"))
    pq.write_table(changes.append_column("c_updated_at", at), folder / "part-2.parquet")
    summary = run_json(config, "run", "--incremental")
    # key 1: t1 -> t2 -> t3 (two new versions), key 2: t1 -> t2, key 3: unchanged; only rows after t1 read
    assert summary["dimensions"]["customer"]["rows"] == 4
    assert summary["dimensions"]["customer"]["sinks"]["delta"] == {"opened": 3, "closed": 2, "stale": 0}
    assert run_json(config, "status")["dimensions"]["customer"]["cursor"] == t3.isoformat()

    regions = customer_regions(landing)
    snap1 = Snapshot([{**r, "c_updated_at": t1} for r in base.to_pylist()], t1)
    expected = expected_history([snap1], regions)
    for key, versions in ((rows[0]["c_custkey"], [(v2[0], t2), (v3, t3)]),
                          (rows[1]["c_custkey"], [(v2[1], t2)])):
        for values, at_ in versions:
            old = expected[key][-1]
            expected[key][-1] = (old[0], old[1], at_)
            expected[key].append((masked({**values, "c_updated_at": at_}, regions), at_, None))
    for sink, table in (("parquet", parquet_dimension_versions(
                            tmp_path / "warehouse" / "parquet" / "customer", ["c_custkey"], "scd2")),
                        ("delta", delta_dimension_versions(tmp_path / "warehouse" / "delta" / "customer"))):
        assert_history(table, expected, sink=sink)


@pytest.mark.parametrize("problem", ["duplicate key", "null key", "missing tracked column"])
def test_bad_dimension_input_fails_before_anything_is_written(tmp_path: Path, problem: str) -> None:
    track = {"customer": {"path": "customer", "mode": "scd2", "track": ["c_name", "c_loyalty"]}} \
        if problem == "missing tracked column" else {}
    config = _project(tmp_path, **track)
    landing = tmp_path / "landing"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    rows = _customer_rows(landing)
    if problem == "duplicate key":
        pq.write_table(rows.slice(41, 1), landing / "customer" / "late-copy.parquet")
    elif problem == "null key":
        bad = rows.slice(0, 1).set_column(0, "c_custkey", pa.array([None], pa.int64()))
        pq.write_table(bad, landing / "customer" / "broken.parquet")
    result = run_cli(config, "run", "--incremental", check=False)
    assert result.returncode == 1, result.stderr
    message = result.stderr
    if problem == "duplicate key":
        key = rows["c_custkey"][41].as_py()
        assert re.search(rf"dimension customer: 2 rows share a key .* c_custkey={key} "
                         r"in .*customer\.parquet, .*late-copy\.parquet",
                         message), message
    elif problem == "null key":
        assert ("dimension customer: 1 row(s) with a null c_custkey (first in" in message
                and "broken.parquet" in message), message
    else:
        assert "dimension customer: column(s) ['c_loyalty'] not in its files" in message, message
    assert "nothing was written" in message or problem == "missing tracked column"
    warehouse = tmp_path / "warehouse"
    assert not (warehouse / "delta").exists() and not (warehouse / "parquet").exists(), \
        "something was written"
    assert run_json(config, "status")["sources"]["orders"]["checkpoint"] is None


def test_load_false_keeps_a_dimension_out_of_the_sinks(tmp_path: Path) -> None:
    off = {name: {"path": name, "load": False} for name in ("customer", "supplier", "nation", "region")}
    config = _project(tmp_path, **off)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    summary = run_json(config, "run", "--incremental")
    assert summary["dimensions"] == {} and summary["tables"]["orders"]["rows"] > 0
    assert sorted(p.name for p in (tmp_path / "warehouse" / "delta").iterdir()) == ["lineitem", "orders"]


def test_a_changed_mode_is_refused_until_the_tables_are_moved_away(tmp_path: Path) -> None:
    config = _project(tmp_path)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    run_json(config, "run", "--incremental")
    raw = yaml.safe_load(config.read_text())
    raw["dimensions"]["customer"]["mode"] = "merge"
    config.write_text(yaml.safe_dump(raw))
    warehouse = tmp_path / "warehouse"
    version = delta_table_version(warehouse / "delta" / "customer")
    refused = run_cli(config, "run", "--incremental", check=False)
    assert refused.returncode == 2, refused.stderr
    assert ("dimensions.customer.mode is merge, but" in refused.stderr
            and "was loaded as scd2" in refused.stderr)
    assert "move the table away in every sink" in refused.stderr and "nothing was written" in refused.stderr
    assert delta_table_version(warehouse / "delta" / "customer") == version
    for sink in ("parquet", "delta"):
        shutil.rmtree(warehouse / sink / "customer")
    loaded = run_json(config, "run", "--incremental")["dimensions"]
    assert list(loaded) == ["customer"] and loaded["customer"]["mode"] == "merge"
    merged = delta_dimension_versions(warehouse / "delta" / "customer")
    assert merged is not None and "valid_from" not in merged.column_names
    assert merged.num_rows == len(snapshot_of(tmp_path / "landing" / "customer").rows)


def test_bad_input_in_one_dimension_writes_no_other(tmp_path: Path) -> None:
    """Issue #26, case 6: 50 customer changes and a supplier key twice in one run. Every changed
    dimension is checked before the first write: the run fails and no sink's customer table nor the
    state changed ('nothing was written' is true); with the duplicate gone, the changes land."""
    config = _project(tmp_path)
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1))
    first = snapshot_of(landing / "customer")
    run_json(config, "run", "--incremental")
    out = run_cli(config, "demo-data", "append", *append_args(config), "--orders", "10",
                  "--customer-changes", "50").stdout
    assert "50 customers changed" in out, out
    suppliers = pq.read_table(landing / "supplier" / "supplier.parquet")
    pq.write_table(suppliers.slice(7, 1), landing / "supplier" / "late-copy.parquet")

    def held() -> dict[str, Any]:
        parquet = parquet_dimension_versions(warehouse / "parquet" / "customer", ["c_custkey"], "scd2")
        return {"parquet": parquet,
                "delta": delta_dimension_versions(warehouse / "delta" / "customer"),
                "delta version": delta_table_version(warehouse / "delta" / "customer"),
                "parquet files": parquet_dimension_files(warehouse / "parquet" / "customer")}

    def state() -> list[Any]:
        with sqlite3.connect(tmp_path / "state" / "loader.db") as db:
            return [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                    for t in ("dimension_loads", "checkpoints")]

    before, recorded = held(), state()
    failed = run_cli(config, "run", "--incremental", check=False)
    assert failed.returncode == 1, failed.stderr
    key = suppliers["s_suppkey"][7].as_py()
    expected = f"dimension supplier: 2 rows share a key with another row, e.g. s_suppkey={key}"
    assert expected in failed.stderr, failed.stderr
    assert "nothing was written" in failed.stderr
    after = held()
    assert after["delta version"] == before["delta version"]
    assert after["parquet files"] == before["parquet files"]
    for sink in ("parquet", "delta"):
        changed = not after[sink].sort_by("c_custkey").equals(before[sink].sort_by("c_custkey"))
        assert not changed, f"{sink}'s customer table changed"
    assert_customer_history(warehouse, landing, [first])
    assert state() == recorded, "the state recorded a load"

    (landing / "supplier" / "late-copy.parquet").unlink()
    loaded = run_json(config, "run", "--incremental")["dimensions"]
    assert list(loaded) == ["customer"] and loaded["customer"]["sinks"]["delta"]["opened"] > 0
    assert_customer_history(warehouse, landing, [first, snapshot_of(landing / "customer")])
