"""The demo landing zone's clock in the tests: `demo-data init` and `append` (CLI `--now`, Python `now=`)
at a pinned time, so the zones the tests expect stay as they are whatever day the suite runs: ingest
days from 2024-01-01 (DEMO_START), whole UTC days, one folder per batch, each append a whole new day
after the last ingest day. The loader itself still runs on the real clock: the zone is old history to it
(no safety lag or future cursor in play), as the tests assume.

A test about the real clock (lag, the newest cursor near now) leaves `--now` out instead."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import yaml

from loader.demo.generator import read_demo_state

DEMO_START = datetime(2024, 1, 1, tzinfo=UTC)  # the first ingest day of a pinned zone, midnight UTC


def init_now(days: int = 30) -> datetime:
    """The `now` for `init` whose `days` ingest days are DEMO_START's and the days after it, whole
    calendar days: midnight after the last one."""
    return DEMO_START + timedelta(days=days)


def append_now(landing: Path) -> datetime:
    """The `now` for the next `append` on the local zone at `landing`: midnight at the end of the day
    after its last ingest day, so the batch fills that whole day, in a folder of its own."""
    last = read_demo_state(landing).last_ingest_date
    return datetime.combine(last + timedelta(days=2), time(), UTC)


def landing_of(config: Path) -> Path:
    """The local landing zone a config file names (relative to the file's folder, as the loader reads it)."""
    raw = yaml.safe_load(Path(config).read_text())["landing_zone"]
    if "://" in raw:
        raise ValueError(f"{config} has a remote landing zone ({raw}): pass --now yourself "
                         "(init_now(days) + k days)")
    return Path(config).parent / raw


def init_args(days: int) -> tuple[str, ...]:
    """`--days D --now <init_now(D)>` for `loader demo-data init`."""
    return ("--days", str(days), "--now", init_now(days).isoformat())


def append_args(config: Path) -> tuple[str, ...]:
    """`--now <append_now>` for the next `loader demo-data append` on the local landing zone of `config`."""
    return ("--now", append_now(landing_of(config)).isoformat())
