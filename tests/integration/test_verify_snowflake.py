"""`loader verify` covers Snowflake (issue #16): through the real CLI against fakesnow's server, a loaded
Snowflake target passes like the other sinks; a row deleted there behind the loader's back fails,
naming the table, the region and the sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import init_args
from tests.support.snowflake_emulator import connect, new_database, password_env, sink_settings

pytestmark = pytest.mark.integration


def _delete_one_order(server: dict[str, Any], database: str) -> tuple[int, str]:
    """Deletes one row of ORDERS with the connector (not the loader); its key and region."""
    conn = connect(server, database)
    try:
        cur = conn.cursor()
        cur.execute('SELECT "O_ORDERKEY", "REGION" FROM "ORDERS" ORDER BY "O_ORDERKEY" LIMIT 1')
        key, region = cur.fetchone()
        cur.execute('DELETE FROM "ORDERS" WHERE "O_ORDERKEY" = %s', (int(key),))
        cur.execute('SELECT COUNT(*) FROM "ORDERS" WHERE "O_ORDERKEY" = %s', (int(key),))
        assert cur.fetchone()[0] == 0
    finally:
        conn.close()
    return int(key), str(region)


def test_verify_reads_snowflake_back_and_names_a_lost_row(tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    database = new_database()
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": False},
             "snowflake": sink_settings(snowflake_server, database)}
    config = write_config(tmp_path / "project", sinks=sinks)
    env = password_env(snowflake_server)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2), env=env)
    assert run_json(config, "run", "--incremental", env=env)["status"] == "committed"

    report = run_json(config, "verify", env=env)
    assert report["ok"] is True, [c for c in report["checks"] if not c["ok"]]
    assert {(c["table"], c["sink"]) for c in report["checks"]} == {  # facts, and each dimension table
        (t, s) for t in ("orders", "lineitem", "customer", "supplier", "nation", "region") for s in ("parquet", "snowflake")
    }
    held = [c for c in report["checks"] if c["table"] == "orders" and c["sink"] == "snowflake"]
    assert sum(c["actual_rows"] for c in held) == 15000 and all(c["duplicates"] == 0 for c in held)

    key, region = _delete_one_order(snowflake_server, database)

    result = run_cli(config, "verify", "--json", check=False, env=env)
    assert result.returncode == 1, result.stderr
    bad = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert [(c["table"], c["region"], c["sink"]) for c in bad] == [("orders", region, "snowflake")], (key, bad)
    assert bad[0]["actual_rows"] == bad[0]["expected_rows"] - 1
    assert "orders" in result.stderr and region in result.stderr and "sink snowflake" in result.stderr

    text = run_cli(config, "verify", check=False, env=env)
    assert text.returncode == 1
    assert f"table orders, region {region}, sink snowflake" in text.stderr and "MISMATCH" in text.stdout
