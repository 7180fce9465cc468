"""The Snowflake emulator the tests use: fakesnow's server on 127.0.0.1 (started in this process, in a
thread), talked to by the real snowflake-connector-python over HTTP, as the loader talks to Snowflake.

`abort_detached_transactions()` does what Snowflake does by itself to a transaction whose client died
(it aborts it once it blocks another transaction and has been idle 5 minutes): fakesnow keeps such a
transaction open forever, so a test that SIGKILLs a loader inside its Snowflake transaction calls this
before the replay, as the 5 minutes passing would in Snowflake.

What the emulator holds is read by tests/support/readers.py (`read_snowflake`, `snowflake_rows`) and
compared with the expected results by tests/support/warehouse.py (`assert_snowflake_exact`)."""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

PASSWORD_ENV = "SNOWFLAKE_PASSWORD"


@contextlib.contextmanager
def emulator() -> Iterator[dict[str, Any]]:
    """Start fakesnow's server; the connection settings (account, user, password, host, port, protocol)."""
    import fakesnow
    import fakesnow.transforms.stage as stage

    try:
        with fakesnow.server() as kwargs:
            yield kwargs
    finally:  # fakesnow makes its stage folder in /tmp on import and never removes it
        shutil.rmtree(stage.LOCAL_BUCKET_PATH, ignore_errors=True)


class _CountedSessions(dict):  # type: ignore[type-arg]
    """fakesnow's session table, counting the sessions opened (a login each)."""

    logins = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        self.logins += 1
        super().__setitem__(key, value)


@contextlib.contextmanager
def counted_logins() -> Iterator[_CountedSessions]:
    """While inside, the emulator's logins are counted (`.logins`); the sessions open stay open."""
    import fakesnow.server

    before = fakesnow.server.sessions
    counted = _CountedSessions(before)
    fakesnow.server.sessions = counted
    try:
        yield counted
    finally:
        before.clear()
        before.update(counted)
        fakesnow.server.sessions = before


def new_database() -> str:
    """A fresh database name: each test gets its own, so tests sharing one server never see each other."""
    return f"DB_{uuid.uuid4().hex[:8].upper()}"


def sink_settings(server: dict[str, Any], database: str, **overrides: Any) -> dict[str, Any]:
    """`sinks.snowflake` of a loader config pointing at the emulator; the password comes from the
    environment (`password_env(server)`), as it must in a real config."""
    settings = {
        "enabled": True, "account": server["account"], "user": server["user"],
        "password": "${SNOWFLAKE_PASSWORD}",
        "database": database, "schema": "S", "host": server["host"], "port": server["port"],
        "protocol": server["protocol"], "login_timeout": "10s", "network_timeout": "30s",
        "retry": {"attempts": 3, "initial_wait": "0.1s", "total": "20s"},
    }
    settings.update(overrides)
    return settings


def password_env(server: dict[str, Any]) -> dict[str, str]:
    return {PASSWORD_ENV: server["password"]}


def connect(server: dict[str, Any], database: str) -> Any:
    """A connector session on `database`.S (created by the loader's first load, or here)."""
    import snowflake.connector

    options = {k: v for k, v in server.items() if k != "network_timeout"}
    conn = snowflake.connector.connect(**options, database=database, schema="S")
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.S")
    cur.execute(f"USE SCHEMA {database}.S")
    return conn


def query(server: dict[str, Any], database: str, sql: str) -> list[tuple]:
    conn = connect(server, database)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return [tuple(row) for row in cur.fetchall()]
    finally:
        conn.close()


def abort_detached_transactions() -> int:
    """Roll back every emulator session's open transaction (call only when no loader is running);
    how many there were. Without an emulator started in this process there is none to look at, and
    importing fakesnow would make its stage folder in the temp folder, which nothing then removes."""
    import sys

    if "fakesnow.server" not in sys.modules:
        return 0
    import duckdb
    import fakesnow.server

    aborted = 0
    for session in list(fakesnow.server.sessions.values()):
        if not getattr(session, "_in_transaction", False):
            continue
        deadline = time.monotonic() + 30
        while True:  # a statement the dead client sent may still be running server-side: let it finish
            try:
                session._duck_conn.rollback()
                break
            except duckdb.ResourceInUseException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        session._in_transaction = False
        aborted += 1
    return aborted
