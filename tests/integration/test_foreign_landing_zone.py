"""The loader runs on any landing zone with TPC-H column names laid out as documented, not only the
generator's: here tpchgen-cli's own files (string_view strings), a naive millisecond cursor added by
hand, several files per table and no ingest_date folders at all."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.cli import LOCAL_CONFIG, run_json, write_config
from tests.support.warehouse import assert_warehouse_exact

pytestmark = pytest.mark.integration


def _with_cursor(table: pa.Table, name: str, start: datetime) -> pa.Table:
    stamps = [start + timedelta(seconds=i) for i in range(table.num_rows)]
    return table.append_column(name, pa.array(stamps, pa.timestamp("ms")))


def test_tpchgen_files_with_naive_cursor_load_exactly(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    tpchgen = Path(sys.executable).parent / "tpchgen-cli"
    subprocess.run([str(tpchgen), "parquet", "-s", "0.01", "-o", str(raw)], check=True, capture_output=True)
    landing = tmp_path / "landing"
    for dim in ("customer", "supplier", "nation", "region"):
        (landing / dim).mkdir(parents=True)
        (raw / f"{dim}.parquet").rename(landing / dim / f"{dim}.parquet")
    orders = pq.read_table(raw / "orders.parquet")
    lineitem = pq.read_table(raw / "lineitem.parquet")
    assert pa.types.is_string_view(orders["o_comment"].type)  # what the loader must cope with
    start = datetime(2025, 3, 1)
    orders = _with_cursor(orders, "o_updated_at", start)
    cursor_of = dict(zip(orders["o_orderkey"].to_pylist(), orders["o_updated_at"].to_pylist(), strict=True))
    lineitem = lineitem.append_column(
        "l_updated_at",
        pa.array([cursor_of[k] for k in lineitem["l_orderkey"].to_pylist()], pa.timestamp("ms")))
    for name, table in (("orders", orders), ("lineitem", lineitem)):
        (landing / name).mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), landing / name / "a.parquet")
        pq.write_table(table.slice(half), landing / name / "b.parquet")

    # tpchgen's files carry no `op` column: the demo's `deletes` blocks do not apply to them.
    sources = yaml.safe_load(LOCAL_CONFIG.read_text())["sources"]
    for source in sources.values():
        source.pop("deletes", None)
    config = write_config(tmp_path / "project", landing_zone=str(landing), sources=sources)
    first = run_json(config, "run", "--incremental")
    assert first["tables"]["orders"]["rows"] == 15000
    warehouse = tmp_path / "project" / "warehouse"
    assert_warehouse_exact(warehouse, landing)

    # A re-sent order in a new file: only it (and the lookback) is loaded, and it wins.
    resent = orders.slice(orders.num_rows - 1).set_column(
        orders.schema.get_field_index("o_totalprice"), "o_totalprice",
        pa.array([pc.multiply(orders["o_totalprice"][-1], 2).as_py()], orders["o_totalprice"].type))
    later = pa.array([datetime(2025, 3, 1) + timedelta(days=2)], pa.timestamp("ms"))
    resent = resent.set_column(resent.schema.get_field_index("o_updated_at"), "o_updated_at", later)
    pq.write_table(resent, landing / "orders" / "c.parquet")
    second = run_json(config, "run", "--incremental")
    # The lookback (1 h at one order a second) re-reads 3,600 versions; the re-sent one replaces the
    # newest of them after the dedupe: 3,600 rows, none of the other 11,400 orders.
    assert second["tables"]["orders"]["rows"] == 3600
    assert "lineitem" not in second["tables"]
    assert_warehouse_exact(warehouse, landing)
