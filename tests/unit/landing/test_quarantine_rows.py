"""The quarantine's checks and its table (loader/landing/quarantine.py): the first failing check names the
row's reason; a row already quarantined by an earlier run is not written again; a replay rewrites its own
run's file; over the threshold the run stops, naming counts, limit and where the rows are."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loader.config import LoaderConfig, load_config
from loader.errors import BadSourceData, is_transient
from loader.landing import quarantine
from tests.support.cli import write_config

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _store(config: LoaderConfig) -> quarantine.QuarantineStore:
    """The store a run uses (loader/protocol/steps.py): the warehouse's quarantine folder, the Parquet
    sink's retry policy, the configured limits."""
    return quarantine.QuarantineStore(config.sink_path("quarantine"), config.sinks.parquet.retry,
                                      config.quarantine)


def _rows() -> pa.Table:
    stamp = pa.timestamp("us", tz="UTC")
    return pa.table({
        "k": pa.array([1, None, 3, 4, None], pa.int64()),
        "ts": pa.array([NOW, NOW, None, datetime(2024, 6, 1, 2, tzinfo=UTC), None], stamp),
        "v": ["a", "b", "c", "d", "e"],
    })


def test_each_bad_row_gets_the_first_failing_check() -> None:
    good, bad = quarantine.split_bad_rows(_rows(), key=("k",), cursor="ts", now=NOW, tolerance_s=3600)
    assert good["v"].to_pylist() == ["a"]
    assert dict(zip(bad["v"].to_pylist(), bad[quarantine.REASON].to_pylist(), strict=True)) == {
        "b": "null key k", "c": "null cursor ts", "d": "cursor in the future", "e": "null key k"}
    good, bad = quarantine.split_no_region(pa.table({"region": ["ASIA", "UNKNOWN", None]}))
    assert good["region"].to_pylist() == ["ASIA"] and bad[quarantine.REASON].to_pylist() == ["no region"] * 2


def test_rows_are_quarantined_once_and_a_replay_rewrites_its_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, quarantine={"max_fraction": 1.0}))
    _, bad = quarantine.split_bad_rows(_rows(), key=("k",), cursor="ts", now=NOW, tolerance_s=3600)
    assert _store(config).record("orders", run_number=2, bad=bad, rows_read=5) == {
        "null key k": 2, "null cursor ts": 1, "cursor in the future": 1}
    assert _store(config).record("orders", run_number=3, bad=bad, rows_read=5) == {}  # seen in run 2
    assert _store(config).record("orders", run_number=2, bad=bad.slice(0, 1), rows_read=5) == {
        "null key k": 1}  # the replay of run 2 writes its file again
    where = Path(_store(config).location("orders").path)
    assert sorted(p.name for p in where.glob("*.parquet")) == ["run-00000002.parquet"]
    assert pq.read_table(where / "run-00000002.parquet").num_rows == 1


def test_over_the_threshold_the_run_stops(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, quarantine={"max_fraction": 0.5}))
    _, bad = quarantine.split_bad_rows(_rows(), key=("k",), cursor="ts", now=NOW, tolerance_s=3600)
    with pytest.raises(BadSourceData) as caught:
        _store(config).record("orders", run_number=2, bad=bad, rows_read=5)
    message = str(caught.value)
    assert "4 row(s) failed the checks" in message and "quarantine.max_fraction=0.5 of 5 rows read" in message
    assert _store(config).location("orders").path in message and not is_transient(caught.value)
    assert pq.read_table(Path(_store(config).location("orders").path) / "run-00000002.parquet").num_rows == 4
