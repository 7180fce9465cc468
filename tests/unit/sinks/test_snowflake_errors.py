"""Connector errors classified at the Snowflake sink's boundary, with the real connector's exception
classes: what is retried (network, HTTP 5xx, timeouts, lost sessions) and what fails the run at once
(SQL compilation, permissions, authentication), each message naming the object and keeping secrets out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loader.config import parse_config
from loader.errors import SinkRejected, SinkUnavailable, is_transient
from loader.sinks.base import SinkContext
from loader.sinks.snowflake.connection import convert
from loader.sinks.snowflake.sink import SnowflakeSink
from tests.support.cli import write_config

errors = pytest.importorskip("snowflake.connector.errors")
SECRET = "hunter2-do-not-print"


@pytest.fixture
def sink(tmp_path: Path) -> SnowflakeSink:
    raw = yaml.safe_load(write_config(tmp_path).read_text())
    raw["sinks"]["snowflake"] = {"enabled": True, "account": "myorg-acct", "user": "LOADER",
                                 "password": SECRET,
                                 "database": "ANALYTICS", "schema": "TPCH"}
    config = parse_config(raw, base_dir=tmp_path)
    return SnowflakeSink(config.sinks.snowflake, SinkContext(config.pipeline, config.warehouse))


@pytest.mark.parametrize("error", [
    errors.OperationalError(msg="Could not connect to Snowflake backend after 2 attempt(s).", errno=250001),
    errors.InterfaceError(msg="Connection reset by peer", errno=250003),
    errors.ServiceUnavailableError(msg="HTTP 503: Service Unavailable"),
    errors.InternalServerError(msg="HTTP 500: Internal Server Error"),
    errors.GatewayTimeoutError(msg="HTTP 504: Gateway Timeout"),
    errors.RequestTimeoutError(msg="HTTP 408: Request Timeout"),
    errors.OperationalError(msg="Session no longer exists. New login required to access the service.",
                            errno=390111),
], ids=lambda e: type(e).__name__)
def test_network_and_server_faults_are_transient(sink: SnowflakeSink, error: Exception) -> None:
    converted = convert(sink.settings, error, doing="stage of orders in")
    assert isinstance(converted, SinkUnavailable) and is_transient(converted)
    assert "Snowflake myorg-acct/ANALYTICS.TPCH" in str(converted)


@pytest.mark.parametrize(("error", "says"), [
    (errors.ProgrammingError(msg="SQL compilation error: Object 'ANALYTICS.TPCH.ORDERS' "
                                 "does not exist or not authorized.",
                             errno=2003, sqlstate="42S02"), "may use the database"),
    (errors.ProgrammingError(msg="Insufficient privileges to operate on schema 'TPCH'", errno=3001,
                             sqlstate="42501"),
     "may use the database"),
    (errors.DatabaseError(msg=f"Incorrect username or password was specified. ({SECRET})", errno=390100),
     "authentication refused"),
    (errors.ProgrammingError(msg="JWT token is invalid.", errno=390144), "authentication refused"),
    (errors.ProgrammingError(msg="No active warehouse selected in the current session.", errno=606),
     "may use the database, schema and warehouse"),
], ids=["missing-object", "privileges", "password", "key-pair", "warehouse"])
def test_sql_permission_and_auth_errors_are_terminal(
        sink: SnowflakeSink, error: Exception, says: str) -> None:
    converted = convert(sink.settings, error, doing="connecting to")
    assert isinstance(converted, SinkRejected) and not is_transient(converted)
    assert says in str(converted) and "Snowflake myorg-acct/ANALYTICS.TPCH" in str(converted)
    assert SECRET not in str(converted)
