"""Immutable values the state store hands out, and the one timestamp format it stores.

Timestamps are stored as fixed-width ISO-8601 strings in UTC with microseconds, so that string order is
time order and round-trips are exact on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

RunMode = Literal["incremental", "backfill"]
RunStatus = Literal["planned", "committed", "failed"]
RUN_MODES: tuple[str, ...] = get_args(RunMode)
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def to_iso(value: datetime) -> str:
    """'2024-01-03T10:00:00.123456+00:00'. Naive datetimes are refused: their zone would be a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no time zone; pass a timezone-aware (UTC) datetime")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def from_iso(text: str) -> datetime:
    """Inverse of `to_iso`; raises ValueError on anything else, so callers can report corruption."""
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO-8601 string, found {text!r}")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    to_iso(value)  # validates awareness
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """The half-open cursor window (lower, upper] of one source; lower None means from the beginning."""

    lower: datetime | None
    upper: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "upper", _utc(self.upper))
        if self.lower is not None:
            object.__setattr__(self, "lower", _utc(self.lower))
            if self.lower > self.upper:
                raise ValueError(f"window lower bound {self.lower} is after its upper bound {self.upper}")

    def to_json(self) -> dict[str, str | None]:
        return {"lower": None if self.lower is None else to_iso(self.lower), "upper": to_iso(self.upper)}

    @classmethod
    def from_json(cls, data: Any) -> Window:
        if not isinstance(data, dict) or set(data) != {"lower", "upper"}:
            raise ValueError(f"a window is {{'lower': ..., 'upper': ...}}, found {data!r}")
        lower = data["lower"]
        return cls(lower=None if lower is None else from_iso(lower), upper=from_iso(data["upper"]))


@dataclass(frozen=True)
class Checkpoint:
    """How far one source of a pipeline has been loaded, and by which run."""

    source: str
    cursor: datetime
    run_number: int
    updated_at: datetime


@dataclass(frozen=True)
class RunRecord:
    """One row of the run ledger. `base_checkpoints` holds, per source, the run number of the checkpoint
    the plan was made from (None: no checkpoint yet); committing compares against it."""

    pipeline: str
    run_number: int
    mode: RunMode
    status: RunStatus
    windows: dict[str, Window]
    base_checkpoints: dict[str, int | None]
    started_at: datetime
    finished_at: datetime | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    # The exact input recorded before any write (see loader/landing/plans.py, RunPlan.to_input); None for
    # runs recorded before the state schema's version 2, which replay by their windows.
    inputs: dict[str, Any] | None = None


@dataclass(frozen=True)
class LeaseInfo:
    """Who runs a pipeline right now, until when."""

    pipeline: str
    holder: str
    acquired_at: datetime
    expires_at: datetime

    def expired(self, at: datetime) -> bool:
        return self.expires_at < at


#: The sink of a dimension load recorded before loads were kept per sink (state schema 5): it went to the
#: sinks enabled then, which are not known. A sink holding the table counts as loaded by it; one without
#: the table, as never loaded.
ALL_SINKS = "*"


@dataclass(frozen=True)
class DimensionLoad:
    """The last load of a dimension table to a sink: the files' fingerprint, the newest change cursor
    loaded (change files only), when, and what it changed (`sinks`: per sink, opened, closed, ...).
    `sink` is ALL_SINKS for a load recorded before loads were kept per sink."""

    dimension: str
    fingerprint: str
    cursor: datetime | None
    loaded_at: datetime
    changes: dict[str, Any] = field(default_factory=dict)
    sink: str = ALL_SINKS


@dataclass(frozen=True)
class FactGap:
    """Facts a sink lacks: committed incremental runs `first_run`..`last_run` loaded `source` over the
    cursor window (start, end] while the sink was not enabled. Filled by a backfill of that window into
    the sink (the ledger's committed backfill runs say whether one covered it)."""

    sink: str
    source: str
    start: datetime
    end: datetime
    first_run: int
    last_run: int
    detected_at: datetime


@dataclass(frozen=True)
class LookupVersion:
    """A kept version of the dimension files' prepared lookups: whether they are kept whole, and the
    version whose lookups its changes start from (None: no changes kept)."""

    fingerprint: str
    created_at: datetime
    whole: bool
    base: str | None
