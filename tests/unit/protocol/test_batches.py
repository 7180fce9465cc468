"""Cutting a plan into batches (loader/protocol/batches.py), on plans made by hand from row-group statistics:
windows contiguous per source and ending at each source's upper bound, no batch over the budget, the
budget raised to a row group, a heavy single cursor value a batch of its own, shared boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loader.landing.plans import FilePlan, RunPlan, SourcePlan
from loader.protocol.batches import cut_into_batches
from loader.storage import locate
from state import Window

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _source(name: str, groups: list[tuple[int, datetime | None, datetime | None]], *,
            lower: datetime | None = None, upper: datetime | None = None, per_file: int = 4) -> SourcePlan:
    """A source whose files hold `groups` (rows, least cursor, greatest cursor), `per_file` a file."""
    files = []
    for start in range(0, len(groups), per_file):
        chunk = groups[start:start + per_file]
        stats = tuple((i, rows, low, high) for i, (rows, low, high) in enumerate(chunk))
        files.append(FilePlan(f"{name}/part-{start}.parquet", tuple(s[0] for s in stats),
                              sum(s[1] for s in stats), 1000, stats, "2024-01-01T00:00:00+00:00"))
    top = upper or max(g[2] for g in groups if g[2] is not None)
    return SourcePlan(name, locate("/tmp"), Window(lower=lower, upper=top), tuple(files), len(files), None)


def _hours(count: int, rows: int, *,
           start: datetime = T0) -> list[tuple[int, datetime | None, datetime | None]]:
    """`count` row groups of `rows` rows, each spanning one hour, in cursor order."""
    return [(rows, start + i * HOUR, start + (i + 1) * HOUR - timedelta(microseconds=1))
            for i in range(count)]


def _assert_contiguous(plan: RunPlan, batches: list) -> None:
    for name, source in plan.sources.items():
        windows = [b.plan.sources[name].window for b in batches if name in b.plan.sources]
        assert windows[0].lower == source.window.lower
        assert windows[-1].upper == source.window.upper
        for before, after in zip(windows, windows[1:], strict=False):
            assert after.lower == before.upper  # no gap, no overlap


def test_sorted_row_groups_are_cut_within_the_budget_and_cover_the_window() -> None:
    plan = RunPlan({"orders": _source("orders", _hours(24, 1000))})
    cutting = cut_into_batches(plan, max_rows=5000)
    assert len(cutting.batches) == 5 and not cutting.warnings  # 24,000 rows, about 5,000 a batch
    assert all(b.estimated_rows <= 5000 for b in cutting.batches)
    assert sum(b.estimated_rows for b in cutting.batches) == 24_000
    _assert_contiguous(plan, cutting.batches)
    # a batch reads only the row groups its window can hold rows of: never all 24
    assert max(b.plan.sources["orders"].row_groups for b in cutting.batches) <= 6


def test_a_window_within_the_budget_is_one_batch_equal_to_the_plan() -> None:
    lower = T0 + 2 * HOUR
    plan = RunPlan({"orders": _source("orders", _hours(6, 100), lower=lower)})
    cutting = cut_into_batches(plan, max_rows=1_000_000)
    assert len(cutting.batches) == 1
    assert cutting.batches[0].plan.sources["orders"].window == plan.sources["orders"].window
    assert cutting.batches[0].plan.sources["orders"].row_groups == 4  # the two below the lower bound pruned


def test_sources_share_boundaries_and_each_ends_at_its_own_upper_bound() -> None:
    orders = _source("orders", _hours(10, 1000))
    lineitem = _source("lineitem", _hours(8, 4000))  # fewer hours: its upper bound is earlier
    plan = RunPlan({"orders": orders, "lineitem": lineitem})
    cutting = cut_into_batches(plan, max_rows=10_000)
    _assert_contiguous(plan, cutting.batches)
    assert all(b.estimated_rows <= 10_000 for b in cutting.batches)
    for batch in cutting.batches:
        uppers = {p.window.upper for name, p in batch.plan.sources.items()
                  if p.window.upper < lineitem.window.upper}
        assert len(uppers) <= 1  # before lineitem ends, both sources stop at the same cursor
    assert cutting.batches[-1].plan.sources["orders"].window.upper == orders.window.upper


def test_a_budget_below_a_row_group_is_raised_to_it_with_a_warning() -> None:
    plan = RunPlan({"orders": _source("orders", _hours(6, 64_000))})
    cutting = cut_into_batches(plan, max_rows=1000)
    assert cutting.budget == 64_000
    assert any("smaller than a row group" in w and "64,000" in w for w in cutting.warnings)
    assert len(cutting.batches) == 6
    _assert_contiguous(plan, cutting.batches)


def test_one_cursor_value_over_the_budget_is_a_batch_of_its_own_with_a_warning() -> None:
    heavy = T0 + 5 * HOUR
    groups = [*_hours(5, 1000), (3000, heavy, heavy), (3000, heavy, heavy),
              *_hours(3, 1000, start=heavy + HOUR)]
    plan = RunPlan({"orders": _source("orders", groups)})
    cutting = cut_into_batches(plan, max_rows=4000)
    assert any(heavy.isoformat() in w and "6,000" in w and "more than the batch budget" in w
               for w in cutting.warnings)
    alone = [b for b in cutting.batches if b.plan.sources["orders"].window.upper == heavy]
    assert len(alone) == 1 and alone[0].estimated_rows == 6000
    assert alone[0].plan.sources["orders"].window.lower == heavy - timedelta(microseconds=1)
    _assert_contiguous(plan, cutting.batches)


def test_overlapping_row_groups_are_estimated_by_their_share_of_the_window() -> None:
    # Unsorted files: every row group spans the whole day; a batch's estimate is its share of each.
    day = [(10_000, T0, T0 + 24 * HOUR)] * 4
    plan = RunPlan({"orders": _source("orders", day)})
    cutting = cut_into_batches(plan, max_rows=10_000)
    assert len(cutting.batches) == 4
    assert all(abs(b.estimated_rows - 10_000) <= 1 for b in cutting.batches)
    _assert_contiguous(plan, cutting.batches)


def test_row_groups_without_statistics_count_as_spread_over_the_window() -> None:
    lower = T0
    groups = [(1000, None, None), (1000, None, None), *_hours(2, 1000, start=T0)]
    plan = RunPlan({"orders": _source("orders", groups, lower=lower, upper=T0 + 2 * HOUR)})
    cutting = cut_into_batches(plan, max_rows=2000)
    assert sum(b.estimated_rows for b in cutting.batches) == pytest.approx(4000, abs=2)
    # a row group of unknown range can hold rows of every batch: each batch reads it
    assert all(b.plan.sources["orders"].row_groups >= 2 for b in cutting.batches)
    _assert_contiguous(plan, cutting.batches)


def test_an_empty_plan_has_no_batches() -> None:
    source = SourcePlan("orders", locate("/tmp"), Window(lower=T0, upper=T0), (), 0, None)
    assert cut_into_batches(RunPlan({"orders": source}), max_rows=10).batches == []


def test_the_recorded_input_names_files_sizes_mtimes_and_row_groups() -> None:
    plan = RunPlan({"orders": _source("orders", _hours(5, 10))}, planned_at=T0)
    recorded = plan.to_input()
    assert recorded["planned_at"] == T0.isoformat()
    assert recorded["sources"]["orders"]["files"][0] == {
        "path": "orders/part-0.parquet", "size": 1000, "mtime": "2024-01-01T00:00:00+00:00",
        "row_groups": [0, 1, 2, 3], "rows": 40}
