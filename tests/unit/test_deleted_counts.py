"""Deleted keys in the run history and the metrics: per table the most any sink applied, per (table,
sink) summed over committed runs only (a failed run's count never reaches the counter)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loader.config import parse_config
from loader.observe.metrics import registry_for
from loader.observe.run_history import deleted_totals, table_deleted


def _entry(outcome: str, sinks: dict[str, int]) -> dict[str, Any]:
    info = {"rows": 10, "quarantined": {}, "sinks": {s: {"rows": 10, "regions": {}, "deleted": n} for s, n in sinks.items()}}
    return {"outcome": outcome, "mode": "incremental", "tables": {"orders": {**info, "deleted": table_deleted(info)}},
            "duration_s": 1.0, "timings_s": {}, "finished_at": "2026-01-01T00:00:00+00:00",
            "started_at": "2026-01-01T00:00:00+00:00"}


def test_a_table_counts_what_the_sinks_applied_and_old_ledger_rows_count_zero() -> None:
    assert table_deleted({"sinks": {"parquet": {"deleted": 3}, "delta": {"deleted": 3}, "snowflake": {}}}) == 3
    assert table_deleted({"sinks": {"delta": {"deleted": 0}, "snowflake": {"deleted": 2}}}) == 2  # delta skipped it
    assert table_deleted({"sinks": {"delta": {"rows": 5}}}) == 0  # a run recorded before deletes existed
    assert table_deleted({}) == 0


def test_committed_runs_only_reach_the_counter(tmp_path: Path) -> None:
    entries = [_entry("committed", {"delta": 2, "parquet": 2}), _entry("failed", {"delta": 7}),
               _entry("committed", {"delta": 1, "parquet": 0})]
    assert deleted_totals(entries) == {("orders", "delta"): 3, ("orders", "parquet"): 2}
    config = parse_config({"pipeline": "p", "landing_zone": "l", "warehouse": "w", "state": {"url": "sqlite:///s.db"},
                           "sources": {"orders": {"kind": "orders", "path": "orders", "cursor": "c", "primary_key": ["k"]}},
                           "sinks": {"parquet": {"enabled": True, "path": "w"}}}, base_dir=tmp_path)
    registry = registry_for(config, entries, {}, datetime.now(UTC))
    assert registry.get_sample_value("loader_keys_deleted_total", {"pipeline": "p", "table": "orders", "sink": "delta"}) == 3
    assert registry.get_sample_value("loader_keys_deleted_total",
                                     {"pipeline": "p", "table": "orders", "sink": "parquet"}) == 2
