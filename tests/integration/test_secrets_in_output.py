"""Secrets never reach the output of the real CLI (issue #27, item 3), one test per leak that was: a
password as a URL query parameter (`status`, `status --json`, `doctor`), a state URL that does not parse
(the `error:` line), a `${PGPASSWORD}` holding `@`, a Pushgateway URL with `user:password@` (the
warning), a YAML syntax error (the offending line). Each asserts the secret appears nowhere in stdout or
stderr and that the URL, where it is shown, shows `***`. The PostgreSQL URLs point at 127.0.0.1:1:
refused at once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import FAIL_FAST_S, run_cli, write_config

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-PW-41"
UNREACHABLE_QUERY_URL = f"postgresql+psycopg:///loader?host=127.0.0.1&port=1&password={SECRET}&connect_timeout=2"
MASKED_QUERY_URL = "postgresql+psycopg:///loader?connect_timeout=2&host=127.0.0.1&password=***&port=1"


def _cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run_cli(config, *args, check=False, env=env, timeout=FAIL_FAST_S)
    assert SECRET not in result.stdout and SECRET not in result.stderr, (result.stdout, result.stderr)
    return result


def _doctor_state_check(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    [check] = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "state store"]
    return check


def test_a_query_password_is_masked_by_status_and_status_json(tmp_path: Path) -> None:
    """A reachable state store (SQLite ignores the parameter): the URL is shown, its password masked."""
    config = write_config(tmp_path / "p", state={"url": f"sqlite:///state/loader.db?password={SECRET}"})
    shown = f"sqlite:///{tmp_path / 'p' / 'state' / 'loader.db'}?password=***"
    text = _cli(config, "status")
    assert text.returncode == 0, text.stderr
    assert f"tpch_local ({shown})" in text.stdout
    as_json = _cli(config, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["state"] == shown
    doctor = _cli(config, "doctor", "--json")
    # status and doctor only read: the store is not made yet, and the detail still names it masked
    assert _doctor_state_check(doctor)["detail"] == f"{shown}: not created yet: the first run creates it"


def test_a_query_password_is_masked_when_postgres_is_unreachable(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p", state={"url": UNREACHABLE_QUERY_URL})
    for args in (("status",), ("status", "--json")):
        result = _cli(config, *args)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith(
            f"error: the state database {MASKED_QUERY_URL} could not be used: "), result.stderr
    doctor = _cli(config, "doctor", "--json")
    assert doctor.returncode == 1
    check = _doctor_state_check(doctor)
    assert check["status"] == "failed"
    assert str(check["detail"]).startswith(f"StateUnavailable: the state database {MASKED_QUERY_URL} "
                                           "could not be used: "), check
    text = _cli(config, "doctor")
    assert text.returncode == 1
    assert f"StateUnavailable: the state database {MASKED_QUERY_URL}" in text.stdout


@pytest.mark.parametrize(("url", "shown"), [
    # no colon after the scheme
    (f"postgresql//loader:{SECRET}@db/loader", "postgresql//loader:***@db/loader"),
    # a port not a number
    (f"postgresql://loader:{SECRET}@db:xx/loader", "postgresql://loader:***@db:xx/loader"),
])
def test_an_unparseable_state_url_is_masked_in_the_error_line(tmp_path: Path, url: str, shown: str) -> None:
    config = write_config(tmp_path / "p", state={"url": url})
    result = _cli(config, "status")
    assert result.returncode == 2  # a configuration error (it was a traceback for the port)
    assert result.stdout == ""
    assert result.stderr == (
        f"error: state store URL '{shown}' is not a database URL; use sqlite:///path/to/state.db or "
        "postgresql+psycopg://user@host:port/db (special characters in the user or password percent-encoded, "
        "e.g. @ as %40)\n")


def test_a_pgpassword_holding_at_is_masked_whole(tmp_path: Path) -> None:
    """SQLAlchemy cuts the password at its first @ and takes the rest for the host: that tail was shown."""
    config = write_config(tmp_path / "p", state={"url": "postgresql+psycopg://loader:${PGPASSWORD}@127.0.0.1:1/db"
                                                        "?connect_timeout=2"})
    env = {"PGPASSWORD": f"pw@{SECRET}"}
    status = _cli(config, "status", env=env)
    assert status.returncode == 1
    assert status.stderr.startswith("error: the state database postgresql+psycopg://loader:***@127.0.0.1:1/db"
                                    "?connect_timeout=2 could not be used: "), status.stderr
    doctor = _cli(config, "doctor", "--json", env=env)
    assert str(_doctor_state_check(doctor)["detail"]).startswith(
        "StateUnavailable: the state database "
        "postgresql+psycopg://loader:***@127.0.0.1:1/db?connect_timeout=2 ")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_pushgateway_password_is_masked_in_the_warning(tmp_path: Path, log_format: str) -> None:
    """No landing zone: the run fails at once, and the metrics are published (and fail) all the same."""
    config = write_config(tmp_path / "p", metrics={"pushgateway": f"http://loader:{SECRET}@127.0.0.1:1/",
                                                   "push_timeout": "2s"})
    result = _cli(config, "--log-format", log_format, "run", "--incremental")
    assert result.returncode == 1
    warnings = [line for line in result.stderr.splitlines() if "could not publish the metrics" in line]
    assert len(warnings) == 1, result.stderr
    assert "could not publish the metrics to http://loader:***@127.0.0.1:1/: " in warnings[0]


def test_a_yaml_syntax_error_never_echoes_the_line(tmp_path: Path) -> None:
    config = tmp_path / "loader.yaml"
    config.write_text(f"pipeline: p\nsinks:\n  snowflake:\n    password: {SECRET}: x\n")
    result = _cli(config, "validate-config")
    assert result.returncode == 2
    assert result.stderr == (f"error: {config}: not valid YAML: line 4, column 27: "
                             "mapping values are not allowed here\n")
