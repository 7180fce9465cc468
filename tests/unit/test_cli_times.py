"""The times `loader backfill` takes (loader.cli._instant): ISO dates and date-times (UTC when no zone
is given), and times back from now, rounded down to a whole chunk so the same command names the same
window (and resumes it) for the whole of a chunk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from loader.cli import _instant

NOW = datetime(2026, 12, 7, 15, 42, 10, 123456, tzinfo=UTC)


def test_iso_dates_and_times_are_utc_unless_zoned() -> None:
    assert _instant("2024-01-05", "--start") == datetime(2024, 1, 5, tzinfo=UTC)
    assert _instant("2024-01-05T06:00:00+02:00", "--start") == datetime(2024, 1, 5, 4, tzinfo=UTC)


def test_times_back_from_now_round_down_to_the_chunk() -> None:
    day, hours = timedelta(days=1), timedelta(hours=6)
    assert _instant("-3d", "--start", grain=day, now=NOW) == datetime(2026, 12, 4, tzinfo=UTC)
    assert _instant("now", "--end", grain=day, now=NOW) == datetime(2026, 12, 7, tzinfo=UTC)
    assert _instant("-36h", "--start", grain=hours, now=NOW) == datetime(2026, 12, 6, 0, tzinfo=UTC)
    assert _instant("-90m", "--start", now=NOW) == NOW - timedelta(minutes=90)  # no chunk: exact


def test_the_same_command_later_in_the_chunk_names_the_same_window() -> None:
    later = NOW + timedelta(hours=8)  # still 2026-12-07
    assert _instant("-3d", "--start", grain=timedelta(days=1), now=later) == \
        _instant("-3d", "--start", grain=timedelta(days=1), now=NOW)


@pytest.mark.parametrize("value", ["yesterday", "-3 fortnights", "2024-13-01"])
def test_what_is_neither_is_refused_naming_both_forms(value: str) -> None:
    with pytest.raises(click.BadParameter, match="neither an ISO 8601 date or time .* nor a time back"):
        _instant(value, "--start", now=NOW)
