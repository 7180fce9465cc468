"""Log lines for people and for machines.

- `text` (a terminal): `time LEVEL logger [pipeline run N]: message`.
- `json` (one object per line: `ts`, `level`, `logger`, `message`, `pipeline`, `run`, and `error` with
  the traceback when there is one): for log shippers. `auto`, the default, picks text when stderr is a
  terminal and JSON otherwise (cron, containers, CI). `--log-format` or LOADER_LOG_FORMAT choose.

Every line carries the pipeline (one per process) and the run number (`run` is null before the run is
recorded, e.g. planning, or when nothing was new). The run lives in a context variable, set by the
runner (a backfill runs chunks side by side, each its own run) and copied into the threads it starts
(`in_context`). Secrets (the config's passwords and keys, the passwords of its URLs, AWS secret keys
from the environment) are replaced by `***` in every line, whichever library logs them: the one
redaction of loader/redaction.py.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from loader import redaction
from loader.redaction import MIN_SECRET_LENGTH, add_secrets, redact

__all__ = ["MIN_SECRET_LENGTH", "add_secrets", "configure", "in_context", "redact", "run_context",
           "set_pipeline", "set_run"]

LogFormat = Literal["auto", "text", "json"]
FORMAT_ENV = "LOADER_LOG_FORMAT"
T = TypeVar("T")

_pipeline: str | None = None  # one per process: every thread's lines carry it, library threads' too
_run: contextvars.ContextVar[int | None] = contextvars.ContextVar("loader_run", default=None)
_SECRETS = redaction._REGISTERED  # the one registry of secret values (loader/redaction.py)


def set_pipeline(name: str | None) -> None:
    global _pipeline
    _pipeline = name


def set_run(number: int | None) -> None:
    _run.set(number)


@contextmanager
def run_context(number: int | None) -> Iterator[None]:
    """Lines logged inside carry run `number` (a backfill chunk's, in its own thread)."""
    token = _run.set(number)
    try:
        yield
    finally:
        _run.reset(token)


def in_context(func: Callable[..., T]) -> Callable[..., T]:
    """`func` bound to the caller's run, for a thread pool (threads start with an empty context
    otherwise, and their lines would lose the run number)."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.copy().run(func, *args, **kwargs)


class _Context(logging.Filter):
    """Adds the pipeline and run to every record and cuts secrets out of its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.pipeline = _pipeline
        record.run = _run.get()
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: the handler reports it when it formats
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pipeline": getattr(record, "pipeline", None),
            "run": getattr(record, "run", None),
        }
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(where)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        pipeline, run = getattr(record, "pipeline", None), getattr(record, "run", None)
        record.where = f" [{pipeline}{f' run {run}' if run is not None else ''}]" if pipeline else ""
        text = super().format(record)
        return redact(text) if record.exc_info else text


def resolve_format(requested: str | None, stream: Any = None) -> Literal["text", "json"]:
    chosen = (requested or os.environ.get(FORMAT_ENV) or "auto").lower()
    if chosen not in ("auto", "text", "json"):
        raise ValueError(f"log format {chosen!r}: use auto, text or json ({FORMAT_ENV} or --log-format)")
    if chosen == "auto":
        stream = stream or sys.stderr
        return "text" if hasattr(stream, "isatty") and stream.isatty() else "json"
    return chosen  # type: ignore[return-value]


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now: a progress bar redirects it to print lines above itself."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str, log_format: str | None = None, stream: Any = None) -> Literal["text", "json"]:
    """Root logging to `stream` (default: the current stderr) in the chosen format; returns the format."""
    chosen = resolve_format(log_format, stream or sys.stderr)
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.addFilter(_Context())
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    redaction.add_environment_secrets()
    return chosen
