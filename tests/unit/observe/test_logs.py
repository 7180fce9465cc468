"""Log lines (loader/observe/logs.py): JSON lines with pipeline and run, text for terminals, the run carried
into threads started with in_context (the pipeline into every thread), secrets cut out of messages and
tracebacks whichever logger writes them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from loader.observe import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    logs._SECRETS.clear()  # an earlier test in this process may have run the loader in-process
    logs.set_pipeline(None)
    logs.set_run(None)
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logs._SECRETS.clear()
    logs.set_pipeline(None)
    logs.set_run(None)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_pipeline_and_run_also_from_threads(stream: io.StringIO) -> None:
    assert logs.configure("INFO", "json", stream) == "json"
    logs.set_pipeline("p1")
    logging.getLogger("loader.x").info("before the run %d", 1)
    with logs.run_context(7):
        logging.getLogger("loader.x").warning("inside")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(logs.in_context(lambda i: logging.getLogger("loader.y").info("thread %d", i)),
                          range(2)))
        with ThreadPoolExecutor(1) as pool:  # without in_context a thread starts with an empty context
            pool.submit(lambda: logging.getLogger("loader.y").info("bare thread")).result()
    lines = _lines(stream)
    assert [(line["message"], line["pipeline"], line["run"]) for line in lines] == [
        ("before the run 1", "p1", None), ("inside", "p1", 7), ("thread 0", "p1", 7), ("thread 1", "p1", 7),
        ("bare thread", "p1", None),
    ]
    assert (lines[1]["level"] == "WARNING" and lines[1]["logger"] == "loader.x"
            and str(lines[1]["ts"]).endswith("+00:00"))


def test_text_format_names_pipeline_and_run(stream: io.StringIO) -> None:
    logs.configure("INFO", "text", stream)
    logs.set_pipeline("p1")
    logs.set_run(3)
    logging.getLogger("loader.x").info("hello")
    assert " INFO loader.x [p1 run 3]: hello" in stream.getvalue()


def test_auto_is_text_on_a_terminal_and_json_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    assert logs.resolve_format("auto", Terminal()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    monkeypatch.setenv(logs.FORMAT_ENV, "text")
    assert logs.resolve_format(None, io.StringIO()) == "text"
    with pytest.raises(ValueError, match="use auto, text or json"):
        logs.resolve_format("yaml", io.StringIO())


def test_secrets_never_reach_a_line(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-SECRET-value-123")
    logs.configure("DEBUG", "json", stream)
    logs.add_secrets(["hunter2-Snowflake", None, "snow"])  # "snow": too short to mask safely
    # Not the Snowflake connector's logger: once imported, the connector masks "password=..." itself.
    third_party = logging.getLogger("urllib3.connectionpool")
    third_party.debug("connect(password=%s)", "hunter2-Snowflake")
    try:
        raise RuntimeError("login failed for hunter2-Snowflake with aws-SECRET-value-123")
    except RuntimeError:
        logging.getLogger("loader.x").exception("failed")
    text = stream.getvalue()
    assert "hunter2-Snowflake" not in text and "aws-SECRET-value-123" not in text, text
    lines = _lines(stream)
    assert lines[0]["message"] == "connect(password=***)", lines[0]
    assert "login failed for *** with ***" in str(lines[1]["error"])
    logging.getLogger("loader.x").info("snowflake stays")
    assert _lines(stream)[-1]["message"] == "snowflake stays"
