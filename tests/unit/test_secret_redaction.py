"""The one redaction (loader/redaction.py): secrets registered from wherever they come (URL user info,
URL query, substituted environment variables, config fields, the Pushgateway URL) and masked by value
and by pattern in any text; a YAML syntax error that names the line and column, never the line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from loader import redaction
from loader.config import load_config, parse_config
from loader.errors import ConfigError
from loader.observe import logs
from tests.support.cli import local_raw, write_raw

SECRET = "s3cr3t-PW-41"


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    redaction.clear()
    yield
    redaction.clear()




def test_user_info_password_is_masked_without_being_registered() -> None:
    assert redaction.redact(f"postgresql+psycopg://loader:{SECRET}@db:5432/loader") == \
        "postgresql+psycopg://loader:***@db:5432/loader"
    assert redaction.redact(f"http://user:{SECRET}@127.0.0.1:9091/: refused") == \
        "http://user:***@127.0.0.1:9091/: refused"
    # not user info: a port, a plain user, an S3 key holding @
    for text in ("postgresql://db:5432/loader", "postgresql://loader@db/loader", "s3://bucket/a@b/c",
                 "sqlite:///state/loader.db", "at 16:22:25 loader@db"):
        assert redaction.redact(text) == text


def test_secret_query_parameters_are_masked_without_being_registered() -> None:
    url = f"postgresql+psycopg:///loader?host=db&port=5432&password={SECRET}&connect_timeout=2"
    assert redaction.redact(url) == "postgresql+psycopg:///loader?host=db&port=5432&password=***&connect_timeout=2"
    assert redaction.redact(f"x?sslpassword={SECRET}&Token={SECRET}&api_key={SECRET}"
                            f"&pwd={SECRET}&key={SECRET}") == \
        "x?sslpassword=***&Token=***&api_key=***&pwd=***&key=***"
    assert redaction.redact(f"connect(password='{SECRET}')") == "connect(password=***)"
    # the sentence's punctuation stays; a value masked already is left as it is
    assert redaction.redact(f"(x?password={SECRET}). Next: x?password=***: 0") == \
        "(x?password=***). Next: x?password=***: 0"
    kept = "x?primary_key=o_orderkey&sslkey=/etc/client.key&token_count=4&private_key_file=/run/key.p8"
    assert redaction.redact(kept) == kept


def test_an_unparseable_url_is_masked() -> None:
    assert redaction.redact(f"state store URL 'postgresql//u:{SECRET}@db/loader' is not") == \
        "state store URL 'postgresql//u:***@db/loader' is not"
    assert redaction.redact(f"'u:{SECRET}@db/loader'") == "'u:***@db/loader'"
    assert redaction.redact(f"postgresql://u:{SECRET}@db:xx/loader") == "postgresql://u:***@db:xx/loader"


def test_url_secrets_finds_user_info_and_query_secrets() -> None:
    found = redaction.url_secrets(f"postgresql://u:{SECRET}1@db/x?host=h&password={SECRET}2&sslmode=require")
    assert set(found) == {f"{SECRET}1", f"{SECRET}2"}
    assert redaction.url_secrets("postgresql://u@db/x?host=h&sslmode=require") == []
    # no scheme: the pattern finds it
    assert redaction.url_secrets(f"postgresql//u:{SECRET}@db/x") == [SECRET]


def test_a_password_holding_at_is_masked_whole_and_its_tail_alone() -> None:
    """SQLAlchemy cuts `u:ab@<secret>@host` at the first @: the tail shows up as the host."""
    redaction.add_secrets(redaction.url_secrets(f"postgresql+psycopg://u:ab@{SECRET}@127.0.0.1:1/db"))
    assert redaction.redact(f"ab@{SECRET}") == "***"
    assert redaction.redact(f"failed to resolve host '{SECRET}@127.0.0.1'") == \
        "failed to resolve host '***@127.0.0.1'"
    # as SQLAlchemy renders it with hide_password: the user info runs to the last @ before the host
    assert redaction.redact(f"postgresql+psycopg://u:***@{SECRET}@127.0.0.1:1/db") == \
        "postgresql+psycopg://u:***@127.0.0.1:1/db"


def test_percent_encoded_and_short_values() -> None:
    redaction.add_secrets(["s3cr3t%40PW-41", "snow", None])
    assert redaction.redact("s3cr3t@PW-41 and s3cr3t%40PW-41") == "*** and ***"
    assert redaction.redact("snowflake") == "snowflake"  # shorter than MIN_SECRET_LENGTH: not masked


def test_values_substituted_from_secret_environment_variables_are_registered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADER_TEST_DB_PASSWORD", SECRET)
    monkeypatch.setenv("LOADER_TEST_HOST", "dbhost-public-name")
    raw = {**local_raw(), "state": {"url": "postgresql+psycopg://loader@${LOADER_TEST_HOST}/db?sslmode=require&"
                                        "application_name=${LOADER_TEST_DB_PASSWORD}"}}
    config = load_config(write_raw(tmp_path, raw))
    assert SECRET in config.state.url  # the config holds it; no output may show it
    assert redaction.redact(f"x {SECRET} y") == "x *** y"
    assert redaction.redact("dbhost-public-name") == "dbhost-public-name"  # not a secret-named variable


def test_config_secret_fields_and_urls_are_registered_before_validation(tmp_path: Path) -> None:
    raw = local_raw()
    raw["sinks"]["snowflake"] = {"enabled": False, "password": f"{SECRET}-sf", "private_key": f"{SECRET}-pem",
                                 "private_key_passphrase": f"{SECRET}-pp", "private_key_file": "/run/key.p8"}
    raw["metrics"] = {"pushgateway": f"http://loader:{SECRET}-pg@gateway:9091"}
    raw["state"] = {"url": f"postgresql+psycopg:///db?host=db&password={SECRET}-q"}
    config = parse_config(raw, base_dir=tmp_path)
    expected = {f"{SECRET}-sf", f"{SECRET}-pem", f"{SECRET}-pp", f"{SECRET}-pg", f"{SECRET}-q"}
    assert set(config.secrets()) == expected
    for value in expected:
        assert redaction.redact(value) == "***"
    assert redaction.redact("/run/key.p8 o_orderkey") == "/run/key.p8 o_orderkey"  # a path, a primary key
    redaction.clear()
    raw["sinks"]["snowflake"]["port"] = "not a port"  # invalid: registered all the same, before the check
    with pytest.raises(ConfigError):
        parse_config(raw, base_dir=tmp_path)
    assert redaction.redact(f"{SECRET}-sf") == "***"


@pytest.mark.parametrize(("text", "message"), [
    ("pipeline: p\nsinks:\n  snowflake:\n    password: s3cr3t-PW-41: x\n",
     "line 4, column 27: mapping values are not allowed here"),
    ("pipeline: p\nsinks:\n  snowflake:\n    password: \"s3cr3t-PW-41\n",
     "line 5, column 1: found unexpected end of stream "
     "(while scanning a quoted scalar begun at line 4, column 15)"),
    ("pipeline: p\n\tpassword: s3cr3t-PW-41\n",
     "line 2, column 1: found character '\\t' that cannot start any token "
     "(while scanning for the next token)"),
    ("state:\n  url: postgresql://u:s3cr3t-PW-41@db/x\n  bad: [open, s3cr3t-PW-41: 1\nother: 1\n",
     "line 4, column 6: expected ',' or ']', but got ':' "
     "(while parsing a flow sequence begun at line 3, column 8)"),
])
def test_a_yaml_syntax_error_names_line_and_column_never_the_line(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "loader.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: not valid YAML: {message}"
    assert SECRET not in str(caught.value)


def test_redact_data_masks_every_string_of_a_payload() -> None:
    redaction.add_secrets([SECRET])
    payload = {"state": f"postgresql://u:{SECRET}@db/x",
               "runs": [{"error": f"login failed: {SECRET}"}, 3, None],
               SECRET: True}
    assert redaction.redact_data(payload) == {"state": "postgresql://u:***@db/x",
                                              "runs": [{"error": "login failed: ***"}, 3, None], "***": True}


def test_json_output_masks_a_secret_json_would_escape(capsys: pytest.CaptureFixture[str]) -> None:
    from loader.cli import _emit

    secret = 'pa"ss\\word-41'
    redaction.add_secrets([secret])
    _emit({"detail": f"login failed with {secret}", "url": f"http://u:{SECRET}@gw:9091"})
    out = capsys.readouterr().out
    assert json.loads(out) == {"detail": "login failed with ***", "url": "http://u:***@gw:9091"}
    assert SECRET not in out and json.dumps(secret)[1:-1] not in out


def test_log_lines_mask_urls_nobody_registered() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        logs.configure("INFO", "json", out)
        logging.getLogger("loader.observe.metrics").warning(
            "could not publish the metrics to %s: %s", f"http://loader:{SECRET}@gw:9091/", "refused")
        try:
            raise RuntimeError(f"connect to postgresql:///db?host=h&password={SECRET} failed")
        except RuntimeError:
            logging.getLogger("loader.x").exception("failed")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["message"] == "could not publish the metrics to http://loader:***@gw:9091/: refused"
    assert "postgresql:///db?host=h&password=*** failed" in lines[1]["error"]
    assert SECRET not in out.getvalue()


@pytest.mark.parametrize(("name", "secret"), [
    ("password", True), ("sslpassword", True), ("passwd", True), ("pwd", True), ("key", True),
    ("token", True),
    ("access_token", True), ("client_secret", True), ("api_key", True), ("private_key", True),
    ("private_key_passphrase", True), ("credentials", True),
    ("primary_key", False), ("private_key_file", False), ("keyword", False), ("host", False), ("user", False),
])
def test_secret_names(name: str, secret: bool) -> None:
    assert redaction.is_secret_name(name) is secret


@pytest.mark.parametrize(("name", "secret"), [
    ("PGPASSWORD", True), ("SNOWFLAKE_PRIVATE_KEY", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("VAULT_TOKEN", True),
    ("DB_CREDENTIAL", True), ("KEY_PASSPHRASE", True), ("PGHOST", False), ("LOADER_CONFIG", False),
])
def test_secret_environment_names(name: str, secret: bool) -> None:
    assert redaction.is_secret_env(name) is secret
