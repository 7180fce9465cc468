"""Defaults of the command line that keep a checkout clean and take what people type: `loader report`
without --out writes beside the SQLite state file (data/state/ with configs/local.yaml, ignored by git),
never into the folder it was run from; `demo-data init --now` takes a plain date, as UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from loader.demo.generator import read_demo_state
from tests.support.cli import run_cli, run_json, write_config

pytestmark = [pytest.mark.integration]


def test_demo_init_takes_a_plain_date_as_utc_midnight(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p")
    result = run_cli(config, "demo-data", "init", "--scale", "0.01", "--days", "2", "--now", "2026-12-06")
    assert "landing zone ready" in result.stdout
    state = read_demo_state(tmp_path / "p" / "landing")
    assert state.last_ingest_date == date(2026, 12, 5)  # the day before midnight, 2026-12-06T00:00Z
    assert datetime(2026, 12, 5, tzinfo=UTC) < state.max_cursor <= datetime(2026, 12, 6, tzinfo=UTC)
    assert "warning" not in result.stderr  # no state store yet: nothing to warn about


def test_report_without_out_writes_beside_the_state_file_and_says_where(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p")
    run_cli(config, "demo-data", "init", "--scale", "0.01", "--days", "1", "--now", "2024-01-02")
    run_json(config, "run", "--incremental")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run_cli(config, "report", cwd=elsewhere)
    expected = tmp_path / "p" / "state" / "report.html"
    assert expected.is_file() and f"wrote {expected} (1 run(s)" in result.stdout
    assert list(elsewhere.iterdir()) == []  # nothing where it was run from


def test_report_without_out_and_a_database_server_asks_for_out(tmp_path: Path) -> None:
    config = write_config(tmp_path / "p", state={"url": "postgresql+psycopg://u@127.0.0.1:1/db"})
    result = run_cli(config, "report", check=False)
    assert result.returncode == 2 and "give --out FILE" in result.stderr
