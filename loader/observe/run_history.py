"""The run history, from the state store's ledger: what `loader history` shows, what the metrics and the
HTML report are made of. Each committed run's metrics (rows per table, region and sink; seconds per
stage; executor and engine) were stored by the run's own commit, in the same transaction as its
checkpoints, so the history is exactly what landed."""

from __future__ import annotations

from typing import Any

from state import RunRecord, StateStore


def run_entry(run: RunRecord) -> dict[str, Any]:
    """One run as `loader history --json` shows it."""
    metrics = run.metrics or {}
    tables = {
        name: {
            "rows": info.get("rows"),
            "parts": info.get("parts"),
            "quarantined": info.get("quarantined", {}),
            "deleted": table_deleted(info),
            "sinks": {sink: {"rows": s.get("rows"), "skipped": s.get("skipped", False), "regions": s.get("regions", {}),
                             "deleted": s.get("deleted", 0)}
                      for sink, s in info.get("sinks", {}).items()},
        }
        for name, info in metrics.get("tables", {}).items()
    }
    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    return {
        "run_number": run.run_number,
        "mode": run.mode,
        "outcome": outcome(run),
        "attempts": run.attempts,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_s": None if duration is None else round(duration, 3),
        "windows": {name: w.to_json() for name, w in run.windows.items()},
        "lag_seconds": _lag_at_finish(run),
        "tables": tables,
        "timings_s": metrics.get("timings_s", {}),
        "executor": metrics.get("executor"),
        "engine": metrics.get("engine"),
        "error": run.error,
        "batch": batch_of(run),
    }


def table_deleted(info: dict[str, Any]) -> int:
    """Keys a run deleted (hard) or marked deleted (soft) in a table: the most any sink applied (the
    sinks apply the same tombstones; one that found the run already landed applied none)."""
    return max((int(s.get("deleted", 0) or 0) for s in (info.get("sinks") or {}).values()), default=0)


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
        return {"index": chunk.get("part"), "of": chunk.get("parts"), "series": f"{chunk.get('id')}/{chunk.get('chunk')}"}
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


def history(store: StateStore, pipeline: str, *, limit: int | None) -> list[dict[str, Any]]:
    """Newest first."""
    return [run_entry(run) for run in store.runs(pipeline, limit=limit)]


def read_history(state_url: str, pipeline: str, *, limit: int | None) -> list[dict[str, Any]]:
    """`history` from a store opened (and closed) for it."""
    store = StateStore.open(state_url)
    try:
        return history(store, pipeline, limit=limit)
    finally:
        store.close()


def quarantined_totals(entries: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Rows quarantined by runs that committed or failed (a failed run's file stays), per (table, reason)."""
    totals: dict[tuple[str, str], int] = {}
    for entry in entries:
        for table, info in entry["tables"].items():
            for reason, rows in (info.get("quarantined") or {}).items():
                totals[(table, reason)] = totals.get((table, reason), 0) + int(rows)
    return totals


def rows_loaded_totals(entries: list[dict[str, Any]]) -> dict[tuple[str, str, str], int]:
    """Rows loaded by committed runs, per (table, region, sink): the counter Prometheus scrapes."""
    totals: dict[tuple[str, str, str], int] = {}
    for entry in entries:
        if entry["outcome"] != "committed":
            continue
        for table, info in entry["tables"].items():
            for sink, written in info["sinks"].items():
                for region, rows in (written.get("regions") or {}).items():
                    key = (table, str(region), sink)
                    totals[key] = totals.get(key, 0) + int(rows)
    return totals


def deleted_totals(entries: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Keys deleted (or marked deleted) by committed runs, per (table, sink): the counter Prometheus scrapes."""
    totals: dict[tuple[str, str], int] = {}
    for entry in entries:
        if entry["outcome"] != "committed":
            continue
        for table, info in entry["tables"].items():
            for sink, written in info["sinks"].items():
                if written.get("deleted"):
                    totals[(table, sink)] = totals.get((table, sink), 0) + int(written["deleted"])
    return totals
