"""The run history, from the state store's ledger: what `loader history` shows, what the metrics and the
HTML report are made of. Each committed run's metrics (rows per table, region and sink; seconds per
stage; executor and engine) were stored by the run's own commit, in the same transaction as its
checkpoints, so the history is exactly what landed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loader.observe.results import TableResult, tables_from_json
from state import RunRecord, StateStore, Window


@dataclass(frozen=True)
class RunEntry:
    """One run of the ledger as the history shows it: `to_json` is `loader history --json`'s shape."""

    run_number: int
    mode: str
    outcome: str  # committed | failed | unfinished | abandoned (see `outcome`)
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    windows: dict[str, Window]
    lag_seconds: dict[str, float]  # per source, committed incremental runs only
    tables: dict[str, TableResult]
    timings_s: dict[str, float]
    executor: str | None
    engine: str | None
    error: str | None
    batch: dict[str, Any] | None  # {index, of, series}: which batch of its run (see `batch_of`)

    @property
    def duration_s(self) -> float | None:
        return (None if self.finished_at is None
                else round((self.finished_at - self.started_at).total_seconds(), 3))

    def to_json(self) -> dict[str, Any]:
        return {
            "run_number": self.run_number, "mode": self.mode, "outcome": self.outcome,
            "attempts": self.attempts,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": self.duration_s,
            "windows": {name: w.to_json() for name, w in self.windows.items()},
            "lag_seconds": self.lag_seconds,
            "tables": {name: {"rows": t.rows, "parts": t.parts, "quarantined": dict(t.quarantined),
                              "deleted": t.deletes_applied,
                              "sinks": {sink: {"rows": w.rows, "skipped": w.skipped,
                                               "regions": dict(w.regions),
                                               "deleted": w.deleted} for sink, w in t.sinks.items()}}
                       for name, t in self.tables.items()},
            "timings_s": self.timings_s, "executor": self.executor, "engine": self.engine,
            "error": self.error,
            "batch": self.batch,
        }


def run_entry(run: RunRecord) -> RunEntry:
    metrics = run.metrics or {}
    return RunEntry(
        run_number=run.run_number, mode=run.mode, outcome=outcome(run), attempts=run.attempts,
        started_at=run.started_at, finished_at=run.finished_at, windows=dict(run.windows),
        lag_seconds=_lag_at_finish(run), tables=tables_from_json(metrics.get("tables")),
        timings_s=dict(metrics.get("timings_s") or {}), executor=metrics.get("executor"),
        engine=metrics.get("engine"), error=run.error, batch=batch_of(run),
    )


def batch_of(run: RunRecord) -> dict[str, Any] | None:
    """Which batch of its run this ledger run was ({index, of, series}), for incremental runs cut in
    batches (a backfill chunk's batch: {index: part, of: parts}). `series` names the run the batches
    belong to: the same for all of them (the run numbers need not be consecutive: a backfill batch cut
    short is loaded again under a new number)."""
    info = (run.metrics or {}).get("batch")
    if info:
        return {"index": info.get("index"), "of": info.get("of"), "series": info.get("series")}
    chunk = (run.metrics or {}).get("backfill")
    if chunk and chunk.get("parts"):
        return {"index": chunk.get("part"), "of": chunk.get("parts"),
                "series": f"{chunk.get('id')}/{chunk.get('chunk')}"}
    return None


def outcome(run: RunRecord) -> str:
    """committed; failed (its error kept: the next run replays it); unfinished (no error recorded: running
    now, or its process was killed; the next run replays it); abandoned (`loader runs abandon`)."""
    if run.status == "committed":
        return "committed"
    if run.status == "failed":
        return "abandoned"
    return "failed" if run.error else "unfinished"


def _lag_at_finish(run: RunRecord) -> dict[str, float]:
    """Per source, how far behind the landing zone the run left it: its finish minus its window's upper
    cursor (committed incremental runs only: a backfill does not move what is current)."""
    if run.status != "committed" or run.mode != "incremental" or run.finished_at is None:
        return {}
    return {name: round((run.finished_at - w.upper).total_seconds(), 1) for name, w in run.windows.items()}


def history(store: StateStore, pipeline: str, *, limit: int | None) -> list[RunEntry]:
    """Newest first."""
    return [run_entry(run) for run in store.runs(pipeline, limit=limit)]


def read_history(state_url: str, pipeline: str, *, limit: int | None) -> list[RunEntry]:
    """`history` from a store opened (and closed) for it."""
    store = StateStore.open_to_read(state_url)
    try:
        return history(store, pipeline, limit=limit)
    finally:
        store.close()


def quarantined_totals(entries: list[RunEntry]) -> dict[tuple[str, str], int]:
    """Rows quarantined by runs that committed or failed (a failed run's file stays), per (table, reason)."""
    totals: dict[tuple[str, str], int] = {}
    for entry in entries:
        for table, result in entry.tables.items():
            for reason, rows in result.quarantined.items():
                totals[(table, reason)] = totals.get((table, reason), 0) + rows
    return totals


def rows_loaded_totals(entries: list[RunEntry]) -> dict[tuple[str, str, str], int]:
    """Rows loaded by committed runs, per (table, region, sink): the counter Prometheus scrapes."""
    totals: dict[tuple[str, str, str], int] = {}
    for entry in entries:
        if entry.outcome != "committed":
            continue
        for table, result in entry.tables.items():
            for sink, written in result.sinks.items():
                for region, rows in written.regions.items():
                    key = (table, region, sink)
                    totals[key] = totals.get(key, 0) + rows
    return totals


def deleted_totals(entries: list[RunEntry]) -> dict[tuple[str, str], int]:
    """Keys deleted (or marked deleted) by committed runs, per (table, sink): the counter Prometheus
    scrapes."""
    totals: dict[tuple[str, str], int] = {}
    for entry in entries:
        if entry.outcome != "committed":
            continue
        for table, result in entry.tables.items():
            for sink, written in result.sinks.items():
                if written.deleted:
                    totals[(table, sink)] = totals.get((table, sink), 0) + written.deleted
    return totals
