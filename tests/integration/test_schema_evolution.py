"""Schema evolution through the real CLI and all three sinks (Parquet, Delta, Snowflake on the emulator):
a new nullable column in the source's newer files is added to every output on the next run (older rows
null, `loader verify` still exact); a column whose type changes in a way that cannot widen fails the
run naming the column, the old and the new type, and the checkpoint stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args
from tests.support.snowflake_emulator import connect, new_database, password_env, sink_settings

pytestmark = pytest.mark.integration


def _newest_orders_file(project: Path) -> Path:
    return sorted((project / "landing" / "orders").glob("ingest_date=*/*.parquet"))[-1]


def _rewrite(path: Path, change: Any) -> pa.Table:
    table = change(pq.read_table(path))
    pq.write_table(table, path)
    return table


def test_new_column_reaches_every_sink_and_a_type_change_is_refused(
    tmp_path: Path, snowflake_server: dict[str, Any]
) -> None:
    database = new_database()
    project = tmp_path / "project"
    config = write_config(project, sinks={"snowflake": sink_settings(snowflake_server, database)})
    env = password_env(snowflake_server)
    run_cli(config, "demo-data", "init", "--scale", "0.002", *init_args(2), env=env)
    run_json(config, "run", "--incremental", env=env)

    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "40", "--updates", "10", "--late", "0", env=env)
    channel = lambda t: t.append_column("o_channel", pa.array(  # noqa: E731
        [f"web-{k}" for k in t["o_orderkey"].to_pylist()], pa.string()))
    sent = _rewrite(_newest_orders_file(project), channel)
    second = run_json(config, "run", "--incremental", env=env)
    assert second["status"] == "committed", second

    delta = DeltaTable(str(project / "warehouse" / "delta" / "orders")).to_pyarrow_table()
    assert delta.schema.field("o_channel").type == pa.string()
    with_value = delta.filter(pc.is_valid(delta["o_channel"]))
    assert sorted(with_value["o_orderkey"].to_pylist()) == sorted(sent["o_orderkey"].to_pylist())
    assert all(v == f"web-{k}" for k, v in zip(with_value["o_orderkey"].to_pylist(),
                                               with_value["o_channel"].to_pylist(),
                                               strict=True))
    assert delta.num_rows > with_value.num_rows  # the older rows are there, with a null
    run2_files = [p for p in (project / "warehouse" / "parquet" / "orders").rglob("run-00000002-*.parquet")]
    assert run2_files and all("o_channel" in pq.read_schema(p).names for p in run2_files)
    conn = connect(snowflake_server, database)
    try:
        cur = conn.cursor()
        cur.execute('SELECT COUNT(*), COUNT("O_CHANNEL") FROM "ORDERS"')
        total, valued = cur.fetchone()
    finally:
        conn.close()
    assert (total, valued) == (delta.num_rows, with_value.num_rows)
    assert run_json(config, "verify", env=env)["ok"]

    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "30", "--updates", "0", "--late", "0", env=env)
    _rewrite(_newest_orders_file(project), lambda t: t.set_column(
        t.schema.get_field_index("o_comment"), "o_comment", pa.array(range(t.num_rows), pa.int64())))
    before = run_json(config, "status", env=env)["sources"]["orders"]
    failed = run_cli(config, "run", "--incremental", check=False, env=env)
    assert failed.returncode == 1, failed.stderr[-2000:]
    error = failed.stderr.splitlines()[-1]
    assert "o_comment" in error and "string" in error and "int64" in error, error
    after = run_json(config, "status", env=env)["sources"]["orders"]
    assert ((after["checkpoint"], after["checkpoint_run"]) == (before["checkpoint"], before["checkpoint_run"])
            == (second["tables"]["orders"]["window"]["upper"], 2))
