"""Deleted keys in the run history and the metrics: per table the most any sink applied, per (table,
sink) summed over committed runs only (a failed run's count never reaches the counter)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from loader.config import parse_config
from loader.observe.metrics import registry_for
from loader.observe.results import TableResult
from loader.observe.run_history import RunEntry, deleted_totals

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _entry(outcome: str, sinks: dict[str, int]) -> RunEntry:
    stored = {"rows": 10, "quarantined": {},
              "sinks": {s: {"rows": 10, "regions": {}, "deleted": n} for s, n in sinks.items()}}
    return RunEntry(run_number=1, mode="incremental", outcome=outcome, attempts=1, started_at=T0,
                    finished_at=T0, windows={}, lag_seconds={},
                    tables={"orders": TableResult.from_json(stored)}, timings_s={},
                    executor=None, engine=None, error=None, batch=None)


def test_a_table_counts_what_the_sinks_applied_and_old_ledger_rows_count_zero() -> None:
    def applied(stored: dict) -> int:
        return TableResult.from_json(stored).deletes_applied

    assert applied({"sinks": {"parquet": {"deleted": 3}, "delta": {"deleted": 3}, "snowflake": {}}}) == 3
    assert applied({"sinks": {"delta": {"deleted": 0}, "snowflake": {"deleted": 2}}}) == 2  # delta skipped it
    assert applied({"sinks": {"delta": {"rows": 5}}}) == 0  # a run recorded before deletes existed
    assert applied({}) == 0
    assert _entry("committed", {"delta": 4}).to_json()["tables"]["orders"]["deleted"] == 4  # history --json


def test_committed_runs_only_reach_the_counter(tmp_path: Path) -> None:
    entries = [_entry("committed", {"delta": 2, "parquet": 2}), _entry("failed", {"delta": 7}),
               _entry("committed", {"delta": 1, "parquet": 0})]
    assert deleted_totals(entries) == {("orders", "delta"): 3, ("orders", "parquet"): 2}
    config = parse_config({"pipeline": "p", "landing_zone": "l", "warehouse": "w",
                           "state": {"url": "sqlite:///s.db"},
                           "sources": {"orders": {"kind": "orders", "path": "orders", "cursor": "c",
                                                  "primary_key": ["k"]}},
                           "sinks": {"parquet": {"enabled": True, "path": "w"}}}, base_dir=tmp_path)
    registry = registry_for(config.pipeline, entries, {}, datetime.now(UTC))
    assert registry.get_sample_value("loader_keys_deleted_total",
                                     {"pipeline": "p", "table": "orders", "sink": "delta"}) == 3
    assert registry.get_sample_value("loader_keys_deleted_total",
                                     {"pipeline": "p", "table": "orders", "sink": "parquet"}) == 2
