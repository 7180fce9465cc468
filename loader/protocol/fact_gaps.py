"""Facts a sink lacks because it was enabled after incremental runs had committed them.

An incremental run writes its batch to the sinks enabled then; a sink enabled later gets the facts of
the runs after it, never those before (its dimension tables catch up by themselves:
loader/protocol/dimension_loads.py). The first run that writes to it finds it missing from the last
committed run's sinks (the ledger's metrics, `tables[*].sinks`), and records per source the window
(start, end] of every committed run it is missing from, in the state store. While a gap is open, every
run warns and `loader status` shows it with the one command that fills it: `loader backfill` over that
window into that sink only (it merges on the key: overlapping what the sink holds duplicates nothing).
A gap is filled when committed backfill runs into the sink cover its window; it is then forgotten.

A window that begins with the first run (no lower bound) starts just before the earliest cursor of the
landing zone up to the window's end (footers only), at midnight where it can: a backfill's start is
exclusive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from loader.config import LoaderConfig
from loader.observe.results import tables_from_json
from loader.retry import call_with_retries
from state import FactGap, RunRecord, StateStore, Window

log = logging.getLogger(__name__)

#: How many of the newest incremental runs are looked at for the last one that wrote facts.
_RECENT = 20


def enabled_sink_names(config: LoaderConfig) -> list[str]:
    """The enabled sinks in registry order, without importing loader.sinks (a run with nothing new
    imports no sink: tests/integration/test_empty_run_imports.py)."""
    return [name for name in type(config.sinks).model_fields if getattr(config.sinks, name).enabled]


def check_fact_history(config: LoaderConfig, store: StateStore) -> list[FactGap]:
    """Record the gaps of sinks the last committed run did not write to, forget the gaps backfills
    filled, warn about the rest (returned). Cheap when nothing is missing: two small state reads."""
    pipeline = config.pipeline
    names = enabled_sink_names(config)
    recorded = store.fact_gaps(pipeline)
    last = store.last_committed_run(pipeline, mode="incremental")
    if last is not None and not last.metrics.get("tables"):
        last = _last_with_facts(store.runs(pipeline, limit=_RECENT, mode="incremental"))
    lacking: list[str] = []
    if last is not None:
        tables = tables_from_json(last.metrics["tables"])
        lacking = [s for s in names if any(s not in result.sinks for result in tables.values())]
        new = [s for s in lacking if not any(g.sink == s and g.last_run >= last.run_number for g in recorded)]
        if new:
            history = store.runs(pipeline, limit=None, mode="incremental")
            for sink in new:
                for gap in find_gaps(config, history, sink):
                    store.record_fact_gap(pipeline, sink=gap.sink, source=gap.source, start=gap.start,
                                          end=gap.end, first_run=gap.first_run, last_run=gap.last_run)
            recorded = store.fact_gaps(pipeline)
    gaps = [g for g in recorded if g.sink in names]
    if not gaps:
        return []
    backfills = store.runs(pipeline, limit=None, mode="backfill")
    still = []
    for gap in gaps:
        if not covered(gap, backfills):
            still.append(gap)
        elif gap.sink not in lacking:  # kept until a run wrote to the sink: else found again, at a cost
            log.info("sink %s: the facts of %s in (%s, %s] are loaded (a backfill filled them)", gap.sink,
                     gap.source, gap.start.isoformat(), gap.end.isoformat())
            store.forget_fact_gap(pipeline, sink=gap.sink, source=gap.source)
    for sink, of_sink in by_sink(still).items():
        log.warning("%s", gap_message(config, sink, of_sink))
    return still


def open_fact_gaps(config: LoaderConfig, store: StateStore) -> list[FactGap]:
    """The recorded gaps of the enabled sinks that no committed backfill filled yet (reads only)."""
    names = enabled_sink_names(config)
    gaps = [g for g in store.fact_gaps(config.pipeline) if g.sink in names]
    if not gaps:
        return []
    backfills = store.runs(config.pipeline, limit=None, mode="backfill")
    return [g for g in gaps if not covered(g, backfills)]


def _last_with_facts(runs: Iterable[RunRecord]) -> RunRecord | None:
    """The newest committed run that wrote facts (its metrics name the sinks each table went to)."""
    return next((r for r in runs if r.status == "committed" and r.metrics.get("tables")), None)


def find_gaps(config: LoaderConfig, history: Sequence[RunRecord], sink: str) -> list[FactGap]:
    """Per source, the window of the committed incremental runs (`history`) that wrote it without
    `sink`."""
    found: dict[str, tuple[datetime | None, datetime, int, int]] = {}
    for run in history:
        if run.status != "committed":
            continue
        for source, result in tables_from_json(run.metrics.get("tables")).items():
            window = run.windows.get(source)
            if window is None or sink in result.sinks:
                continue
            if source not in found:
                found[source] = (window.lower, window.upper, run.run_number, run.run_number)
                continue
            lower, upper, first, last = found[source]
            lower = None if lower is None or window.lower is None else min(lower, window.lower)
            found[source] = (lower, max(upper, window.upper), min(first, run.run_number),
                             max(last, run.run_number))
    now = datetime.now(UTC)
    gaps = []
    for source, (lower, upper, first, last) in sorted(found.items()):
        start = lower if lower is not None else before_earliest(config, source, upper)
        gaps.append(FactGap(sink, source, start, upper, first, last, now))
    return gaps


def before_earliest(config: LoaderConfig, source: str, upper: datetime) -> datetime:
    """An exclusive backfill start that takes in every row of `source` up to `upper`: midnight of its
    earliest cursor's day (the day before, when that cursor is midnight itself). From the footers'
    statistics; without any, the start of the Unix epoch."""
    from loader.protocol.planning import plan_run

    plan = call_with_retries("planning", config.source_retry,
                             lambda: plan_run(config, {}, windows={source: Window(lower=None, upper=upper)}))
    lows = [g[2] for f in plan.sources[source].files for g in f.stats if g[2] is not None]
    if not lows:
        return datetime(1970, 1, 1, tzinfo=UTC)
    earliest = min(lows)
    day = datetime.combine(earliest.astimezone(UTC).date(), time(), UTC)
    return day if day < earliest else day - timedelta(days=1)


def covered(gap: FactGap, backfills: Iterable[RunRecord]) -> bool:
    """Whether committed backfill runs into the gap's sink cover its window (start, end] of its source."""
    windows = sorted(
        (w.lower, w.upper) for r in backfills
        if r.status == "committed" and gap.sink in (r.metrics.get("backfill") or {}).get("sinks", [])
        and (w := r.windows.get(gap.source)) is not None and w.lower is not None)
    reached = gap.start
    for lower, upper in windows:
        if lower > reached:
            break
        reached = max(reached, upper)
    return reached >= gap.end


