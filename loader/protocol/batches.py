"""Cutting a planned window into batches: the unit of memory, of commit and of progress.

A run's plan (per source, the window and the row groups that can hold rows of it) is cut, in cursor
order, into batches of about `run.max_batch_rows` rows in all. The row count of a cursor range is first
estimated from row-group statistics (each row group's rows spread evenly over [least, greatest cursor];
all one value: a point mass at it). That fails on skewed row groups (a few late or old rows widening the
range, a lookback clipping a row group), so where the rows a batch can hold (every row group that can put
rows into it, counted whole) exceed the budget by more than a quarter, the cursor column of its row groups
that straddle a cut or the window's bounds is read (one column, only those row groups, never those of a
run with nothing new) and kept as a histogram of small bins; the cut is then made again, a few rounds at
most. A batch that could still hold more than twice the budget is counted exactly from its cursors and
split at exact cursor values, before anything is recorded: the ledger records the split batches' inputs
and a replay reads those, so exactly-once needs nothing new.
Batches share cursor boundaries across sources, so orders and their lineitems (same cursor) land in the
same batch, and every source's checkpoint advances to its batch's upper bound in one commit.

A batch reads the row groups its window can hold rows of, one at a time, each filtered to the window at
once: a row group larger than the budget is read whole by each batch that holds part of it (with a
warning), and the batches keep the budget. A single cursor value holding more rows than the budget cannot
be cut by cursor: it becomes a batch of its own, with a warning naming it.
Pure but for the injected cursor reader: unit-tested on plans made by hand
(tests/unit/protocol/test_batches.py).
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from loader.landing.plans import FilePlan, RunPlan, SourcePlan
from state import Window

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = 1

#: One planned row group's cursors as int64 microseconds (any order, nulls left out), or None where they
#: cannot be read as timestamps (loader/protocol/planning.py `cursor_reader`).
CursorReader = Callable[[SourcePlan, FilePlan, int], "np.ndarray | None"]

_SLACK = 1.25  # a batch that could hold more than this times the budget has its uncertain row groups read
_ROUNDS = 6  # cuts made again after reading cursors, at most
_BIN_SHARE = 32  # a read row group's bins hold at most budget / (this x the row groups beside it) rows
_MAX_BINS = 4096  # per row group: bounds the cut's work whatever the budget


@dataclass(frozen=True)
class BatchPlan:
    """One batch: a plan restricted to its windows, and the rows the statistics let us expect."""

    number: int  # 1-based, within the run
    plan: RunPlan
    estimated_rows: int  # what plan, the run's log and its summary show for this batch


@dataclass(frozen=True)
class Cutting:
    batches: list[BatchPlan]
    budget: int  # run.max_batch_rows: never raised (a batch keeps its part of a larger row group)
    warnings: list[str]
    cursor_reads: int = 0  # row groups whose cursor column was read to cut (or split) exactly


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


@dataclass(frozen=True)
class _Unit:
    """Rows of one source known to lie in [low, high] (micros; None: unknown): a planned row group as its
    statistics tell (`read` False: its cursors can still be read), or a bin of one whose cursors were read."""

    source: str
    low: int | None
    high: int | None
    rows: int
    origin: tuple[str, int]  # (file, row group)
    read: bool = False


def _bounds(plan: SourcePlan) -> tuple[int, int]:
    """(floor, upper) in micros: the source's window is (floor, upper]; without a lower bound, the floor is
    just below the least cursor the statistics know."""
    upper = _us(plan.window.upper)
    if plan.window.lower is not None:
        return _us(plan.window.lower), upper
    lows = [_us(g[2]) for f in plan.files for g in f.stats if g[2] is not None]
    return (min(lows) - _ONE_US if lows else upper - _ONE_US), upper


def _units(name: str, plan: SourcePlan) -> list[_Unit]:
    return [_Unit(name, None if low is None else _us(low), None if high is None else _us(high), rows,
                  (file.path, index))
            for file in plan.files for index, rows, low, high in file.stats]


def _span(unit: _Unit, floor: int, upper: int) -> _Span | None:
    """The unit clipped to its source's window (floor, upper]. Unknown statistics: the whole window."""
    low = floor + _ONE_US if unit.low is None else unit.low
    high = upper if unit.high is None else unit.high
    clipped_low, clipped_high = max(low, floor + _ONE_US), min(high, upper)
    if clipped_high < clipped_low:
        return None
    share = 1.0 if high == low else (clipped_high - clipped_low) / (high - low)
    return _Span(clipped_low, clipped_high, unit.rows * min(1.0, share)) if share > 0 else None


