"""Cutting a planned window into batches: the unit of memory, of commit and of progress.

A run's plan (per source, the window and the row groups that can hold rows of it) is cut, in cursor
order, into batches of about `run.max_batch_rows` rows in all. The row count of a cursor range is
estimated from row-group statistics only (no data is read): each row group's rows are taken as spread
evenly over [least, greatest cursor]; a row group whose cursors are all one value is a point mass at it.
Batches share cursor boundaries across sources, so orders and their lineitems (same cursor) land in the
same batch, and every source's checkpoint advances to its batch's upper bound in one commit.

A batch reads whole row groups (then filters to its window), so a budget smaller than the largest row
group is raised to it, with a warning: a row group becomes the unit. A single cursor value holding more
rows than the budget cannot be cut by cursor: it becomes a batch of its own, with a warning naming it.
Pure: unit-tested on plans made by hand (tests/unit/protocol/test_batches.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from loader.landing.plans import RunPlan, SourcePlan
from state import Window

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = 1


@dataclass(frozen=True)
class BatchPlan:
    """One batch: a plan restricted to its windows, and the rows the statistics let us expect."""

    number: int  # 1-based, within the run
    plan: RunPlan
    estimated_rows: int


@dataclass(frozen=True)
class Cutting:
    batches: list[BatchPlan]
    budget: int  # the budget used: run.max_batch_rows, or the largest row group if that is larger
    warnings: list[str]


def _us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class _Span:
    low: int  # micros; low == high: every row has this one cursor value
    high: int
    rows: float


def _spans(plan: SourcePlan) -> list[_Span]:
    """The source's row groups clipped to its window, in microseconds. A row group without statistics
    is taken as spread over the whole window."""
    window = plan.window
    upper = _us(window.upper)
    lower = None if window.lower is None else _us(window.lower)
    lows = [_us(g[2]) for f in plan.files for g in f.stats if g[2] is not None]
    floor = lower if lower is not None else (min(lows) - _ONE_US if lows else upper - _ONE_US)
    spans = []
    for file in plan.files:
        for _index, rows, low_at, high_at in file.stats:
            low = floor + _ONE_US if low_at is None else _us(low_at)
            high = upper if high_at is None else _us(high_at)
            clipped_low, clipped_high = max(low, floor + _ONE_US), min(high, upper)
            if clipped_high < clipped_low:
                continue
            share = 1.0 if high == low else (clipped_high - clipped_low) / (high - low)
            if share > 0:
                spans.append(_Span(clipped_low, clipped_high, rows * min(1.0, share)))
    return spans


def _cuts(spans: list[_Span], *, budget: int,
          end: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Greedy cut points (micros, estimated rows up to it since the previous cut) so that no batch
    exceeds `budget`, the last cut at `end`; and the single cursor values heavier than the budget."""
    mass: dict[int, float] = defaultdict(float)  # point masses
    # rows per micro starting (+) or ending (-) at a point
    slope_change: dict[int, float] = defaultdict(float)
    for span in spans:
        if span.high == span.low:
            mass[span.low] += span.rows
        else:
            density = span.rows / (span.high - span.low)
            slope_change[span.low] += density
            slope_change[span.high] -= density
    points = sorted(set(mass) | set(slope_change) | {end})
    cuts: list[tuple[int, float]] = []
    heavy: list[tuple[int, float]] = []
    acc, slope, at = 0.0, 0.0, points[0]

    def cut(moment: int, rows: float) -> None:
        if cuts and moment <= cuts[-1][0]:  # not after the previous cut: fold into it
            cuts[-1] = (cuts[-1][0], cuts[-1][1] + rows)
        else:
            cuts.append((moment, rows))

    for point in points:
        if slope > 0:  # the continuous part (at, point]
            while acc + slope * (point - at) > budget:
                step = max(_ONE_US, int((budget - acc) / slope))
                if at + step >= point:
                    break
                at += step
                cut(at, acc + slope * step)
                acc = 0.0
            acc += slope * (point - at)
        at = point
        weight = mass.get(point, 0.0)
        if weight:
            if acc + weight > budget and acc > 0:
                cut(point - _ONE_US, acc)  # what comes before this value, on its own
                acc = 0.0
            if weight > budget:
                heavy.append((point, weight))
                cut(point, acc + weight)
                acc = 0.0
            else:
                acc += weight
        slope = max(0.0, slope + slope_change.get(point, 0.0))
    if acc > 0 or not cuts or cuts[-1][0] < end:
        cut(end, acc)
    return cuts, heavy


def cut_into_batches(plan: RunPlan, *, max_rows: int) -> Cutting:
    """The plan's sources cut at shared cursor boundaries into batches of at most about `max_rows`
    rows (estimated). Each batch's plan holds, per source, a window continuing the previous batch's
    (no gap, no overlap) and only the row groups that can hold rows of it."""
    active = {name: p for name, p in plan.sources.items() if not p.is_empty}
    if not active:
        return Cutting([], max_rows, [])
    warnings = []
    spans = [span for p in active.values() for span in _spans(p)]
    # Only a row group's rows inside the window count: one that the lookback barely reaches costs one
    # transient read, not a batch's worth of memory.
    largest = round(max((span.rows for span in spans), default=0))
    budget = max_rows
    if largest > max_rows:
        budget = largest
        warnings.append(
            f"run.max_batch_rows={max_rows:,} is smaller than a row group of the landing zone "
            f"({largest:,} rows): a batch reads whole row groups, so batches are cut at about {largest:,} "
            f"rows. Write the landing files with smaller row groups, or raise run.max_batch_rows"
        )
    end = max(_us(p.window.upper) for p in active.values())
    cuts, heavy = _cuts(spans, budget=budget, end=end)
    for value, rows in heavy:
        warnings.append(
            f"cursor value {_moment(value).isoformat()} holds about {rows:,.0f} rows, more than the batch "
            f"budget ({budget:,}): rows with one cursor value cannot be split by cursor, so they load as "
            f"one batch"
        )
    batches: list[BatchPlan] = []
    done = {name: p.window.lower for name, p in active.items()}  # each source's window so far
    for moment, rows in cuts:
        boundary = _moment(moment)
        sources = {}
        for name, source in active.items():
            lower, upper = done[name], min(boundary, source.window.upper)
            if lower is not None and upper <= lower:
                continue
            part = source.restrict(Window(lower=lower, upper=upper))
            if part.is_empty:  # no row group here: the source joins a later batch from the same lower bound
                continue
            sources[name] = part
            done[name] = upper
        if sources:
            batches.append(BatchPlan(len(batches) + 1, RunPlan(sources, planned_at=plan.planned_at),
                                     round(rows)))
    # Every source ends at its own upper bound (its checkpoint after the run), even past its last rows.
    for name, source in active.items():
        if done[name] != source.window.upper:
            last = batches[-1]
            sources = dict(last.plan.sources)
            previous = sources.get(name)
            lower = previous.window.lower if previous else done[name]
            sources[name] = source.restrict(Window(lower=lower, upper=source.window.upper))
            batches[-1] = BatchPlan(last.number, RunPlan(sources, planned_at=plan.planned_at),
                                    last.estimated_rows)
    return Cutting(batches, budget, warnings)