def by_sink(gaps: Iterable[FactGap]) -> dict[str, list[FactGap]]:
    grouped: dict[str, list[FactGap]] = {}
    for gap in gaps:
        grouped.setdefault(gap.sink, []).append(gap)
    return grouped


def fill_command(config: LoaderConfig, gaps: Sequence[FactGap]) -> str:
    """The one `loader backfill` that fills one sink's gaps: their windows' union, that sink only, the
    sources lacking (all of them: no --source)."""
    start, end = min(g.start for g in gaps), max(g.end for g in gaps)
    sources = sorted({g.source for g in gaps})
    only = "" if set(sources) == set(config.sources) else "".join(f" --source {s}" for s in sources)
    return f"loader backfill --start {_instant(start)} --end {_instant(end)}{only} --sinks {gaps[0].sink}"


def gap_message(config: LoaderConfig, sink: str, gaps: Sequence[FactGap]) -> str:
    first, last = min(g.first_run for g in gaps), max(g.last_run for g in gaps)
    runs = f"run {first}" if first == last else f"runs {first}-{last}"
    what = ", ".join(f"{g.source} in ({g.start.isoformat()}, {g.end.isoformat()}]" for g in gaps)
    return (f"sink {sink} lacks the facts committed before it was enabled ({runs}): {what}. Load them with "
            f"`{fill_command(config, gaps)}` (`loader verify` fails for {sink} until then)")


def gaps_payload(config: LoaderConfig, gaps: Sequence[FactGap]) -> list[dict[str, Any]]:
    """`loader status --json`'s `fact_gaps`: per sink what it lacks and the command that fills it."""
    return [{"sink": sink, "tables": {g.source: {"start": g.start.isoformat(), "end": g.end.isoformat(),
                                                 "runs": [g.first_run, g.last_run]} for g in of_sink},
             "command": fill_command(config, of_sink), "message": gap_message(config, sink, of_sink)}
            for sink, of_sink in by_sink(gaps).items()]


def _instant(moment: datetime) -> str:
    """As `loader backfill` reads it: a date for midnight UTC, else the ISO time."""
    moment = moment.astimezone(UTC)
    return moment.date().isoformat() if moment.time() == time() else moment.isoformat()
