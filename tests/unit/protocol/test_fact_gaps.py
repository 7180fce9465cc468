"""The pure parts of loader/protocol/fact_gaps.py: whether committed backfills cover a sink's gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loader.protocol.fact_gaps import covered
from state import FactGap, RunRecord, Window

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _backfill(lower: datetime, upper: datetime, *, sinks: list[str], status: str = "committed",
              source: str = "orders") -> RunRecord:
    return RunRecord("p", 1, "backfill", status, {source: Window(lower, upper)}, {}, T0,  # type: ignore[arg-type]
                     metrics={"backfill": {"sinks": sinks}})


def test_a_gap_is_covered_by_committed_backfills_into_its_sink_only() -> None:
    gap = FactGap("parquet", "orders", T0, T0 + 2 * DAY, 1, 3, T0)
    chunks = [_backfill(T0 + DAY, T0 + 2 * DAY, sinks=["parquet"]),
              _backfill(T0, T0 + DAY, sinks=["parquet"])]
    assert covered(gap, chunks)
    assert not covered(gap, chunks[:1])  # the first day is missing
    assert not covered(gap, [_backfill(T0, T0 + 2 * DAY, sinks=["delta"])])
    assert not covered(gap, [_backfill(T0, T0 + 2 * DAY, sinks=["parquet"], status="planned")])
    assert not covered(gap, [_backfill(T0, T0 + 2 * DAY, sinks=["parquet"], source="lineitem")])
    assert covered(gap, [_backfill(T0 - DAY, T0 + 3 * DAY, sinks=["delta", "parquet"])])
