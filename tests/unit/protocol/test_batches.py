"""Cutting a plan into batches (loader/protocol/batches.py), on plans made by hand from row-group statistics:
windows contiguous per source and ending at each source's upper bound, no batch over the budget, the
budget kept below a row group, a heavy single cursor value a batch of its own, shared boundaries; on
skewed row groups, cursors read where the statistics mislead, so every batch's actual rows hold the budget,
and a batch that could hold over twice the budget counted and split exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from loader.landing.plans import FilePlan, RunPlan, SourcePlan
from loader.protocol import batches as batches_module
from loader.protocol.batches import BatchPlan, cut_into_batches
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


def test_a_budget_below_a_row_group_is_kept_with_a_warning() -> None:
    # A batch reads a row group whole but keeps only its window's part: the budget holds, the row group
    # is read by each batch holding part of it, and the warning says so.
    plan = RunPlan({"orders": _source("orders", _hours(6, 64_000))})
    cutting = cut_into_batches(plan, max_rows=1000)
    assert cutting.budget == 1000
    assert any("smaller than a row group" in w and "64,000" in w for w in cutting.warnings)
    assert 384 <= len(cutting.batches) <= 386 and all(b.estimated_rows <= 1000 for b in cutting.batches)
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


# ----------------------------------------------------------------------------- skewed row groups


def _micros(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _moment(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))


def _skewed_day(day: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """A day's cursors, 1% spread over its first 23 hours and 99% in its last hour (a file whose few
    late or old records widen its statistics)."""
    start = _micros(T0) + day * 24 * 3_600_000_000
    few = rows // 100
    early = start + rng.integers(0, 23 * 3_600_000_000, few)
    late = start + 23 * 3_600_000_000 + rng.integers(0, 3_600_000_000, rows - few)
    return np.sort(np.concatenate([early, late]))


def _zone(values: dict[tuple[str, int], np.ndarray], *, name: str = "orders",
          lower: datetime | None = None) -> SourcePlan:
    """A source of one file per row group, its statistics those of `values` ((path, row group) -> cursors)."""
    files = tuple(FilePlan(path, (index,), len(v), 1000,
                           ((index, len(v), _moment(v.min()), _moment(v.max())),),
                           "2024-01-01T00:00:00+00:00")
                  for (path, index), v in values.items())
    top = max(_moment(v.max()) for v in values.values())
    return SourcePlan(name, locate("/tmp"), Window(lower=lower, upper=top), files, len(files), None)


class _Cursors:
    """The cursor reader over `values`, counting its reads."""

    def __init__(self, values: dict[tuple[str, int], np.ndarray]) -> None:
        self.values, self.reads = values, 0

    def __call__(self, plan: SourcePlan, file: FilePlan, group: int) -> np.ndarray:
        self.reads += 1
        return self.values[(file.path, group)]


def _actual(batch: BatchPlan, values: dict[tuple[str, int], np.ndarray]) -> int:
    """The rows a batch's read keeps: its row groups' cursors inside its windows."""
    total = 0
    for source in batch.plan.sources.values():
        low = None if source.window.lower is None else _micros(source.window.lower)
        high = _micros(source.window.upper)
        for file in source.files:
            for index in file.row_groups:
                v = values[(file.path, index)]
                total += int(((v <= high) & (v > (low if low is not None else v.min() - 1))).sum())
    return total


@pytest.fixture
def skewed() -> dict[tuple[str, int], np.ndarray]:
    rng = np.random.default_rng(7)
    return {(f"orders/day-{d}.parquet", 0): _skewed_day(d, 10_000, rng) for d in range(6)}


def test_statistics_alone_mislead_on_skewed_row_groups(skewed: dict[tuple[str, int], np.ndarray]) -> None:
    # What this module fixes: spread evenly, a batch of the skewed hour holds far over twice the budget.
    plan = RunPlan({"orders": _zone(skewed)})
    cutting = cut_into_batches(plan, max_rows=4000)
    assert max(_actual(b, skewed) for b in cutting.batches) > 2 * 4000


def test_reading_cursors_makes_skewed_batches_hold_the_budget(
        skewed: dict[tuple[str, int], np.ndarray]) -> None:
    plan = RunPlan({"orders": _zone(skewed)})
    reader = _Cursors(skewed)
    cutting = cut_into_batches(plan, max_rows=4000, cursors=reader)
    actual = [_actual(b, skewed) for b in cutting.batches]
    assert sum(actual) == 60_000
    assert max(actual) <= 4000 * 1.1  # the budget holds, within a bin
    # the estimates are what the batches hold: plan, log and run show the same numbers
    assert all(abs(b.estimated_rows - a) <= 200 for b, a in zip(cutting.batches, actual, strict=True))
    assert cutting.budget == 4000 and reader.reads == cutting.cursor_reads <= 6  # each row group once at most
    _assert_contiguous(plan, cutting.batches)
    # the same input cuts the same way (a backfill resumed, `loader plan` then `loader run`)
    again = cut_into_batches(plan, max_rows=4000, cursors=_Cursors(skewed))
    assert [b.plan.windows() for b in again.batches] == [b.plan.windows() for b in cutting.batches]


def test_a_lookback_clipping_a_skewed_row_group_is_counted(skewed: dict[tuple[str, int], np.ndarray]) -> None:
    # Yesterday's file, 99% in its last hour, clipped by a 2-hour lookback: the statistics see 2/24 of it.
    lower = T0 + 5 * 24 * HOUR - 2 * HOUR
    plan = RunPlan({"orders": _zone(skewed, lower=lower)})
    stats_only = cut_into_batches(plan, max_rows=4000)
    seen = sum(b.estimated_rows for b in stats_only.batches)
    assert seen < 0.6 * sum(_actual(b, skewed) for b in stats_only.batches)  # the clipped file's 9,900 unseen
    cutting = cut_into_batches(plan, max_rows=4000, cursors=_Cursors(skewed))
    actual = [_actual(b, skewed) for b in cutting.batches]
    assert max(actual) <= 4000 * 1.1 and sum(b.estimated_rows for b in cutting.batches) == pytest.approx(
        sum(actual), abs=100)


def test_no_cursor_is_read_where_the_statistics_bound_the_batch() -> None:
    # An increment within the budget (even with a lookback reaching yesterday's row group): nothing read.
    rng = np.random.default_rng(1)
    values = {(f"orders/day-{d}.parquet", 0): _skewed_day(d, 1000, rng) for d in range(3)}
    reader = _Cursors(values)
    cutting = cut_into_batches(RunPlan({"orders": _zone(values, lower=T0 + 30 * HOUR)}), max_rows=100_000,
                               cursors=reader)
    assert len(cutting.batches) == 1 and reader.reads == 0


def test_a_batch_over_twice_the_budget_is_split_exactly_before_it_is_recorded(
        skewed: dict[tuple[str, int], np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    # No histogram rounds: only the guarantee is left, counting each batch that could hold over twice
    # the budget from its cursors and cutting it at exact values. It happens in the cut, so the ledger
    # records the pieces and a replay reads them as recorded.
    monkeypatch.setattr(batches_module, "_ROUNDS", 0)
    plan = RunPlan({"orders": _zone(skewed)})
    cutting = cut_into_batches(plan, max_rows=4000, cursors=_Cursors(skewed))
    actual = [_actual(b, skewed) for b in cutting.batches]
    assert max(actual) <= 4000 and sum(actual) == 60_000
    assert [b.estimated_rows for b in cutting.batches] == actual  # counted, not estimated
    assert [b.number for b in cutting.batches] == list(range(1, len(cutting.batches) + 1))
    _assert_contiguous(plan, cutting.batches)


def test_a_heavy_cursor_value_inside_a_read_row_group_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # 6,000 rows at one value in the middle of a row group whose statistics span the day.
    heavy = _micros(T0) + 12 * 3_600_000_000
    spread = np.linspace(_micros(T0), _micros(T0) + 24 * 3_600_000_000 - 1, 4000).astype(np.int64)
    values = {("orders/day-0.parquet", 0): np.sort(np.concatenate([spread, np.full(6000, heavy)]))}
    cutting = cut_into_batches(RunPlan({"orders": _zone(values)}), max_rows=2000, cursors=_Cursors(values))
    assert any("more than the batch budget" in w and "6,000" in w for w in cutting.warnings)
    alone = [b for b in cutting.batches if _actual(b, values) >= 6000]
    assert len(alone) == 1 and _actual(alone[0], values) <= 6000 + 2000 * 0.1
