"""Typed batch results (loader/observe/results.py): one serialisation to the ledger and back, folding
a run's batches, and ledger entries of older loaders read without error."""

from __future__ import annotations

from datetime import UTC, datetime

from loader.observe.results import SinkResult, TableResult, fold_tables, tables_from_json
from state import Window

T1, T2, T3 = (datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3))


def _batch(lower: datetime, upper: datetime, rows: int, *, skipped: bool = False) -> TableResult:
    return TableResult(rows=rows, deleted=1, window=Window(lower=lower, upper=upper), files_read=2, parts=1,
                       ray_nodes=1, ray_write_nodes=1, quarantined={"null key": 1},
                       sinks={"delta": SinkResult(rows=rows, deleted=1, location="/w/delta/orders",
                                                  skipped=skipped, regions={"ASIA": rows})})


def test_a_result_survives_the_ledger_unchanged() -> None:
    result = _batch(T1, T2, 5)
    assert TableResult.from_json(result.to_json()) == result
    assert tables_from_json({"orders": result.to_json()}) == {"orders": result}


def test_a_runs_batches_fold_into_its_totals_without_touching_the_batches() -> None:
    first, second = _batch(T1, T2, 5, skipped=True), _batch(T2, T3, 7)
    total: dict[str, TableResult] = {}
    fold_tables(total, {"orders": first})
    fold_tables(total, {"orders": second})
    folded = total["orders"]
    assert (folded.rows, folded.deleted, folded.files_read, folded.parts) == (12, 2, 4, 2)
    assert folded.window == Window(lower=T1, upper=T3)
    assert folded.quarantined == {"null key": 2} and folded.ray_nodes == 1
    assert folded.sinks["delta"].rows == 12 and folded.sinks["delta"].regions == {"ASIA": 12}
    assert folded.sinks["delta"].skipped is False  # skipped only when every batch found it landed
    assert first.rows == 5 and first.sinks["delta"].rows == 5 and first.window == Window(lower=T1, upper=T2)


def test_the_folded_window_spans_batches_out_of_order() -> None:
    """A replayed batch, then the new plan's first batch, whose lookback starts (and may end) before
    the replay's window: the run's window spans both; a batch from the beginning makes it unbounded."""
    replayed, looked_back = _batch(T2, T3, 1), _batch(T1, T2 - (T2 - T1) / 2, 1)
    total: dict[str, TableResult] = {}
    fold_tables(total, {"orders": replayed})
    fold_tables(total, {"orders": looked_back})
    assert total["orders"].window == Window(lower=T1, upper=T3)
    fold_tables(total, {"orders": TableResult(rows=1, window=Window(lower=None, upper=T2))})
    assert total["orders"].window == Window(lower=None, upper=T3)


def test_an_older_ledger_entry_reads_as_zeros_not_errors() -> None:
    old = TableResult.from_json({"rows": 3, "quarantined": None, "sinks": {"parquet": {"rows": 3}}})
    assert (old.rows, old.deleted, old.window, old.quarantined) == (3, 0, None, {})
    assert old.sinks["parquet"] == SinkResult(rows=3)
    assert old.deletes_applied == 0
