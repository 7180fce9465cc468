"""Quarantine by default (quarantine.max_fraction 1%): rows failing a check leave the run with their
reason and run number, the run commits, the checkpoint moves to the newest valid cursor (a cursor in
the future does not drag it to now), a later run re-reading the file does not quarantine them twice,
the counts show in status, history and the metrics, and `loader verify` agrees."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.support.cli import run_cli, run_json, write_config
from tests.support.demo_clock import append_args, init_args

pytestmark = pytest.mark.integration
VALID_KEY, NULL_KEY_ROW, FUTURE_KEY, NO_REGION_KEY = 10**9 + 1, 10**9 + 2, 10**9 + 3, 10**9 + 4


def _row(template: pa.Table, key: int | None, cursor: datetime, custkey: int | None = None) -> pa.Table:
    """The template's first order as a new one: `key`, `cursor` (and `custkey`) replaced."""
    row = template.slice(0, 1)
    row = row.set_column(row.schema.get_field_index("o_orderkey"), "o_orderkey",
                         pa.array([key], row["o_orderkey"].type))
    row = row.set_column(row.schema.get_field_index("o_updated_at"), "o_updated_at",
                         pa.array([cursor], row["o_updated_at"].type))
    if custkey is not None:
        row = row.set_column(row.schema.get_field_index("o_custkey"), "o_custkey",
                             pa.array([custkey], row["o_custkey"].type))
    return row


def test_bad_rows_are_quarantined_once_and_the_run_goes_on(tmp_path: Path) -> None:
    config = write_config(tmp_path / "project", pipeline="careful",
                          metrics={"textfile": "metrics/loader.prom"})
    landing, warehouse = config.parent / "landing", config.parent / "warehouse"
    run_cli(config, "demo-data", "init", "--scale", "0.01", *init_args(2))
    run_json(config, "run", "--incremental")

    template = pq.read_table(sorted((landing / "orders").rglob("*.parquet"))[-1])
    # Just after the newest landed cursor, in its ingest day: the next demo batch comes after it.
    VALID_CURSOR = max(template["o_updated_at"].to_pylist()) + timedelta(seconds=1)  # noqa: N806
    folder = sorted((landing / "orders").glob("ingest_date=*"))[-1]
    pq.write_table(pa.concat_tables([
        _row(template, VALID_KEY, VALID_CURSOR),
        _row(template, None, VALID_CURSOR),  # null key
        _row(template, FUTURE_KEY, datetime(2099, 1, 1, tzinfo=UTC)),  # cursor in the future
        _row(template, NO_REGION_KEY, VALID_CURSOR, custkey=10**8),  # no such customer: no region
    ]), folder / "part-odd.parquet")
    second = run_json(config, "run", "--incremental")
    assert second["status"] == "committed"
    assert second["tables"]["orders"]["quarantined"] == {
        "null key o_orderkey": 1, "cursor in the future": 1, "no region": 1}
    # not dragged to now
    assert datetime.fromisoformat(second["tables"]["orders"]["window"]["upper"]) == VALID_CURSOR

    files = list((warehouse / "quarantine" / "orders").glob("*.parquet"))
    stored = pa.concat_tables([pq.read_table(f) for f in files])
    assert set(stored["run_number"].to_pylist()) == {second["run_number"]}
    rows = {r["reason"]: json.loads(r["row"]) for r in stored.to_pylist()}
    assert rows["null key o_orderkey"]["o_orderkey"] is None
    assert rows["cursor in the future"]["o_orderkey"] == FUTURE_KEY
    assert rows["no region"]["o_orderkey"] == NO_REGION_KEY
    keys = set(DeltaTable(str(warehouse / "delta" / "orders")).to_pyarrow_table(
        columns=["o_orderkey"])["o_orderkey"].to_pylist())
    assert VALID_KEY in keys and not keys & {FUTURE_KEY, NO_REGION_KEY} and None not in keys

    status = run_json(config, "status")["sources"]["orders"]
    assert (status["last_run_quarantined"] == 3
            and datetime.fromisoformat(status["checkpoint"]) == VALID_CURSOR)
    assert run_json(config, "verify")["ok"]

    # The next run reads the same file again (inside the lookback): nothing is quarantined twice.
    run_cli(config, "demo-data", "append", *append_args(config), "--orders", "50", "--updates", "5",
            "--late", "1")
    third = run_json(config, "run", "--incremental")
    assert datetime.fromisoformat(third["tables"]["orders"]["window"]["lower"]) < VALID_CURSOR  # it read them
    assert third["tables"]["orders"]["quarantined"] == {}
    again = pa.concat_tables([pq.read_table(f)
                              for f in (warehouse / "quarantine" / "orders").glob("*.parquet")])
    assert again.num_rows == 3
    history = {e["run_number"]: e for e in run_json(config, "history")}
    assert sum(history[second["run_number"]]["tables"]["orders"]["quarantined"].values()) == 3
    prom = (config.parent / "metrics" / "loader.prom").read_text()
    assert 'loader_rows_quarantined_total{pipeline="careful",reason="no region",table="orders"} 1.0' in prom
