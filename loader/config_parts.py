"""What every config block is made of: frozen models that refuse unknown keys, durations, the retry
policy, and how a relative path joins its root. Below loader/config.py so that each sink's own config
block (loader/sinks/<name>/config.py) can be built from them without importing the whole config."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> timedelta:
    """'90s', '30m', '1h', '1d', '1.5h' or a number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 30m, 1h, 1d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def is_remote(path: str) -> bool:
    return "://" in path


def join_path(root: str, path: str) -> str:
    """`path` under `root`, unless it is absolute or a URI of its own."""
    if is_remote(path) or os.path.isabs(path):
        return path
    return root.rstrip("/") + "/" + path


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryConfig(Frozen):
    """Retries of transient failures: exponential backoff with jitter, bounded in attempts and time."""

    attempts: int = Field(default=5, ge=1)
    initial_wait: timedelta = timedelta(seconds=0.5)
    max_wait: timedelta = timedelta(seconds=10)
    total: timedelta = timedelta(minutes=2)

    _durations = field_validator("initial_wait", "max_wait", "total", mode="before")(parse_duration)


class SinkSettings(Frozen):
    """What every sink's config block (`sinks.<name>`) has; each sink's folder adds its own keys."""

    enabled: bool = True
    retry: RetryConfig = RetryConfig()
