"""Upstream deletes end to end, through the real command line on the demo landing zone: `demo-data
append --deletes N` writes tombstones (op = 'D'), `loader run` carries them to the sinks on either
executor, and the sinks hold what the independent DuckDB computation (tests/support/expected.py) says:
tombstoned keys gone from Delta, their tombstone the newest version in the Parquet log."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.expected import expected_tombstones, key_columns
from tests.support.readers import CURSOR, delta_rows, parquet_latest, parquet_versions
from tests.support.warehouse import assert_warehouse_exact

pytestmark = [pytest.mark.integration, pytest.mark.ray]

DELETED = "_deleted"


def _appended(config: Path, *args: str) -> tuple[int, int]:
    """`demo-data append` with `args`: (orders, lineitems) it deleted, as its summary line says."""
    out = run_cli(config, "demo-data", "append", *append_args(config), *args).stdout
    found = re.search(r"(\d[\d,]*) deleted \(with (\d[\d,]*) lineitems\)", out)
    assert found, out
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


def _assert_sinks_exact(warehouse: Path, landing: Path, *,
                        deleted: tuple[str, ...] = ("orders", "lineitem")) -> None:
    """Delta: the live latest versions only, every column. Parquet: every key's newest version; the
    tombstoned keys' is their tombstone (`_deleted`), the others' the live row (tests/support/warehouse.py).
    Neither holds the deletes column. `deleted`: the tables that have some."""
    assert_warehouse_exact(warehouse, landing)
    for table in ("orders", "lineitem"):
        assert "op" not in delta_rows(warehouse, table).column_names
        assert "op" not in parquet_versions(warehouse, table).column_names
        assert (expected_tombstones(table, landing).num_rows > 0) == (table in deleted), table


def test_deletes_through_both_executors(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    local = write_config(tmp_path / "local", landing_zone=str(landing))
    ray = write_config(tmp_path / "ray", landing_zone=str(landing))
    run_cli(local, "demo-data", "init", "--scale", "0.01", *init_args(3))
    assert run_json(local, "run", "--incremental", "--executor", "local")["tables"]["orders"]["deleted"] == 0
    run_json(ray, "run", "--incremental", "--executor", "ray", cwd=ray.parent)

    orders, lineitems = _appended(local, "--orders", "200", "--updates", "50", "--late", "5",
                                  "--deletes", "40")
    assert orders == 40 and lineitems > orders  # TPC-H orders have 1-7 lineitems each
    first = run_json(local, "run", "--incremental", "--executor", "local")
    assert first["executor"] == "local"
    for table, count in (("orders", orders), ("lineitem", lineitems)):
        info = first["tables"][table]
        assert info["deleted"] == count, (table, info)
        assert info["sinks"]["parquet"]["deleted"] == count  # tombstone versions written
        assert info["sinks"]["delta"]["deleted"] == count  # keys removed: all were stored
    sinks = first["tables"]["orders"]["sinks"]
    assert sinks["delta"]["rows"] == 200 + 50 + 5  # new live versions (the lookback's re-reads were there)
    assert sinks["parquet"]["rows"] == 200 + 50 + 5 + orders  # and the tombstones, versions of their own
    # The run summary for people shows them too.
    text = run_cli(ray, "run", "--incremental", "--executor", "ray", cwd=ray.parent).stdout
    assert "deleted" in text and "deletes applied" in text, text
    assert re.search(rf"\borders\b.*\b{orders}\b.*\bparquet\b.*\b{orders}\b", text), text

    # More deletes, and orders deleted before are never deleted (or updated) again.
    orders2, lineitems2 = _appended(local, "--orders", "20", "--updates", "30", "--late", "0",
                                    "--deletes", "25")
    assert orders2 == 25
    ran = run_cli(local, "run", "--incremental", "--executor", "local", "--json")
    second = json.loads(ran.stdout)
    # the Delta merge's log line names the rows it deleted beside those it updated
    merged = [json.loads(line)["message"] for line in ran.stderr.splitlines()
              if "orders -> delta: merged" in line]
    assert merged and all(re.search(r"merged [\d,]+ updated row\(s\), [\d,]+ deleted,", m)
                          for m in merged), merged
    assert sum(int(re.search(r"([\d,]+) deleted", m).group(1).replace(",", "")) for m in merged) == 25  # type: ignore[union-attr]
    assert second["tables"]["orders"]["sinks"]["delta"]["deleted"] == 25
    assert second["tables"]["lineitem"]["sinks"]["delta"]["deleted"] == lineitems2
    run_json(ray, "run", "--incremental", "--executor", "ray", cwd=ray.parent)
    newest = pa.concat_tables(pq.read_table(p) for p in sorted((landing / "orders").rglob("*.parquet")))
    tombstones = newest.filter(pc.equal(newest["op"], "D"))["o_orderkey"].to_pylist()
    assert len(tombstones) == len(set(tombstones)) == 65

    for project in ("local", "ray"):
        _assert_sinks_exact(tmp_path / project / "warehouse", landing)
        verified = run_json(tmp_path / project / "loader.yaml", "verify")
        assert verified["ok"], verified
    for table in ("orders", "lineitem"):
        a, b = (delta_rows(tmp_path / "local" / "warehouse", table),
                delta_rows(tmp_path / "ray" / "warehouse", table))
        assert a.equals(b.select(a.column_names)), f"delta/{table} differs between executors"
        a = parquet_versions(tmp_path / "local" / "warehouse", table)
        b = parquet_versions(tmp_path / "ray" / "warehouse", table)
        order = [(c, "ascending") for c in [*key_columns(table), CURSOR[table]]]
        assert a.sort_by(order).equals(b.select(a.column_names).sort_by(order)), f"parquet/{table} differs"


def test_a_tombstone_at_the_loaded_versions_cursor_deletes_it_in_every_sink(tmp_path: Path) -> None:
    """Issue #26, case 4: CDC sends deletes stamped with the deleted version's own time. The newest
    orders, loaded by a first run, get tombstones at their cursors (the full before-image, `op = 'D'`)
    in a later file; the next run (whose lookback re-reads the live versions too) deletes them: gone from
    Delta, their tombstone the newest version in the Parquet log (written beside the live version at
    that cursor), and `loader verify` agrees."""
    config = write_config(tmp_path / "project")
    landing, warehouse = tmp_path / "project" / "landing", tmp_path / "project" / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    files = sorted((landing / "orders").rglob("*.parquet"))
    orders = pa.concat_tables(pq.read_table(p) for p in files)
    newest = orders.sort_by([("o_updated_at", "descending")]).slice(0, 4)  # inside the lookback
    op = newest.schema.get_field_index("op")
    dead = newest.set_column(op, "op", pa.array(["D"] * 4, newest.schema.field(op).type))
    _appended(config, "--orders", "20", "--updates", "0", "--late", "0", "--deletes", "0")  # moves the cursor
    folder = landing / "orders" / "ingest_date=2099-01-01"  # read after every other file
    folder.mkdir()
    pq.write_table(dead, folder / "part-ties.parquet")
    summary = run_json(config, "run", "--incremental")
    info = summary["tables"]["orders"]
    assert info["deleted"] == 4, info
    assert info["sinks"]["parquet"]["deleted"] == 4, info  # tombstones logged beside the live versions
    assert info["sinks"]["delta"]["deleted"] == 4, info  # the stored versions at their cursors removed
    keys = set(newest["o_orderkey"].to_pylist())
    assert keys.isdisjoint(delta_rows(warehouse, "orders")["o_orderkey"].to_pylist())
    latest = parquet_latest(warehouse, "orders")
    tied = latest.filter(pc.is_in(latest["o_orderkey"], pa.array(list(keys))))
    assert tied[DELETED].to_pylist() == [True] * 4
    _assert_sinks_exact(warehouse, landing, deleted=("orders",))
    verified = run_json(config, "verify")
    assert verified["ok"], [c for c in verified["checks"] if not c["ok"]]


def test_a_landing_file_without_the_deletes_column_fails_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project")
    landing = tmp_path / "project" / "landing"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    before = run_json(config, "status")["sources"]["orders"]["checkpoint"]
    template = pq.read_table(sorted((landing / "orders").rglob("*.parquet"))[-1]).slice(0, 1)
    folder = landing / "orders" / "ingest_date=2024-02-01"
    folder.mkdir()
    bad = folder / "part-no-op.parquet"
    row = template.drop_columns(["op"])
    row = row.set_column(row.schema.get_field_index("o_orderkey"), "o_orderkey",
                         pa.array([10**9], pa.int64()))
    row = row.set_column(row.schema.get_field_index("o_updated_at"), "o_updated_at",
                         pa.array([datetime(2024, 2, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")))
    pq.write_table(row, bad)
    for executor in ("local", "ray"):
        failed = run_cli(config, "run", "--incremental", "--executor", executor, check=False)
        assert failed.returncode == 1, failed.stderr
        assert (str(bad) in failed.stderr and "'orders'" in failed.stderr
                and "'op'" in failed.stderr), failed.stderr
        assert "sources.orders.deletes" in failed.stderr  # the fix: the file or the config
    assert run_json(config, "status")["sources"]["orders"]["checkpoint"] == before
    pq.write_table(row.append_column("op", pa.array(["I"], pa.string())), bad)  # fixed: it loads
    assert run_json(config, "run", "--incremental")["tables"]["orders"]["rows"] >= 1


def test_soft_deletes_mark_rows_and_verify_accounts_for_them(tmp_path: Path) -> None:
    """mode: soft: Delta keeps a tombstoned key's newest live row, `_deleted_at` = the tombstone's
    cursor (null for every other row), and `loader verify` passes (it expects the key's newest live
    version there)."""
    raw = yaml.safe_load((Path(__file__).parents[2] / "configs" / "local.yaml").read_text())
    sources = raw["sources"]
    for source in sources.values():
        source["deletes"] = {"column": "op", "values": ["D"], "mode": "soft"}
    config = write_config(tmp_path / "project", sources=sources)
    landing, warehouse = tmp_path / "project" / "landing", tmp_path / "project" / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")
    orders, _ = _appended(config, "--orders", "30", "--updates", "10", "--late", "0", "--deletes", "12")
    summary = run_json(config, "run", "--incremental")
    assert summary["tables"]["orders"]["sinks"]["delta"]["deleted"] == orders == 12
    delta = delta_rows(warehouse, "orders")
    marked = delta.filter(pc.is_valid(delta["_deleted_at"]))
    want = expected_tombstones("orders", landing)
    assert sorted(marked["o_orderkey"].to_pylist()) == sorted(want["o_orderkey"].to_pylist())
    by_key = dict(zip(want["o_orderkey"].to_pylist(), want["o_updated_at"].to_pylist(), strict=True))
    assert all(row["_deleted_at"] == by_key[row["o_orderkey"]]
               for row in marked.select(["o_orderkey", "_deleted_at"]).to_pylist())
    assert all(row["_deleted_at"] > row["o_updated_at"]
               for row in marked.select(["o_updated_at", "_deleted_at"]).to_pylist())
    verified = run_json(config, "verify")
    assert verified["ok"], [c for c in verified["checks"] if not c["ok"]]


def test_tombstones_on_the_gpu_engine_with_the_standin(tmp_path: Path) -> None:
    """The tombstones' region lookup runs on the chain's engine: through the GPU backend (the stand-in
    cuDF of tests/support/gpu_standin), the sinks are as exact as on the CPU."""
    from tests.integration.test_gpu_plumbing import _standin_env

    config = write_config(tmp_path / "project")
    project = tmp_path / "project"
    run_cli(config, "demo-data", "init", "--scale", "0.005", *init_args(2))
    env = _standin_env(tmp_path / "batches.jsonl", 1)
    assert run_json(config, "run", "--incremental", "--engine", "gpu", env=env)["engine"] == "gpu"
    orders, lineitems = _appended(config, "--orders", "30", "--updates", "10", "--late", "0",
                                  "--deletes", "12")
    summary = run_json(config, "run", "--incremental", "--engine", "gpu", env=env)
    assert summary["engine"] == "gpu"
    assert (summary["tables"]["orders"]["deleted"],
            summary["tables"]["lineitem"]["deleted"]) == (orders, lineitems)
    _assert_sinks_exact(project / "warehouse", project / "landing")
