"""The prepared dimension lookups kept between runs (loader/transform/lookup_cache.py) are never stale: a
dimension file changed between runs (even keeping its size and modification time) is seen by the next
run, an entry made from another landing zone's files is never used, and a torn entry is rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args

pytestmark = pytest.mark.integration


def _project(folder: Path, cache: Path, **overrides: object) -> Path:
    run = {"max_batch_rows": 1_000_000, "cache_dir": str(cache)}
    config = write_config(folder, run=run, **overrides)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    return config


def _rename_customers(landing: Path, old: str, new: str, *, keep_stat: bool) -> None:
    """Rewrite the customer file (plain, uncompressed: a same-length change keeps the file's size) with
    every c_name's `old` prefix replaced by `new`; with `keep_stat` its size and modification time are
    as before (a rewrite neither a listing nor a clock tells apart)."""
    path = landing / "customer" / "customer.parquet"
    before = path.stat()
    table = pq.read_table(path)
    names = pc.replace_substring(table["c_name"], old, new)
    pq.write_table(table.set_column(table.schema.get_field_index("c_name"), "c_name", names), path,
                   compression="none", use_dictionary=False)
    if keep_stat:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def _names_of_new_orders(warehouse: Path, run: int, landing: Path) -> set[str]:
    """The c_name prefixes of the orders an append brought (outside EUROPE, which masks names)."""
    newest = sorted((landing / "orders").glob("ingest_date=*/*.parquet"))[-1]
    keys = pq.read_table(newest, columns=["o_orderkey"])["o_orderkey"]
    rows = DeltaTable(str(warehouse / "delta" / "orders")).to_pyarrow_table(
        columns=["o_orderkey", "c_name", "region"])
    rows = rows.filter(pc.and_(pc.is_in(rows["o_orderkey"], value_set=keys),
                               pc.not_equal(rows["region"], "EUROPE")))
    assert rows.num_rows > 0, f"run {run} landed none of the appended orders outside EUROPE"
    return {name.split("#")[0] for name in rows["c_name"].to_pylist() if name is not None}


def test_a_changed_dimension_file_is_seen_by_the_next_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = _project(tmp_path / "project", cache)
    landing, warehouse = tmp_path / "project" / "landing", tmp_path / "project" / "warehouse"
    run_json(config, "run", "--incremental")
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1, entries  # the first run prepared and kept the lookups

    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "200", "--updates", "0", "--late", "0")
    run_json(config, "run", "--incremental")  # unchanged files: the entry is used
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert _names_of_new_orders(warehouse, 2, landing) == {"Customer"}

    _rename_customers(landing, "Customer#", "Customer#", keep_stat=False)  # same rows, a plain file
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "200", "--updates", "0", "--late", "0")
    run_json(config, "run", "--incremental")
    assert _names_of_new_orders(warehouse, 3, landing) == {"Customer"}
    # Same size, same modification time: only the footer (and the content) tells the change.
    _rename_customers(landing, "Customer#", "Kustomer#", keep_stat=True)
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "200", "--updates", "0", "--late", "0")
    run_json(config, "run", "--incremental")
    assert _names_of_new_orders(warehouse, 4, landing) == {"Kustomer"}
    after = sorted(p.name for p in cache.iterdir())
    assert len(after) == 1 and after != entries  # a new entry replaced the pipeline's old one


def test_an_entry_from_other_files_is_never_used(tmp_path: Path) -> None:
    """Two landing zones, one pipeline name, one cache folder: each run sees its own customers."""
    cache = tmp_path / "cache"
    first = _project(tmp_path / "a", cache)
    second = _project(tmp_path / "b", cache)
    _rename_customers(tmp_path / "b" / "landing", "Customer#", "Kustomer#", keep_stat=False)
    for config, folder, prefix in ((first, "a", "Customer"), (second, "b", "Kustomer"),
                                   (first, "a", "Customer")):
        run_cli(config, "demo-data", "append", *append_args(config),
                "--orders", "200", "--updates", "0", "--late", "0")
        run_json(config, "run", "--incremental")
        assert _names_of_new_orders(tmp_path / folder / "warehouse", 0,
                                    tmp_path / folder / "landing") == {prefix}


def test_a_torn_entry_is_rebuilt_and_the_cache_can_be_off(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = _project(tmp_path / "project", cache)
    landing, warehouse = tmp_path / "project" / "landing", tmp_path / "project" / "warehouse"
    run_json(config, "run", "--incremental")
    (entry,) = cache.iterdir()
    (entry / "customers.arrow").write_bytes(b"torn")
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "200", "--updates", "0", "--late", "0")
    result = run_cli(config, "run", "--incremental")
    assert "unreadable" in result.stderr and "reading the dimension files" in result.stderr
    assert _names_of_new_orders(warehouse, 2, landing) == {"Customer"}
    assert pa.ipc.open_file(pa.memory_map(str(entry / "customers.arrow"))).read_all().num_rows > 0  # rebuilt

    off = write_config(tmp_path / "project",
                       run={"dimension_cache": False, "cache_dir": str(tmp_path / "unused")})
    run_cli(off, "demo-data", "append", *append_args(off), "--orders", "200", "--updates", "0", "--late", "0")
    run_json(off, "run", "--incremental")
    assert not (tmp_path / "unused").exists()
    assert _names_of_new_orders(warehouse, 3, landing) == {"Customer"}
