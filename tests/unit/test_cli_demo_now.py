"""`demo-data init/append --now` (loader.cli._demo_now) takes what backfill's times take: a plain date or
a date-time without a zone is UTC; one with an offset is converted to UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import pytest

from loader.cli import _demo_now


@pytest.mark.parametrize(("value", "moment"), [
    ("2026-12-06", datetime(2026, 12, 6, tzinfo=UTC)),
    ("2026-12-06T06:30:00", datetime(2026, 12, 6, 6, 30, tzinfo=UTC)),
    ("2026-12-06T06:30:00Z", datetime(2026, 12, 6, 6, 30, tzinfo=UTC)),
    ("2026-12-06T06:30:00+02:00", datetime(2026, 12, 6, 4, 30, tzinfo=UTC)),
])
def test_dates_and_times_without_a_zone_are_utc(value: str, moment: datetime) -> None:
    found = _demo_now(click.Context(click.Command("init")), click.Option(["--now"]), value)
    assert found == moment and found is not None and found.utcoffset() is not None


def test_no_value_is_the_current_time_and_nonsense_is_refused_naming_the_option() -> None:
    ctx, option = click.Context(click.Command("init")), click.Option(["--now"])
    assert _demo_now(ctx, option, None) is None
    with pytest.raises(click.BadParameter) as caught:
        _demo_now(ctx, option, "2026-13-06")
    assert "--now" in caught.value.format_message() or caught.value.param_hint == "--now"
