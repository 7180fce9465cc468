"""The Snowflake sink's harder paths, against fakesnow's server with the real connector: faults inside
its transaction, connections dropped by a loopback proxy, a target whose column conflicts with the
source, a new source column, and key-pair authentication (an encrypted PEM key, file or inline)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from loader.config import parse_config
from loader.errors import SinkRejected
from loader.sinks.base import SinkContext, TableBatch
from loader.sinks.snowflake.sink import SnowflakeSink
from state import Window
from tests.support.cli import FAIL_FAST_S, run_cli, run_json, write_config
from tests.support.conformance import write_whole
from tests.support.demo_clock import append_args, init_args
from tests.support.snowflake_emulator import PASSWORD_ENV, new_database, password_env, query, sink_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.warehouse import assert_snowflake_exact, assert_warehouse_exact

pytestmark = pytest.mark.integration


def _project(folder: Path, server: dict[str, Any], database: str, **snowflake: Any) -> Path:
    sinks = {"parquet": {"enabled": True}, "delta": {"enabled": True},
             "snowflake": sink_settings(server, database, **snowflake)}
    return write_config(folder, sinks=sinks, state={"url": "sqlite:///state/loader.db", "lease_ttl": "2s"})


def _loaded_once(tmp_path: Path, server: dict[str, Any], database: str, **snowflake: Any) -> Path:
    """A project whose first run landed, with a new batch (updates, late rows) waiting."""
    config = _project(tmp_path / "p", server, database, **snowflake)
    env = password_env(server)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2), env=env)
    run_json(config, "run", "--incremental", env=env)
    run_cli(config, "demo-data", "append", *append_args(config),
            "--orders", "150", "--updates", "40", "--late", "5", env=env)
    return config


def test_fault_inside_the_transaction_rolls_back_and_is_retried(
    tmp_path: Path, snowflake_server: dict[str, Any]
) -> None:
    database = new_database()
    config = _loaded_once(tmp_path, snowflake_server, database)
    faults = "snowflake.merge@orders=transient*1,snowflake.write@lineitem=transient*2"
    result = run_cli(config, "run", "--incremental",
                     env={**password_env(snowflake_server), "LOADER_FAILPOINTS": faults})
    assert "orders -> snowflake merge: attempt 1 of 3 failed" in result.stderr
    assert "lineitem -> snowflake: attempt" not in result.stderr  # no whole-sink retry on top of the steps
    # The rolled-back try left no ledger row: one row per table and run.
    assert query(snowflake_server, database,
                 "SELECT COUNT(*), COUNT(DISTINCT TABLE_NAME || RUN_NUMBER) FROM LOADER_LEDGER") == [(4, 4)]
    assert_snowflake_exact(snowflake_server, database, tmp_path / "p" / "landing")
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


def test_dropped_connections_are_retried(tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    """A proxy between the connector and the emulator resets new connections: the connector's own
    retries and the loader's carry the run through (the first connections are the column check's, made
    before any sink writes; the sink's own step retries are shown above); the data lands exactly once."""
    database = new_database()
    with TcpProxy(snowflake_server["port"], mode="reset") as proxy:
        config = _loaded_once(tmp_path, snowflake_server, database, port=proxy.port,
                              login_timeout="3s", network_timeout="3s",
                              retry={"attempts": 8, "initial_wait": "0.2s", "max_wait": "1s", "total": "60s"})
        proxy.arm(12)
        result = run_cli(config, "run", "--incremental", "--json", env=password_env(snowflake_server))
        assert proxy.dropped == 12 and proxy.forwarded > 0
    # The connector's own retries gave up at least once, and the loader's retry carried on.
    assert re.search(r"checking orders's columns against snowflake: attempt \d of 8 failed", result.stderr), \
        result.stderr[-3000:]
    assert yaml.safe_load(result.stdout)["status"] == "committed"
    assert_snowflake_exact(snowflake_server, database, tmp_path / "p" / "landing")