def _bins(unit: _Unit, values: np.ndarray, *, floor: int, upper: int, bin_rows: int) -> list[_Unit]:
    """A read row group as bins of consecutive cursor values of about `bin_rows` rows (the values outside
    the window left out: no batch reads them); a value holding `bin_rows` rows or more is a bin of its own,
    a point mass, so one heavier than the budget is found."""
    values = values[(values > floor) & (values <= upper)]
    if not len(values):
        return []
    distinct, counts = np.unique(values, return_counts=True)
    bin_rows = max(1, bin_rows, -(-len(values) // _MAX_BINS))
    heavy = counts >= bin_rows
    light = np.where(heavy, 0, counts)
    slot = (np.cumsum(light) - light) // bin_rows
    slot[heavy] = -1
    run = np.cumsum(heavy)  # a heavy value starts a run of its own; the light values after it follow
    starts = np.flatnonzero(np.r_[True, (run[1:] != run[:-1]) | (slot[1:] != slot[:-1])])
    ends = np.r_[starts[1:], len(distinct)] - 1
    rows = np.add.reduceat(counts, starts)
    return [_Unit(unit.source, int(distinct[i]), int(distinct[j]), int(n), unit.origin, read=True)
            for i, j, n in zip(starts, ends, rows, strict=True)]


def _mass(span: _Span, lower: int | None, upper: int) -> float:
    """The span's estimated rows in (lower, upper]."""
    if span.low == span.high:
        return span.rows if (lower is None or lower < span.low) and span.low <= upper else 0.0
    start = span.low if lower is None else max(span.low, lower)
    end = min(span.high, upper)
    return span.rows * (end - start) / (span.high - span.low) if end > start else 0.0


@dataclass
class _Tally:
    """Per batch: its estimated rows, the rows it can hold at most (every unit that can put rows into it,
    whole) and the units that can."""

    estimates: list[float]
    most: list[float]
    touching: list[list[int]]


def _tally(parts: list[RunPlan], units: list[_Unit], spans: list[_Span | None]) -> _Tally:
    tally = _Tally([0.0] * len(parts), [0.0] * len(parts), [[] for _ in parts])
    windows: dict[str, tuple[list[int], list[int | None], list[int]]] = {}  # uppers, lowers, batch index
    for index, part in enumerate(parts):
        for name, source in part.sources.items():
            uppers, lowers, at = windows.setdefault(name, ([], [], []))
            uppers.append(_us(source.window.upper))
            lowers.append(None if source.window.lower is None else _us(source.window.lower))
            at.append(index)
    for number, (unit, span) in enumerate(zip(units, spans, strict=True)):
        if span is None or unit.source not in windows:
            continue
        uppers, lowers, at = windows[unit.source]
        first = bisect.bisect_left(uppers, span.low)
        last = min(bisect.bisect_left(uppers, span.high), len(uppers) - 1)
        for k in range(first, last + 1):
            tally.estimates[at[k]] += _mass(span, lowers[k], uppers[k])
            tally.most[at[k]] += unit.rows
            tally.touching[at[k]].append(number)
    return tally


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


def cut_into_batches(plan: RunPlan, *, max_rows: int, cursors: CursorReader | None = None) -> Cutting:
    """The plan's sources cut at shared cursor boundaries into batches of at most about `max_rows`
    rows (estimated). Each batch's plan holds, per source, a window continuing the previous batch's
    (no gap, no overlap) and only the row groups that can hold rows of it. `cursors` reads a row group's
    cursor column where the statistics cannot place its rows; without it, the statistics alone decide."""
    active = {name: p for name, p in plan.sources.items() if not p.is_empty}
    if not active:
        return Cutting([], max_rows, [])
    budget = max_rows
    bounds = {name: _bounds(p) for name, p in active.items()}
    end = max(upper for _, upper in bounds.values())
    units = [unit for name, p in active.items() for unit in _units(name, p)]
    reads = 0
    for round_ in range(_ROUNDS + 1):
        spans = [_span(u, *bounds[u.source]) for u in units]
        cuts, heavy = _cuts([s for s in spans if s is not None], budget=budget, end=end)
        parts = _assemble(active, [moment for moment, _ in cuts], plan.planned_at)
        tally = _tally(parts, units, spans)
        if cursors is None or round_ == _ROUNDS:
            break
        wanted = _to_read(tally, units, spans, budget)
        if not wanted:
            break
        units = _read(units, wanted, cursors, active, bounds)
        reads += len(wanted)
    estimates = [round(e) for e in tally.estimates]
    if cursors is not None:  # the guarantee: a batch that could hold over twice the budget is counted
        split: list[tuple[RunPlan, int]] = []
        for part, estimate, most in zip(parts, estimates, tally.most, strict=True):
            if most > 2 * budget:
                pieces, weighty, counted = _split_exactly(part, cursors, budget, estimate)
                split += pieces
                heavy += weighty
                reads += counted
            else:
                split.append((part, estimate))
        parts, estimates = [p for p, _ in split], [e for _, e in split]
    warnings = [
        f"cursor value {_moment(value).isoformat()} holds about {rows:,.0f} rows, more than the batch "
        f"budget ({budget:,}): rows with one cursor value cannot be split by cursor, so they load as "
        f"one batch"
        for value, rows in sorted({v: r for v, r in heavy}.items())
    ]
    warnings += _reread_warning(parts, active, budget)
    batches = [BatchPlan(i + 1, part, estimate) for i, (part, estimate) in enumerate(zip(parts, estimates,
                                                                                             strict=True))]
    return Cutting(batches, budget, warnings, reads)


def _assemble(active: dict[str, SourcePlan], moments: list[int],
              planned_at: datetime | None) -> list[RunPlan]:
    """The batches cut at `moments` (micros, ascending): per source, windows continuing each other from
    its own lower bound, and the last ending at its own upper bound (its checkpoint after the run)."""
    parts: list[dict[str, SourcePlan]] = []
    done = {name: p.window.lower for name, p in active.items()}  # each source's window so far
    for moment in moments:
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
            parts.append(sources)
    for name, source in active.items():
        if done[name] != source.window.upper:
            previous = parts[-1].get(name)
            lower = previous.window.lower if previous else done[name]
            parts[-1][name] = source.restrict(Window(lower=lower, upper=source.window.upper))
    return [RunPlan(sources, planned_at=planned_at) for sources in parts]


def _to_read(tally: _Tally, units: list[_Unit], spans: list[_Span | None], budget: int) -> dict[int, int]:
    """The row groups whose cursors to read, each with its bins' size: those not read yet that a batch
    able to hold over `_SLACK` times the budget can get rows of, where the statistics cannot tell how
    many (the row group straddles a cut or the window's bounds)."""
    spread: dict[int, int] = defaultdict(int)  # per unit, the batches it can put rows into
    for touching in tally.touching:
        for number in touching:
            spread[number] += 1
    wanted: dict[int, int] = {}
    for most, touching in zip(tally.most, tally.touching, strict=True):
        if most <= _SLACK * budget:
            continue
        beside = len({units[n].origin for n in touching})
        for number in touching:
            unit, span = units[number], spans[number]
            unsure = spread[number] > 1 or (span is not None and span.rows < unit.rows)
            if not unit.read and unsure:
                size = max(1, budget // (_BIN_SHARE * beside))
                wanted[number] = min(wanted.get(number, size), size)
    return wanted


def _read(units: list[_Unit], wanted: dict[int, int], cursors: CursorReader, active: dict[str, SourcePlan],
          bounds: dict[str, tuple[int, int]]) -> list[_Unit]:
    """`units` with the `wanted` row groups replaced by the bins of their cursors (read in parallel)."""
    files = {(name, f.path): f for name, p in active.items() for f in p.files}

    def read(number: int) -> list[_Unit]:
        unit = units[number]
        values = cursors(active[unit.source], files[(unit.source, unit.origin[0])], unit.origin[1])
        if values is None:  # not readable as timestamps: the statistics stay, not asked again
            return [replace(unit, read=True)]
        floor, upper = bounds[unit.source]
        return _bins(unit, values, floor=floor, upper=upper, bin_rows=wanted[number])

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = dict(zip(wanted, pool.map(read, wanted), strict=True))
    return [piece for number, unit in enumerate(units) for piece in done.get(number, [unit])]


def _split_exactly(part: RunPlan, cursors: CursorReader, budget: int,
                   estimate: int) -> tuple[list[tuple[RunPlan, int]], list[tuple[int, float]], int]:
    """A batch that could hold more than twice the budget, counted from its row groups' cursors and, when
    it does, cut at exact cursor values into batches of at most the budget (one value heavier than it: a
    batch of its own). Before the ledger records anything, so a replay reads the pieces' inputs as
    recorded. Returns the batches with their exact rows, the heavy values, the row groups read."""
    values: dict[str, np.ndarray] = {}
    reads = 0
    for name, source in part.sources.items():
        floor = None if source.window.lower is None else _us(source.window.lower)
        upper = _us(source.window.upper)
        arrays = []
        for file in source.files:
            for index in file.row_groups:
                read = cursors(source, file, index)
                reads += 1
                if read is None:
                    return [(part, estimate)], [], reads
                arrays.append(read[((read > floor) if floor is not None else True) & (read <= upper)])
        values[name] = np.sort(np.concatenate(arrays)) if arrays else np.empty(0, np.int64)
    distinct, counts = np.unique(np.concatenate(list(values.values())), return_counts=True)
    total = np.cumsum(counts)
    moments, heavy, start, taken = [], [], 0, 0
    while start < len(distinct):
        at = max(start, int(np.searchsorted(total, taken + budget, side="right")) - 1)
        if at == start and counts[at] > budget:
            heavy.append((int(distinct[at]), float(counts[at])))
        moments.append(int(distinct[at]))
        taken, start = int(total[at]), at + 1
    if len(moments) <= 1:
        return [(part, int(total[-1]) if len(total) else 0)], heavy, reads
    pieces = _assemble(dict(part.sources), moments, part.planned_at)
    return [(piece, sum(_count(values[name], s.window) for name, s in piece.sources.items()))
            for piece in pieces], heavy, reads


def _count(values: np.ndarray, window: Window) -> int:
    """Sorted cursors in the window."""
    low = 0 if window.lower is None else int(np.searchsorted(values, _us(window.lower), side="right"))
    return int(np.searchsorted(values, _us(window.upper), side="right")) - low


def _reread_warning(parts: list[RunPlan], active: dict[str, SourcePlan], budget: int) -> list[str]:
    """A row group larger than the budget read by several batches: said once, with the largest."""
    readers: dict[tuple[str, str, int], int] = defaultdict(int)
    for part in parts:
        for name, source in part.sources.items():
            for file in source.files:
                for index in file.row_groups:
                    readers[(name, file.path, index)] += 1
    sizes = {(name, f.path, g[0]): g[1] for name, p in active.items() for f in p.files for g in f.stats}
    shared = [sizes.get(key, 0) for key, count in readers.items() if count > 1 and sizes.get(key, 0) > budget]
    if not shared:
        return []
    return [f"run.max_batch_rows={budget:,} is smaller than a row group of the landing zone ({max(shared):,} "
            f"rows): each batch holding part of such a row group reads it whole, one row group at a time, "
            f"and keeps its part, so batches keep the budget but read {len(shared)} row group(s) more than "
            f"once. Write the landing files with smaller row groups, or raise run.max_batch_rows"]