def test_conflicting_target_column_fails_clearly_then_replays(
    tmp_path: Path, snowflake_server: dict[str, Any]
) -> None:
    database = new_database()
    config = _project(tmp_path / "p", snowflake_server, database)
    env = password_env(snowflake_server)
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1), env=env)
    # Someone created ORDERS by hand with the money column as text.
    query(snowflake_server, database,
          'CREATE TABLE "ORDERS" ("O_ORDERKEY" NUMBER(19,0), "O_TOTALPRICE" VARCHAR)')
    failed = run_cli(config, "run", "--incremental", check=False, env=env)
    assert failed.returncode == 1
    assert "ORDERS.O_TOTALPRICE is TEXT but the source now sends NUMBER(15,2)" in failed.stderr
    # terminal: not retried
    assert "ALTER the column" in failed.stderr and "attempt 1 of" not in failed.stderr
    assert run_json(config, "status", env=env)["sources"]["orders"]["checkpoint"] is None
    query(snowflake_server, database, 'DROP TABLE "ORDERS"')  # the fix the message names
    replay = run_json(config, "run", "--incremental", env=env)
    assert replay["replayed"] is True and replay["status"] == "committed"
    assert_snowflake_exact(snowflake_server, database, tmp_path / "p" / "landing")
    assert_warehouse_exact(tmp_path / "p" / "warehouse", tmp_path / "p" / "landing")


def _batch(run: int, rows: dict[str, list[Any]], schema: pa.Schema) -> TableBatch:
    window = Window(None, datetime(2024, 1, 2, tzinfo=UTC))
    return TableBatch("p", "items", run, pa.table(rows, schema=schema), ("id",), "updated_at", window,
                      replay=False)


def _sink(
    tmp_path: Path, server: dict[str, Any], database: str, monkeypatch: pytest.MonkeyPatch, **snowflake: Any
) -> SnowflakeSink:
    monkeypatch.setenv(PASSWORD_ENV, server["password"])
    raw = yaml.safe_load(write_config(tmp_path / "cfg", pipeline="p").read_text())
    raw["sinks"] = {"parquet": {"enabled": False}, "delta": {"enabled": False},
                    "snowflake": sink_settings(server, database, **snowflake)}
    raw["sinks"]["snowflake"]["password"] = (
        server["password"] if "private_key_file" not in snowflake and "private_key" not in snowflake
        else None)
    config = parse_config(raw, base_dir=tmp_path)
    return SnowflakeSink(config.sinks.snowflake, SinkContext(config.pipeline, config.warehouse))


BASE = pa.schema([("id", pa.int64()), ("updated_at", pa.timestamp("us", tz="UTC")),
                  ("price", pa.decimal128(15, 2)), ("region", pa.string())])
T1, T2 = datetime(2024, 1, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 2, tzinfo=UTC)


def test_new_source_column_is_added_nullable(
    tmp_path: Path, snowflake_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    database = new_database()
    sink = _sink(tmp_path, snowflake_server, database, monkeypatch)
    write_whole(sink, _batch(1, {"id": [1, 2], "updated_at": [T1, T1],
                          "price": [Decimal("1.10"), Decimal("2.20")],
                          "region": ["ASIA", "EUROPE"]}, BASE))
    wider = BASE.append(pa.field("discount", pa.decimal128(4, 2)))
    written = write_whole(sink, _batch(2, {"id": [2, 3], "updated_at": [T2, T2],
                                    "price": [Decimal("2.50"), Decimal("3.30")],
                                    "region": ["EUROPE", "ASIA"], "discount": [Decimal("0.05"), None]},
                                       wider))
    assert written.rows == 2 and written.regions == {"EUROPE": 1, "ASIA": 1}
    rows = query(snowflake_server, database, 'SELECT "ID", "PRICE", "DISCOUNT" FROM "ITEMS" ORDER BY "ID"')
    assert rows == [(1, Decimal("1.10"), None), (2, Decimal("2.50"), Decimal("0.05")),
                    (3, Decimal("3.30"), None)]
    types = query(snowflake_server, database,
                  "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE "
                  "FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME = 'ITEMS' AND COLUMN_NAME = 'DISCOUNT'")
    assert types == [("DISCOUNT", "NUMBER", 4, 2)]
    # The same run again: found in the ledger, nothing written twice.
    assert write_whole(sink, _batch(2, {"id": [2], "updated_at": [T2], "price": [Decimal("9.99")],
                                 "region": ["EUROPE"], "discount": [None]}, wider)).skipped


def _encrypted_key(path: Path, passphrase: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(passphrase))
    path.write_bytes(pem)
    return pem.decode()


def test_key_pair_authentication(tmp_path: Path, snowflake_server: dict[str, Any],
                                 monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The connector signs its login with our key (fakesnow accepts any signature, so this proves the
    key is read, decrypted and handed over, not that Snowflake would accept it); a wrong passphrase is a
    clear terminal error before any connection, without the passphrase in it."""
    database = new_database()
    pem = _encrypted_key(tmp_path / "rsa_key.p8", b"open-sesame")
    row = {"id": [1], "updated_at": [T1], "price": [Decimal("1.00")], "region": ["ASIA"]}
    by_file = _sink(tmp_path, snowflake_server, database, monkeypatch,
                    private_key_file=str(tmp_path / "rsa_key.p8"),
                    private_key_passphrase="open-sesame")
    assert write_whole(by_file, _batch(1, row, BASE)).rows == 1
    # Inline, as a CI secret often holds it: newlines written as \n.
    inline = _sink(tmp_path, snowflake_server, database, monkeypatch, private_key=pem.replace("\n", "\\n"),
                   private_key_passphrase="open-sesame")
    assert write_whole(inline, _batch(2, row, BASE)).rows == 1
    wrong = _sink(tmp_path, snowflake_server, database, monkeypatch,
                  private_key_file=str(tmp_path / "rsa_key.p8"),
                  private_key_passphrase="not-the-one")
    caplog.clear()
    started = time.monotonic()
    with pytest.raises(SinkRejected, match="private_key_passphrase") as refused:
        write_whole(wrong, _batch(3, row, BASE))
    assert "not-the-one" not in str(refused.value) and time.monotonic() - started < FAIL_FAST_S
    assert "attempt" not in caplog.text, "a wrong passphrase was retried"
    assert query(snowflake_server, database,
                 "SELECT RUN_NUMBER FROM LOADER_LEDGER ORDER BY 1") == [(1,), (2,)]


def test_key_pair_config_via_cli_keeps_secrets_out(tmp_path: Path, snowflake_server: dict[str, Any]) -> None:
    database = new_database()
    pem = _encrypted_key(tmp_path / "rsa_key.p8", b"open-sesame")
    settings = sink_settings(snowflake_server, database, password=None,
                             private_key="${SNOWFLAKE_PRIVATE_KEY}",
                             private_key_passphrase="${SNOWFLAKE_PRIVATE_KEY_PASSPHRASE}")
    config = write_config(tmp_path / "p", sinks={"parquet": {"enabled": True}, "delta": {"enabled": False},
                                                 "snowflake": settings})
    env = {"SNOWFLAKE_PRIVATE_KEY": pem, "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "open-sesame"}
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(1), env=env)
    ok = run_cli(config, "run", "--incremental", "--json", env=env)
    shown = run_cli(config, "validate-config", env=env)
    for result in (ok, shown):
        output = result.stdout + result.stderr
        assert ("open-sesame" not in output and "PRIVATE KEY" not in output
                and pem.splitlines()[1] not in output)
    assert yaml.safe_load(ok.stdout)["tables"]["orders"]["sinks"]["snowflake"]["rows"] > 0
